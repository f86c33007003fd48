"""One comparison of an image with a reference: SSIM, PSNR, MSE, NRMSE and the FSC (no Qt).

:func:`compare` is what the ``cryoden metrics`` command and the Metrics dock widget call: it crops
both arrays to a region of interest (views, no copies), computes
:func:`~napari_cryoden.metrics.image_metrics` with the data range of the reference (of the region)
and :func:`~napari_cryoden.metrics.fourier_shell_correlation`, and returns a :class:`MetricsReport` that knows how to
become a JSON object or a table row. :func:`compare_slices` does the same per slice of a 2D stack.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .fsc import FSCCurve, fourier_shell_correlation, frc_per_slice, median_frc
from .image import image_metrics
from .roi import Roi, crop, describe_roi

__all__ = [
    "CSV_COLUMNS", "FSC_CSV_COLUMNS", "MetricsReport", "compare", "compare_slices",
    "write_fsc_csv", "write_metrics_csv",
]

#: Keys of :meth:`MetricsReport.row` after the caller's own (image and reference names).
CSV_COLUMNS = ("roi", "slice", "ssim", "psnr", "mse", "nrmse", "res_fsc_0.5_A", "res_fsc_0.143_A")
#: Columns of :func:`write_fsc_csv` (long format: one line per curve and shell).
FSC_CSV_COLUMNS = ("name", "shell", "frequency_per_A", "resolution_A", "fsc", "n_voxels")


@dataclass(frozen=True)
class MetricsReport:
    """The scores of one image (or one slice) against a reference.

    Attributes
    ----------
    scores : dict or None
        ``ssim``, ``psnr`` (dB, ``inf`` for identical data), ``mse``, ``nrmse``; None when two
        half maps were compared (they have no ground truth).
    curve : FSCCurve
        FSC (FRC for 2D data) with the resolution axis in Å.
    roi : tuple of slice or None
        The region compared (None: the whole array).
    slice_index : int or None
        The slice, for :func:`compare_slices`.
    """

    scores: dict[str, float] | None
    curve: FSCCurve
    roi: Roi | None = None
    slice_index: int | None = None

    @property
    def res_fsc_05(self) -> float | None:
        """Resolution (Å) where the FSC falls below 0.5; None if it stays above."""
        return self.curve.crossing(0.5)

    @property
    def res_fsc_0143(self) -> float | None:
        """Resolution (Å) where the FSC falls below 0.143; None if it stays above."""
        return self.curve.crossing(0.143)

    def to_json(self) -> dict:
        """A JSON-safe dict: ``ssim psnr mse nrmse fsc res_fsc_0.5_A res_fsc_0.143_A``.

        JSON has no infinity, so an infinite PSNR (identical data) is ``None`` (``null``), as is
        a crossing the curve never reaches (it stays above the threshold up to Nyquist). ``fsc``
        lists ``[resolution_A, value]`` for every shell but shell 0 (infinite resolution). The
        scores are ``None`` for half maps.
        """
        scores = self.scores or {}

        def finite(value):
            return None if value is None or not math.isfinite(value) else float(value)

        return {
            "ssim": finite(scores.get("ssim")),
            "psnr": finite(scores.get("psnr")),
            "mse": finite(scores.get("mse")),
            "nrmse": finite(scores.get("nrmse")),
            "fsc": self.curve.pairs(),
            "res_fsc_0.5_A": self.res_fsc_05,
            "res_fsc_0.143_A": self.res_fsc_0143,
        }

    def row(self) -> dict:
        """The :data:`CSV_COLUMNS` of this report (``inf`` PSNR stays ``inf``; no crossing is None)."""
        scores = self.scores or {}
        return {
            "roi": describe_roi(self.roi),
            "slice": self.slice_index,
            **{k: scores.get(k) for k in ("ssim", "psnr", "mse", "nrmse")},
            "res_fsc_0.5_A": self.res_fsc_05,
            "res_fsc_0.143_A": self.res_fsc_0143,
        }


def _pair(image, reference, roi):
    a, b = np.asarray(image), np.asarray(reference)
    if a.shape != b.shape:
        raise ValueError(
            f"image shape {a.shape} differs from reference shape {b.shape}: the metrics compare voxel "
            "by voxel, so crop or resample one of them first"
        )
    if a.ndim not in (2, 3):
        raise ValueError(f"metrics need a 2D image or a 3D volume, got an array of shape {a.shape}")
    a, b = crop(a, roi), crop(b, roi)
    for name, arr in (("image", a), ("reference", b)):
        bad = _count_nonfinite(arr)
        if bad:
            raise ValueError(f"the {name} has {bad} NaN/Inf voxel{'s' if bad != 1 else ''} (of {arr.size} compared); "
                             "the metrics need finite data")
        if arr.size and float(arr.min()) == float(arr.max()):
            raise ValueError(f"the {name} is constant ({float(arr.min()):g}) in the region compared: its Fourier "
                             "shells are empty, so the FSC and its resolutions are undefined")
    return a, b


def _count_nonfinite(arr: np.ndarray, chunk_bytes: int = 16 * 1024**2) -> int:
    """NaN and ±Inf voxels of `arr`, counted in slabs along the first axis (a memory map is never
    read whole into a temporary)."""
    if not np.issubdtype(arr.dtype, np.inexact) or arr.size == 0:
        return 0
    step = max(1, chunk_bytes // max(1, arr[0].nbytes)) if arr.ndim > 1 else arr.shape[0]
    return sum(int(arr[i : i + step].size - np.count_nonzero(np.isfinite(arr[i : i + step])))
               for i in range(0, arr.shape[0], step))


#: SSIM's window edge (scikit-image's default); every axis compared needs at least this many voxels.
SSIM_WINDOW = 7


def _scores(image: np.ndarray, reference: np.ndarray, data_range: float) -> dict[str, float]:
    if min(reference.shape) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW} voxels along every axis, but the data compared has shape "
            f"{reference.shape}; choose a larger region (the FSC alone works in half-map mode)"
        )
    return image_metrics(image, reference, data_range=data_range)


def _data_range(reference: np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        data_range = float(np.max(reference)) - float(np.min(reference))
    if not data_range > 0:
        raise ValueError("the reference is constant (in the region compared): give data_range explicitly")
    return float(data_range)


def compare(
    image,
    reference,
    *,
    voxel_size: float | Sequence[float] = 1.0,
    roi: Roi | None = None,
    data_range: float | None = None,
    half_maps: bool = False,
    method: str = "auto",
    image_stack: bool = False,
) -> MetricsReport:
    """SSIM, PSNR, MSE, NRMSE and FSC of `image` against `reference`.

    Parameters
    ----------
    image, reference : (Z, Y, X) or (Y, X) array_like of real dtype, same shape
        Memory maps are read region by region; neither array is modified.
    voxel_size : float or sequence of float, default=1.0
        Å per voxel, array axis order; the FSC's resolution axis.
    roi : tuple of slice, optional
        Region compared (see :mod:`napari_cryoden.metrics.roi`); the whole array when omitted.
    data_range : float, optional
        For SSIM and PSNR; default: the range of the reference within the region.
    half_maps : bool, default=False
        `image` and `reference` are two independent half maps (even/odd): only the FSC is
        computed, and :attr:`MetricsReport.scores` is None.
    method : {"auto", "torch", "numpy"}, default="auto"
        FSC back end, see :func:`~napari_cryoden.metrics.fourier_shell_correlation`.
    image_stack : bool, default=False
        The (N, Y, X) arrays are stacks of 2D images (a ``.mrcs`` file): the curve is the median
        of the per-image FRCs (:func:`~napari_cryoden.metrics.median_frc`), not a 3D FSC across
        unrelated images.

    Returns
    -------
    MetricsReport

    Raises
    ------
    ValueError
        If the shapes differ, the data is not 2D or 3D, the region is empty or too small (SSIM
        needs 7 voxels along every axis, the FSC 4), the reference is constant, or either array
        holds NaN or Inf in the region compared (the message gives their number), or is constant
        there (its FSC is undefined): no score or resolution is made up from them.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = rng.normal(size=(16, 24, 24)).astype(np.float32)
    >>> report = compare(clean, clean, voxel_size=10.0)
    >>> report.scores["ssim"], report.scores["psnr"], report.to_json()["psnr"]
    (1.0, inf, None)
    """
    a, b = _pair(image, reference, roi)
    if image_stack and a.ndim == 3:
        curve = median_frc(a, b, voxel_size=voxel_size, method=method)
    else:
        curve = fourier_shell_correlation(a, b, voxel_size=voxel_size, method=method)
    scores = None if half_maps else _scores(a, b, _data_range(b, data_range))
    return MetricsReport(scores=scores, curve=curve, roi=roi)


def compare_slices(
    image,
    reference,
    *,
    voxel_size: float | Sequence[float] = 1.0,
    roi: Roi | None = None,
    data_range: float | None = None,
    half_maps: bool = False,
    method: str = "auto",
) -> list[MetricsReport]:
    """:func:`compare` for every slice of two (N, Y, X) stacks: 2D SSIM etc. and an FRC per slice.

    Parameters
    ----------
    image, reference : (N, Y, X) array_like of real dtype, same shape
    voxel_size : float or sequence of float, default=1.0
        Å per pixel; of a (Z, Y, X) triple only (Y, X) is used.
    roi : tuple of 3 slice, optional
        Region of the stack; its first slice selects the slices compared.
    data_range : float, optional
        Default: the range of the reference within the region, the same for every slice so the
        scores of different slices are comparable.
    half_maps : bool, default=False
    method : {"auto", "torch", "numpy"}, default="auto"

    Returns
    -------
    list of MetricsReport
        One per slice; ``slice_index`` counts in the full stack.

    Raises
    ------
    ValueError
        As :func:`compare`, and if the data is not 3D.
    """
    a, b = _pair(image, reference, roi)
    if a.ndim != 3:
        raise ValueError(f"per-slice metrics need an (N, Y, X) stack, got an array of shape {a.shape}")
    curves = frc_per_slice(a, b, voxel_size=voxel_size, method=method)
    first = 0 if roi is None else roi[0].indices(np.shape(image)[0])[0]
    rng = None if half_maps else _data_range(b, data_range)
    return [
        MetricsReport(
            scores=None if half_maps else _scores(a[i], b[i], rng),
            curve=curve, roi=roi, slice_index=first + i,
        )
        for i, curve in enumerate(curves)
    ]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    return str(value)


def write_metrics_csv(path: str | os.PathLike, rows: Iterable[Mapping]) -> None:
    """Write metric rows (dicts with the same keys, e.g. names + :meth:`MetricsReport.row`) to CSV.

    Empty cells mean "not available" (no crossing, or half maps); an infinite PSNR is ``inf``.
    """
    rows = list(rows)
    columns = list(rows[0]) if rows else ["image", "reference", *CSV_COLUMNS]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def write_fsc_csv(path: str | os.PathLike, curves: Mapping[str, FSCCurve]) -> None:
    """Write FSC curves to CSV in long format, :data:`FSC_CSV_COLUMNS` (resolution ``inf`` at shell 0)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(FSC_CSV_COLUMNS)
        for name, curve in curves.items():
            for k, (f, r, v, n) in enumerate(zip(curve.frequency, curve.resolution, curve.fsc, curve.n_voxels)):
                writer.writerow([name, k, _cell(float(f)), _cell(float(r)), _cell(float(v)), int(n)])
