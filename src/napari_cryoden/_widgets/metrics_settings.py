"""The Metrics widget's settings, without Qt: what the widget's choices mean for the core.

Plain functions decide everything that is not drawing: :func:`metrics_jobs` turns the chosen
layers' arrays into calls of :func:`napari_cryoden.metrics.compare` (checking shapes first),
:func:`view_box`, :func:`view_corners` and :func:`displayed_data_axes` turn the camera into the
"current view" region, :func:`table_rows` formats the results and :func:`plot_fsc` draws them on
a matplotlib ``Axes``. The widget (:mod:`napari_cryoden._widgets.metrics`) keeps only Qt; these
are tested without it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from matplotlib.ticker import FuncFormatter

from ..metrics import FSC_THRESHOLDS, MetricsReport, Roi, compare

__all__ = [
    "CURRENT_VIEW", "TABLE_COLUMNS", "WHOLE", "MetricsJob", "MetricsResult", "displayed_data_axes",
    "metrics_jobs", "plot_fsc", "table_rows", "view_box", "view_corners",
]

#: Values of the region combo box besides Shapes layers.
WHOLE = "whole"
CURRENT_VIEW = "view"
#: Header of the results table.
TABLE_COLUMNS = ("image", "SSIM", "PSNR (dB)", "MSE", "NRMSE", "FSC 0.5 (Å)", "FSC 0.143 (Å)")


@dataclasses.dataclass(frozen=True)
class MetricsJob:
    """One call of :func:`~napari_cryoden.metrics.compare`, ready for the worker thread.

    Attributes
    ----------
    name, reference_name : str
        Layer names, for the table and the plot.
    image, reference : ndarray
        The layers' arrays (not copies).
    kwargs : dict
        ``voxel_size``, ``roi`` and ``half_maps`` for :func:`~napari_cryoden.metrics.compare`.
    """

    name: str
    reference_name: str
    image: Any
    reference: Any
    kwargs: dict

    def run(self) -> MetricsResult:
        """Compute the metrics (in the worker thread)."""
        return MetricsResult(self.name, self.reference_name, compare(self.image, self.reference, **self.kwargs))


@dataclasses.dataclass(frozen=True)
class MetricsResult:
    """A named :class:`~napari_cryoden.metrics.MetricsReport`."""

    name: str
    reference_name: str
    report: MetricsReport


def metrics_jobs(
    images: Sequence[tuple[str, Any]],
    reference: tuple[str, Any],
    *,
    voxel_size: Sequence[float] | float = 1.0,
    roi: Roi | None = None,
    half_maps: bool = False,
) -> list[MetricsJob]:
    """Turn the widget's choices into :class:`MetricsJob` s (one per image).

    Parameters
    ----------
    images : sequence of (name, array)
        The layers to score.
    reference : (name, array)
        The reference layer (in even/odd mode, the other half map).
    voxel_size : float or sequence of float, default=1.0
        Å per voxel (the reference layer's scale), array axis order.
    roi : tuple of slice, optional
        Region compared; whole arrays when omitted.
    half_maps : bool, default=False
        Even/odd mode: each image and the reference are independent half maps; FSC only.

    Returns
    -------
    list of MetricsJob

    Raises
    ------
    ValueError
        If no image is chosen or an image's shape differs from the reference's; the message
        names the layers.

    Examples
    --------
    >>> vol = np.zeros((16, 32, 32), np.float32)
    >>> [job] = metrics_jobs([("noisy", vol)], ("clean", vol), voxel_size=(10.0, 10.0, 10.0))
    >>> job.name, job.kwargs
    ('noisy', {'voxel_size': (10.0, 10.0, 10.0), 'roi': None, 'half_maps': False})
    """
    if not images:
        raise ValueError("choose at least one image layer to score")
    ref_name, ref = reference
    ref_shape = tuple(np.shape(ref))
    for name, data in images:
        if tuple(np.shape(data)) != ref_shape:
            raise ValueError(
                f"layer {name!r} has shape {tuple(np.shape(data))} but the reference {ref_name!r} has "
                f"shape {ref_shape}; the metrics compare voxel by voxel"
            )
    spacing = tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_size, float), (len(ref_shape),)))
    kwargs = {"voxel_size": spacing, "roi": roi, "half_maps": bool(half_maps)}
    return [MetricsJob(name, ref_name, data, ref, dict(kwargs)) for name, data in images]


def view_box(center: Sequence[float], zoom: float, canvas_size: Sequence[float]) -> np.ndarray:
    """Corners of the visible part of the canvas in world coordinates of the displayed axes.

    Parameters
    ----------
    center : (2,) sequence of float
        Camera centre, world units, displayed axes in order (rows, columns).
    zoom : float
        Screen pixels per world unit.
    canvas_size : (2,) sequence of float
        Canvas (or grid view box) height and width in screen pixels.

    Returns
    -------
    (2, 2) ndarray
        ``[lower, upper]`` corners.

    Examples
    --------
    >>> view_box((100.0, 50.0), 2.0, (400, 200)).tolist()
    [[0.0, 0.0], [200.0, 100.0]]
    """
    center = np.asarray(center, float)
    half = np.asarray(canvas_size, float) / (2.0 * float(zoom))
    return np.stack([center - half, center + half])


def _format(value: float | None, fmt: str) -> str:
    if value is None:
        return "—"
    if not np.isfinite(value):
        return "inf" if value > 0 else "-inf"
    return format(value, fmt)


def table_rows(results: Sequence[MetricsResult]) -> list[list[str]]:
    """The cells of the results table, :data:`TABLE_COLUMNS` per result.

    A PSNR of identical data reads ``inf``; scores of half maps read ``—``; a threshold the FSC
    never falls below reads ``< N`` with the resolution of the last shell.
    """
    rows = []
    for result in results:
        report = result.report
        scores = report.scores or {}
        nyquist = report.curve.nyquist
        crossings = [
            f"< {nyquist:.3g}" if res is None else f"{res:.3g}"
            for res in (report.res_fsc_05, report.res_fsc_0143)
        ]
        rows.append([
            result.name,
            _format(scores.get("ssim"), ".4f"),
            _format(scores.get("psnr"), ".2f"),
            _format(scores.get("mse"), ".4g"),
            _format(scores.get("nrmse"), ".4f"),
            *crossings,
        ])
    return rows


def plot_fsc(axes, results: Sequence[MetricsResult]) -> None:
    """Draw the FSC curves of `results` on a matplotlib ``Axes`` (cleared first).

    The x axis is spatial frequency, labelled with the resolution in Å; dashed lines mark 0.5
    and 0.143, dots mark where each curve crosses them, and the legend gives those resolutions.
    """
    axes.clear()
    f_max = 0.0
    for result in results:
        curve = result.report.curve
        crossings = [result.report.curve.crossing(t) for t in FSC_THRESHOLDS]
        parts = [f"{t:g}: {'not reached' if r is None else f'{r:.3g} Å'}" for t, r in zip(FSC_THRESHOLDS, crossings)]
        (line,) = axes.plot(curve.frequency, curve.fsc, marker=".", ms=3, lw=1.2,
                            label=f"{result.name} ({', '.join(parts)})")
        for t, r in zip(FSC_THRESHOLDS, crossings):
            if r is not None:
                axes.plot([1.0 / r], [t], "o", ms=5, color=line.get_color(), gid="crossing")
        f_max = max(f_max, float(curve.frequency[-1]))
    for t, style in zip(FSC_THRESHOLDS, ("--", ":")):
        axes.axhline(t, ls=style, lw=0.8, color="0.4", gid=f"threshold {t:g}")
        if f_max:
            axes.annotate(f"{t:g}", (f_max, t), xytext=(2, 2), textcoords="offset points", fontsize="x-small",
                          ha="right", color="0.4")
    axes.set_ylim(-0.1, 1.08)
    if f_max:
        axes.set_xlim(0.0, f_max)
    axes.xaxis.set_major_formatter(FuncFormatter(lambda f, _pos: "∞" if f <= 0 else f"{1.0 / f:.3g}"))
    axes.set_xlabel("resolution (Å)")
    axes.set_ylabel("FSC")
    axes.grid(alpha=0.3)
    if results:
        axes.legend(fontsize="x-small", loc="best")


def view_corners(point: Sequence[float], displayed: Sequence[int], box: Sequence[Sequence[float]]) -> np.ndarray:
    """The four corners of a :func:`view_box` as full world points.

    Parameters
    ----------
    point : (D,) sequence of float
        The viewer's current world point (``viewer.dims.point``); it gives the axes that are
        not displayed.
    displayed : (2,) sequence of int
        The displayed world axes (rows, columns), ``viewer.dims.displayed``.
    box : (2, 2) array_like of float
        ``[lower, upper]`` corners of the visible part along the displayed axes (world units).

    Returns
    -------
    (4, D) ndarray of float
        `point` with the displayed axes set to each corner, rows (lower, upper) outer.

    Examples
    --------
    >>> view_corners((5.0, 0.0, 0.0), (1, 2), [[0.0, 0.0], [20.0, 10.0]]).tolist()
    [[5.0, 0.0, 0.0], [5.0, 0.0, 10.0], [5.0, 20.0, 0.0], [5.0, 20.0, 10.0]]
    """
    lo, hi = np.asarray(box, float)
    corners = []
    for y in (lo[0], hi[0]):
        for x in (lo[1], hi[1]):
            world = np.array(point, dtype=float)
            world[list(displayed)] = (y, x)
            corners.append(world)
    return np.array(corners)


def displayed_data_axes(displayed: Sequence[int], world_ndim: int, data_ndim: int) -> list[int]:
    """Axes of a layer's array that the displayed world axes are (a layer of fewer dimensions
    than the viewer fills its last world axes).

    Examples
    --------
    >>> displayed_data_axes((2, 3), world_ndim=4, data_ndim=3)
    [1, 2]
    """
    offset = int(world_ndim) - int(data_ndim)
    return [a - offset for a in displayed if a - offset >= 0]
