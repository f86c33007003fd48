"""Meet the data where it is: Fourier-resample the input to the model's voxel size and back.

A network trained at 5 Å/pixel sees a 0.667 Å/pixel micrograph as noise at the wrong scale and
invents structure. When the input's voxel size differs from the model card's ``voxel_size_A`` by
more than a tolerance (:data:`VOXEL_SIZE_TOLERANCE`, 20 %), :func:`iter_denoise_resampled`
Fourier-crops the input to the model's voxel size (the standard binning of cryo-EM, as IMOD's
``newstack -ftreduce`` or RELION's rescaling: no image-space interpolation), denoises it, and
Fourier-pads the result back to the input's grid (``resample="auto"``), or keeps it at the model's
voxel size (``resample="binned"``).

The transform is the DCT-II, the Fourier transform of the data mirrored at its borders, so that
the borders do not ring (a plain FFT joins the left border to the right one); pixel centres stay
aligned as with block binning. Fourier resampling is separable, so it is done one axis at a time
(:func:`fourier_resample`):
the in-plane axes (Y, X) slab by slab along the first axis, then the first axis (Z of a
tomogram) on the reduced array. The full-size side is therefore read, and written, a slab at a
time (memory maps stay paged out); only the array on the model's grid is held whole, which for
binning is smaller than the input by the binning factor squared (cubed for 3D).

With a 2D model (micrographs, ``.mrcs`` stacks, tomograms slice by slice) only Y and X are
resampled; with a 3D model all three axes are.

References
----------
.. [1] Mastronarde, D. N. IMOD ``newstack -ftreduce``: reduction by Fourier cropping.
.. [2] Frank, J. (2006). Three-Dimensional Electron Microscopy of Macromolecular Assemblies,
   2nd ed., sec. 3.3 (sampling and resampling in Fourier space).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Generator, Sequence

import numpy as np
import scipy.fft

from .normalize import robust_stats
from .tiling import release_pages

__all__ = [
    "PLACEHOLDER_VOXEL_SIZE", "RESAMPLE_CHOICES", "VOXEL_SIZE_TOLERANCE", "ResamplePlan", "fourier_resample",
    "input_voxel_size", "iter_denoise_resampled", "plan_resample", "voxel_size_known",
]

#: ``"auto"``: resample to the model's voxel size and back; ``"off"``: never resample;
#: ``"binned"``: resample and keep the result at the model's voxel size.
RESAMPLE_CHOICES = ("auto", "off", "binned")
#: Relative difference between the input's and the model's voxel size beyond which data is resampled.
VOXEL_SIZE_TOLERANCE = 0.2
#: A header voxel size of exactly this many Å is the placeholder many programs write when they
#: do not know it; it is treated as unknown.
PLACEHOLDER_VOXEL_SIZE = 1.0
#: Bytes of float32 input read (or output written) at a time along the first axis.
SLAB_BYTES = 64 * 1024**2


def voxel_size_known(voxel_size: Sequence[float], header_known: bool = True) -> bool:
    """Whether the in-plane voxel size (the last two values, Å) can be trusted.

    False when `header_known` is False (the header had none), or when a value is not finite,
    not positive, or the 1 Å placeholder (:data:`PLACEHOLDER_VOXEL_SIZE`) in both Y and X.
    """
    yx = [float(v) for v in tuple(voxel_size)[-2:]]
    if not header_known or not yx or not all(math.isfinite(v) and v > 0 for v in yx):
        return False
    return not all(v == PLACEHOLDER_VOXEL_SIZE for v in yx)


def input_voxel_size(
    voxel_size: Sequence[float], known: bool = True, override: float | None = None, *, image_stack: bool = False,
) -> tuple[tuple[float, ...], bool]:
    """The voxel size (Å, array order) to plan with, and whether it is known: the header's
    (`voxel_size`, `known` as :attr:`napari_cryoden.io.MrcVolume.metadata` ``voxel_size_known``),
    or `override` (Å, from the user) in Y and X, and in Z of a volume (not along the image axis
    of a stack); an override is known.

    Raises
    ------
    ValueError
        If `override` is not a finite number > 0.
    """
    vs = tuple(float(v) for v in voxel_size)
    if override is None:
        return vs, bool(known)
    if isinstance(override, bool) or not (isinstance(override, (int, float)) and math.isfinite(override)
                                          and override > 0):
        raise ValueError(f"voxel_size must be a positive number of Å, got {override!r}")
    keep_first = len(vs) == 3 and image_stack
    return tuple(vs[0] if (i == 0 and keep_first) else float(override) for i in range(len(vs))), True


def _fmt(value: float) -> str:
    return f"{value:.4g}"


@dataclass(frozen=True)
class ResamplePlan:
    """How an input is brought to a model's voxel size; made by :func:`plan_resample`.

    Attributes
    ----------
    mode : {"auto", "off", "binned"}
        As asked.
    input_shape, model_shape, output_shape : tuple of int
        The input's shape, the shape the network sees, and the shape of the result
        (`input_shape`, or `model_shape` with ``mode="binned"``).
    input_voxel_size, model_voxel_size, output_voxel_size : tuple of float
        Å per voxel, array axis order. `model_voxel_size` is that of the grid the network sees
        (the model's voxel size up to the rounding of the shape).
    axes : tuple of int
        Array axes that are resampled (empty when none).
    known : bool
        Whether the input's voxel size is known (see :func:`voxel_size_known`).
    trained : float or None
        The model card's ``voxel_size_A``.
    notes : tuple of str
        What the user should be told (one sentence each): an unknown voxel size, up-sampling, a
        mismatch left alone with ``mode="off"``.
    """

    mode: str
    input_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_voxel_size: tuple[float, ...]
    model_voxel_size: tuple[float, ...]
    output_voxel_size: tuple[float, ...]
    axes: tuple[int, ...] = ()
    known: bool = True
    trained: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def resampled(self) -> bool:
        """True when the network sees another grid than the input's."""
        return self.model_shape != self.input_shape

    @property
    def factor(self) -> float:
        """Binning factor along X, the model's voxel size over the input's (< 1 up-samples); 1.0
        when not resampled. The grid's own factor differs by the rounding of its shape."""
        if not self.resampled:
            return 1.0
        axis = len(self.input_shape) - 1
        return float(self.trained) / self.input_voxel_size[axis]

    def describe(self, what: str = "input") -> str:
        """One phrase for the user, e.g. ``'input 0.667 Å → model 5 Å, binned ×7.5'`` (`what`
        names the data: ``"layer"`` in the widget)."""
        axis = len(self.input_shape) - 1
        vin = self.input_voxel_size[axis]
        if not self.known:
            return "pixel size unknown: not resampled"
        if self.trained is None:
            return f"{what} {_fmt(vin)} Å; the model has no voxel size: not resampled"
        head = f"{what} {_fmt(vin)} Å → model {_fmt(self.trained)} Å"
        if not self.resampled:
            return head + (", not resampled (off)" if self.mode == "off" else ", no resampling needed")
        f = self.factor
        how = f"binned ×{f:.3g}" if f >= 1 else f"up-sampled ×{1 / f:.3g}"
        return head + f", {how}" + (" (output kept at the model's voxel size)" if self.mode == "binned" else "")


def plan_resample(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    model,
    *,
    mode: str = "auto",
    known: bool = True,
    image_stack: bool = False,
    tolerance: float = VOXEL_SIZE_TOLERANCE,
) -> ResamplePlan:
    """Decide whether and how to resample data of `shape` for `model`.

    Parameters
    ----------
    shape : sequence of int
        (Z, Y, X), (Y, X) or (N, Y, X).
    voxel_size : sequence of float
        Å per voxel, array axis order (e.g. :attr:`napari_cryoden.io.MrcVolume.voxel_size`).
    model : LoadedModel or None
        Its ``ndim`` and its card's ``voxel_size_A`` decide (any object with ``ndim`` and
        ``card`` does); None, or a card without a voxel size, means no resampling.
    mode : {"auto", "off", "binned"}, default="auto"
    known : bool, default=True
        False when the header had no voxel size; see :func:`voxel_size_known`.
    image_stack : bool, default=False
        The (N, Y, X) data is a stack of 2D images.
    tolerance : float, default=0.2
        Relative difference of voxel size beyond which data is resampled.

    Returns
    -------
    ResamplePlan

    Raises
    ------
    ValueError
        For an unknown `mode`, a negative `tolerance`, or a `voxel_size` that does not match `shape`.
    """
    if mode not in RESAMPLE_CHOICES:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLE_CHOICES)}, got {mode!r}")
    if not (tolerance >= 0):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    shape = tuple(int(n) for n in shape)
    vs = tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_size, dtype=float), (len(shape),)))
    known = voxel_size_known(vs, known)
    card = getattr(model, "card", None)
    trained = card.get("voxel_size_A") if isinstance(card, dict) else None
    trained = float(trained) if isinstance(trained, (int, float)) and not isinstance(trained, bool) \
        and math.isfinite(trained) and trained > 0 else None
    ndim = getattr(model, "ndim", 3)
    if ndim == 3 and len(shape) == 3 and not image_stack:
        axes = (0, 1, 2)
    else:
        axes = tuple(range(len(shape)))[-2:]
    same = ResamplePlan(mode, shape, shape, shape, vs, vs, vs, (), known, trained)
    if trained is None:
        return same
    if not known:
        yx = tuple(vs[-2:])
        shown = "none" if yx[0] != PLACEHOLDER_VOXEL_SIZE else f"{yx[0]:g} Å, a placeholder"
        note = (f"the header gives no usable pixel size ({shown}); denoised as if it were the model's "
                f"{_fmt(trained)} Å, and the output keeps the header's value (set it with --voxel-size)")
        return ResamplePlan(mode, shape, shape, shape, vs, vs, vs, (), False, trained, (note,))
    off = [a for a in axes if abs(vs[a] - trained) / trained > tolerance]
    if not off:
        return same
    if mode == "off":
        mean = sum(vs[a] for a in axes) / len(axes)
        note = (f"the model was trained at {_fmt(trained)} Å/voxel and the input is {_fmt(mean)} Å/voxel; "
                "resampling is off, so results may be poor")
        return ResamplePlan(mode, shape, shape, shape, vs, vs, vs, (), True, trained, (note,))
    model_shape = list(shape)
    for a in axes:
        model_shape[a] = max(1, int(round(shape[a] * vs[a] / trained)))
    model_shape = tuple(model_shape)
    model_vs = tuple(vs[a] * shape[a] / model_shape[a] if a in axes else vs[a] for a in range(len(shape)))
    axes = tuple(a for a in axes if model_shape[a] != shape[a])
    notes = ()
    if any(model_shape[a] > shape[a] for a in axes):
        notes = (f"the input ({_fmt(vs[-1])} Å) is coarser than the model ({_fmt(trained)} Å): it is "
                 "Fourier up-sampled, which adds no detail",)
    binned = mode == "binned"
    return ResamplePlan(
        mode, shape, model_shape, model_shape if binned else shape, vs, model_vs, model_vs if binned else vs,
        axes, True, trained, notes,
    )


# ------------------------------------------------------------------------------------------
# Fourier cropping and padding


def _resample_axis(data: np.ndarray, axis: int, m: int) -> np.ndarray:
    """`data` (real) Fourier-resampled along `axis` to `m` samples, as float32; mean preserved.

    The transform is the DCT-II, the Fourier transform of the data mirrored at its ends: the
    mirrored data has no jump where the periodic copies meet, so the edges do not ring as they
    would with a plain FFT (whose implicit periodic extension joins the left and right borders).
    Keeping the first `m` coefficients (or zero-padding to `m`) and transforming back samples the
    same band-limited cosine series at the centres of `m` equal pixels spanning the same length:
    pixel centres stay aligned with the input's, as with block binning, and cropping undoes padding
    exactly.
    """
    n = data.shape[axis]
    if n == m:
        return np.asarray(data, dtype=np.float32)
    coef = scipy.fft.dct(np.asarray(data, dtype=np.float32), type=2, axis=axis, norm="ortho", workers=-1)
    sl = [slice(None)] * coef.ndim
    sl[axis] = slice(0, min(n, m))
    shape = list(coef.shape)
    shape[axis] = m
    resized = np.zeros(shape, dtype=coef.dtype)
    resized[tuple(sl)] = coef[tuple(sl)]
    del coef
    out = scipy.fft.idct(resized, type=2, axis=axis, norm="ortho", overwrite_x=True, workers=-1)
    out *= np.float32(math.sqrt(m / n))
    return out.astype(np.float32, copy=False)


def _slab_step(shape: Sequence[int], axis: int) -> int:
    """Slices per slab along `axis` so that a float32 slab stays under :data:`SLAB_BYTES`."""
    per = 4 * math.prod(n for i, n in enumerate(shape) if i != axis)
    return max(1, SLAB_BYTES // max(per, 1))


def _fill_nonfinite(slab: np.ndarray, value: float | None) -> np.ndarray:
    """`slab` as float32, NaN/Inf replaced by `value` in a copy (the input is never written)."""
    slab = np.asarray(slab, dtype=np.float32)
    if value is not None:
        bad = ~np.isfinite(slab)
        if bad.any():
            slab = np.where(bad, np.float32(value), slab)
    return slab


def fourier_resample(
    data: np.ndarray,
    shape: Sequence[int],
    *,
    out: np.ndarray | None = None,
    fill: float | None = None,
) -> np.ndarray:
    """Resample `data` to `shape` by cropping or zero-padding its Fourier (DCT-II) transform.

    Each axis whose length changes is resampled in turn (the operation is separable). The
    axes other than the first are done slab by slab along the first axis, reading the input and
    writing `out` a slab at a time (a memmap is paged out after each slab); the first axis is
    done on the array of the other axes' new lengths, held in memory. The mean, and the intensity
    scale, are preserved; cropping is a perfect low-pass (no aliasing) and undoes padding exactly.

    Parameters
    ----------
    data : ndarray of real dtype
        Any dimensionality, e.g. (Z, Y, X) or (Y, X); a memmap is read a slab at a time.
    shape : sequence of int
        New length of each axis (>= 1).
    out : ndarray of float32, optional
        Written in place (e.g. a memory-mapped output file); must have `shape`.
    fill : float, optional
        Value put in place of NaN/Inf voxels before transforming (they would spread everywhere).

    Returns
    -------
    ndarray of float32
        `out` if given.

    Raises
    ------
    ValueError
        If `shape` has the wrong length or a length < 1, or `out` has another shape.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != data.ndim or min(shape, default=1) < 1:
        raise ValueError(f"shape {shape} does not fit {data.ndim}D data of shape {data.shape} (lengths >= 1)")
    if out is not None and tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}")
    if data.ndim == 0:
        return np.asarray(data, dtype=np.float32)
    shrink_first = shape[0] <= data.shape[0]
    # Resample the first axis where the array is smaller (before padding, after cropping).
    rest = tuple(range(1, data.ndim))
    mid_shape = (data.shape[0],) + shape[1:]
    if shrink_first:
        mid = np.empty(mid_shape, dtype=np.float32) if shape[0] != data.shape[0] or out is None else out
        step = _slab_step(data.shape, 0)
        for z in range(0, data.shape[0], step):
            slab = _fill_nonfinite(data[z : z + step], fill)
            for axis in rest:
                slab = _resample_axis(slab, axis, shape[axis])
            mid[z : z + step] = slab
            release_pages(data)
            release_pages(mid)
        if shape[0] == data.shape[0]:
            return mid
        result = out if out is not None else np.empty(shape, dtype=np.float32)
        step = _slab_step(mid.shape, 1) if mid.ndim > 1 else mid.shape[0]
        for y in range(0, mid.shape[1] if mid.ndim > 1 else 1, step):
            if mid.ndim > 1:
                result[:, y : y + step] = _resample_axis(mid[:, y : y + step], 0, shape[0])
            else:
                result[...] = _resample_axis(mid, 0, shape[0])
            release_pages(result)
        return result
    # Pad along the first axis first (data is the small side), then the others slab by slab.
    first = np.empty((shape[0],) + tuple(data.shape[1:]), dtype=np.float32)
    step = _slab_step(data.shape, 1) if data.ndim > 1 else data.shape[0]
    for y in range(0, data.shape[1] if data.ndim > 1 else 1, step):
        part = data[:, y : y + step] if data.ndim > 1 else data
        part = _resample_axis(_fill_nonfinite(part, fill), 0, shape[0])
        if data.ndim > 1:
            first[:, y : y + step] = part
        else:
            first[...] = part
        release_pages(data)
    if first.shape == shape:
        if out is None:
            return first
        out[...] = first
        return out
    result = out if out is not None else np.empty(shape, dtype=np.float32)
    step = _slab_step(shape, 0)
    for z in range(0, shape[0], step):
        slab = first[z : z + step]
        for axis in rest:
            slab = _resample_axis(slab, axis, shape[axis])
        result[z : z + step] = slab
        release_pages(result)
    return result


# ------------------------------------------------------------------------------------------
# Resample, denoise, resample back


def iter_denoise_resampled(
    volume: np.ndarray,
    model,
    plan: ResamplePlan,
    *,
    out: np.ndarray | None = None,
    info: dict | None = None,
    nonfinite: str = "replace",
    **kwargs,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Denoise `volume` on the model's grid of `plan`: Fourier-crop (or pad), denoise, and
    Fourier-pad (or crop) back unless ``plan.mode == "binned"``; yields ``(tiles_done, tiles_total)``.

    Without resampling (``plan.resampled`` False) this is
    :func:`~napari_cryoden.inference.iter_denoise` itself.

    Parameters
    ----------
    volume : ndarray of real dtype
        The input, of shape ``plan.input_shape``; a memmap is read a slab at a time.
    model : str, LoadedModel or torch.nn.Module
    plan : ResamplePlan
        From :func:`plan_resample`.
    out : ndarray of float32, optional
        Array of ``plan.output_shape`` to write into (e.g. a memory-mapped output file).
    info : dict, optional
        Filled in as by :func:`~napari_cryoden.inference.iter_denoise` (the NaN/Inf count is that
        of the input), plus ``resample``: the plan's ``mode``, ``factor``, ``model_shape``,
        ``model_voxel_size`` and ``description``.
    nonfinite : {"replace", "refuse"}, default="replace"
        NaN/Inf input voxels are replaced by the median before resampling, or refused.
    **kwargs
        Other keyword arguments of :func:`~napari_cryoden.inference.iter_denoise` (`tile`,
        `overlap`, `device`, `precision`, `batch_size`, `image_stack`, `memory_bytes`, `stats`:
        statistics on the model's grid, e.g. of a whole stack when denoising one slice of it;
        `on_rows`, passed on only when the network's grid is the output's: without resampling,
        or ``"binned"``).

    Returns
    -------
    ndarray of float32
        Of ``plan.output_shape``, in the input's intensity scale.

    Raises
    ------
    ValueError
        If `volume` does not have the plan's shape, or as :func:`~napari_cryoden.inference.iter_denoise`.
    """
    from .. import inference  # looked up here, so that an engine substituted there is the one used
    from . import engine

    if tuple(volume.shape) != plan.input_shape:
        raise ValueError(f"volume has shape {tuple(volume.shape)}, the resampling plan was made for {plan.input_shape}")
    if out is not None and tuple(out.shape) != plan.output_shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {plan.output_shape}")
    if info is not None:
        info["resample"] = {
            "mode": plan.mode, "factor": plan.factor, "model_shape": plan.model_shape,
            "model_voxel_size": plan.model_voxel_size, "description": plan.describe(),
        }
    if not plan.resampled:
        return (yield from inference.iter_denoise(volume, model, out=out, info=info, nonfinite=nonfinite, **kwargs))
    if plan.mode != "binned":
        kwargs.pop("on_rows", None)  # the network's grid is not the output's
    lm = engine.as_model(model)
    engine.check_input(volume, lm, nonfinite=nonfinite, image_stack=bool(kwargs.get("image_stack", False)))
    n_bad = engine.count_nonfinite(volume)
    engine.check_nonfinite(n_bad, nonfinite)
    fill = robust_stats(volume)[0] if n_bad else None
    small = fourier_resample(volume, plan.model_shape, fill=fill)
    binned = plan.mode == "binned"
    denoised = yield from inference.iter_denoise(small, lm, out=out if binned else None, info=info,
                                              nonfinite=nonfinite, **kwargs)
    if info is not None:
        info.update(nonfinite=n_bad, nonfinite_action=nonfinite if n_bad else None)
        if n_bad:
            info["nonfinite_value"] = fill
    if binned:
        return denoised
    del small
    return fourier_resample(denoised, plan.output_shape, out=out)
