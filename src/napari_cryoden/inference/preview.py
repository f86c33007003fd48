"""Denoise a slab of a tomogram around one slice: a quick preview of the full result.

The slab is read with the model's context on both sides and starts on the network's stride grid,
and it is normalised with the statistics of the whole tomogram. Inside the tomogram the context
is real data; past its first or last slice it is the same reflection the full run pads with.
One tile then spans the slab along Z with no further padding (its context slices are the
margin), so the preview computes ``(33 + 2 * margin)`` slices for 33 shown, not ``33 + 4 *
margin`` as tiling the slab like a volume would, and it equals the same slices of the full
denoised tomogram (up to float rounding when the tile geometry in Y and X differs).

When the run is resampled to the model's voxel size (:mod:`~napari_cryoden.inference.resample`),
:func:`iter_denoise_preview` denoises the slab on the model's grid as the full run does: the
displayed slices are Fourier-binned, denoised with the statistics of the whole input on the
model's grid, and padded back.
"""

from __future__ import annotations

from typing import Generator

import numpy as np

from ..models.registry import LoadedModel
from .engine import as_model, input_mode, iter_denoise, model_overlap
from .normalize import robust_stats
from .resample import ResamplePlan, fourier_resample, iter_denoise_resampled, plan_resample
from .tiling import reflect_indices

__all__ = ["PREVIEW_HALF_DEPTH", "iter_denoise_preview", "iter_denoise_slab", "slab_bounds"]

#: Slices on each side of the displayed one that a 3D model's preview denoises.
PREVIEW_HALF_DEPTH = 16


def slab_bounds(n_slices: int, centre: int, *, mode: str, half_depth: int = PREVIEW_HALF_DEPTH,
                margin: int = 0, stride: int = 1) -> tuple[int, int, int, int]:
    """Slices ``[z0, z1)`` to show around `centre` and ``[a, b)`` to read for them.

    Parameters
    ----------
    n_slices : int
        Length of the first axis.
    centre : int
        Displayed slice (clipped into the volume).
    mode : {"volume", "stack", "image"}
        See :func:`~napari_cryoden.inference.engine.input_mode`. A 3D model shows
        ``centre ± half_depth`` and reads `margin` more slices on each side, starting on a
        multiple of `stride`; a 2D model shows and reads the displayed slice only; an image is
        one slice.

    Returns
    -------
    z0, z1, a, b : int
    """
    if mode == "image":
        return 0, 1, 0, 1
    c = int(np.clip(int(round(centre)), 0, n_slices - 1))
    if mode == "stack":
        return c, c + 1, c, c + 1
    z0, z1 = max(0, c - half_depth), min(n_slices, c + half_depth + 1)
    a = max(0, z0 - margin) // stride * stride
    b = min(n_slices, z1 + margin)
    return z0, z1, a, b


def iter_denoise_slab(
    volume: np.ndarray,
    model: str | LoadedModel,
    centre: float,
    *,
    half_depth: int = PREVIEW_HALF_DEPTH,
    image_stack: bool = False,
    overlap=None,
    info: dict | None = None,
    **kwargs,
) -> Generator[tuple[int, int], None, tuple[int, np.ndarray]]:
    """Denoise the slices around `centre`, yielding ``(tiles_done, tiles_total)``.

    Parameters
    ----------
    volume : ndarray
        (Z, Y, X) tomogram, (N, Y, X) stack or (Y, X) image (see
        :func:`~napari_cryoden.inference.denoise`).
    model : str or LoadedModel
    centre : float
        Index of the displayed slice along the first axis (ignored for a 2D image).
    half_depth : int, default=16
        Slices shown on each side of `centre` for a 3D model.
    image_stack, overlap, info, **kwargs
        As for :func:`~napari_cryoden.inference.iter_denoise`.

    Returns
    -------
    z0 : int
        Index of the first denoised slice (0 for a 2D image).
    slab : ndarray of float32
        ``(z1 - z0, Y, X)`` denoised slices, or the denoised ``(Y, X)`` image.

    Raises
    ------
    ValueError
        As :func:`~napari_cryoden.inference.iter_denoise`.
    """
    lm = as_model(model)
    mode = input_mode(np.ndim(volume), lm, image_stack=image_stack)
    if mode == "image":
        result = yield from iter_denoise(volume, lm, image_stack=image_stack, overlap=overlap, info=info, **kwargs)
        return 0, result
    stats = robust_stats(volume)  # the whole tomogram's, as the full run uses
    if mode == "stack":
        z0, z1, a, b = slab_bounds(volume.shape[0], centre, mode=mode)
        result = yield from iter_denoise(volume[a:b], lm, image_stack=image_stack, overlap=overlap, info=info,
                                         stats=stats, **kwargs)
        return z0, np.ascontiguousarray(result)
    n = volume.shape[0]
    margin = int((model_overlap(lm) if overlap is None else np.broadcast_to(overlap, (3,)))[0])
    z0, z1, _, _ = slab_bounds(n, centre, mode=mode, half_depth=half_depth)
    s = max(1, lm.stride)
    a = (z0 - margin) // s * s  # on the stride grid; below 0 inside the full run's reflected padding
    b = z1 + margin
    if a >= 0 and b <= n:
        sub = volume[a:b]
    else:  # the reflection the full run pads the tomogram with
        sub = volume[reflect_indices(a, b - a, n)]
    result = yield from iter_denoise(sub, lm, image_stack=image_stack, overlap=overlap, info=info, stats=stats,
                                     whole_first_axis=True, **kwargs)
    return z0, np.ascontiguousarray(result[z0 - a : z1 - a])


def iter_denoise_preview(
    volume: np.ndarray,
    model: str | LoadedModel,
    centre: float,
    *,
    plan: ResamplePlan | None = None,
    half_depth: int = PREVIEW_HALF_DEPTH,
    image_stack: bool = False,
    info: dict | None = None,
    **kwargs,
) -> Generator[tuple[int, int], None, tuple[int, np.ndarray]]:
    """Preview of the run that `plan` describes: the slices around `centre`, resampled as the
    full run is; yields ``(tiles_done, tiles_total)``.

    Without resampling (`plan` None, or ``plan.resampled`` False) this is
    :func:`iter_denoise_slab`. Otherwise the slab (``centre ± half_depth`` slices with a 3D
    model, the displayed slice with a 2D model, the whole of a 2D image) is Fourier-resampled to
    the model's voxel size, denoised there with the robust statistics of the *whole* input on
    the model's grid (those the full run normalises with), and resampled back unless
    ``plan.mode == "binned"`` (:func:`~napari_cryoden.inference.resample.iter_denoise_resampled`).
    A 2D model's preview then equals the same slice of the full run; a 3D model's differs from
    it near the slab's first and last slices, as Z is binned over the slab alone.

    Parameters
    ----------
    volume : (Z, Y, X) or (Y, X) ndarray of real dtype
        Tomogram, (N, Y, X) stack or 2D image; a memmap is read in slabs. Never modified.
    model : str or LoadedModel
        Registry name, card path or loaded model.
    centre : float
        Index of the displayed slice along the first axis (clipped into the volume; ignored for
        a 2D image).
    plan : ResamplePlan, optional
        From :func:`~napari_cryoden.inference.resample.plan_resample` for the whole `volume`
        (its voxel sizes in Å, array axis order).
    half_depth : int, default=16
        Slices shown on each side of `centre` with a 3D model.
    image_stack : bool, default=False
        The (N, Y, X) input is a stack of 2D images.
    info : dict, optional
        Filled in as by :func:`~napari_cryoden.inference.iter_denoise`; with resampling also
        ``resample`` (the slab's plan, see
        :func:`~napari_cryoden.inference.resample.iter_denoise_resampled`).
    **kwargs
        Other keyword arguments of :func:`~napari_cryoden.inference.iter_denoise` (`tile`,
        `overlap`, `device`, `precision`, ...).

    Returns
    -------
    z0 : int
        Index in `volume` of the first slice of the preview (0 for a 2D image).
    slab : ndarray of float32
        ``(z1 - z0, Y', X')`` denoised slices, or the ``(Y', X')`` denoised image, in the input's
        intensity scale; ``Y', X'`` are the input's, or the model grid's with ``plan.mode ==
        "binned"`` (and then Z too with a 3D model).

    Raises
    ------
    ValueError
        If `plan` was made for another shape than `volume`'s, if the model does not take data
        of this dimensionality (a 3D model and a 2D image or a stack), or as
        :func:`~napari_cryoden.inference.iter_denoise`.
    """
    if plan is None or not plan.resampled:
        return (yield from iter_denoise_slab(volume, model, centre, half_depth=half_depth, image_stack=image_stack,
                                             info=info, **kwargs))
    if tuple(np.shape(volume)) != plan.input_shape:
        raise ValueError(f"volume has shape {tuple(np.shape(volume))}, the resampling plan was made for "
                         f"{plan.input_shape}")
    lm = as_model(model)
    mode = input_mode(np.ndim(volume), lm, image_stack=image_stack)
    z0, part, stats = 0, volume, None
    if mode != "image":  # the slab around the displayed slice (3D model) or that slice (2D model)
        z0, z1, _, _ = slab_bounds(volume.shape[0], centre, mode=mode, half_depth=half_depth)
        part = volume[z0:z1]
        # Normalised as the full run is: with the statistics of the whole input on the model's grid.
        binned = fourier_resample(volume, plan.model_shape, fill=robust_stats(volume)[0])
        stats = robust_stats(binned)
        del binned
    sub = plan_resample(part.shape, plan.input_voxel_size, lm, mode=plan.mode, image_stack=image_stack)
    slab = yield from iter_denoise_resampled(part, lm, sub, info=info, stats=stats, image_stack=image_stack,
                                             **kwargs)
    return z0, slab
