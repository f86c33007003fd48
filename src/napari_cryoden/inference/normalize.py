"""Robust intensity statistics of a whole volume, for normalising network input."""

from __future__ import annotations

import math

import numpy as np

from .tiling import release_pages

__all__ = ["robust_stats", "robust_stats_tensor"]

_IQR_TO_SIGMA = 1.349  # IQR of a unit normal distribution


def _step(n: int, ndim: int, max_samples: int) -> int:
    """Stride of the regular grid that keeps about `max_samples` of `n` voxels."""
    return max(1, math.ceil((n / max_samples) ** (1.0 / max(ndim, 1)))) if n > max_samples else 1


def _center_scale(q25: float, med: float, q75: float, std) -> tuple[float, float]:
    """Median and IQR / 1.349, falling back to `std()` then 1.0 where the spread is too small."""
    # The scale divides float32 tiles: it must stay a normal float32 number (not 0 or denormal).
    tiny = float(np.finfo(np.float32).tiny) * 2**24
    scale = (q75 - q25) / _IQR_TO_SIGMA
    if not scale > tiny:
        scale = float(std())
    if not scale > tiny:
        scale = 1.0
    return float(med), float(scale)


def robust_stats(volume: np.ndarray, *, max_samples: int = 1 << 22) -> tuple[float, float]:
    """Median and robust standard deviation (IQR / 1.349) of the finite voxels of `volume`.

    Statistics come from the whole volume, not per tile, so every tile is normalised alike. A
    volume larger than `max_samples` voxels is subsampled on a regular strided grid, which reads
    only those voxels from a memmap (a few slices at a time, letting go of their pages) and
    copies no more than `max_samples` values.

    Parameters
    ----------
    volume : ndarray of real dtype, any shape
    max_samples : int, default=4194304

    Returns
    -------
    center, scale : float
        `scale` falls back to the standard deviation, then to 1.0, for (near-)constant volumes and
        spreads too small for float32 arithmetic.

    Raises
    ------
    ValueError
        If the volume holds no finite value.
    """
    step = _step(volume.size, volume.ndim, max_samples)
    if volume.ndim >= 2 and isinstance(volume, np.memmap):
        # The same voxels, read a few slices at a time: a memmap's pages are let go as we go
        # (reading every step-th row of a slice maps the whole slice into memory).
        parts = []
        rest = (slice(None, None, step),) * (volume.ndim - 1)
        for z in range(0, volume.shape[0], step * 16):
            block = volume[(slice(z, min(z + step * 16, volume.shape[0]), step), *rest)]
            parts.append(np.asarray(block, dtype=np.float64).ravel())
            release_pages(volume)
        sample = np.concatenate(parts)
    else:
        sample = np.asarray(volume[(slice(None, None, step),) * volume.ndim], dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise ValueError("volume holds no finite values (all NaN or Inf)")
    q25, med, q75 = np.percentile(sample, [25, 50, 75])
    return _center_scale(q25, med, q75, sample.std)


def robust_stats_tensor(volume, *, max_samples: int = 1 << 22) -> tuple[float, float]:
    """:func:`robust_stats` of a torch tensor, computed where the tensor lives (e.g. on a GPU).

    The same strided subsample (every ``step``-th voxel along each axis), the same linear
    interpolation of the quartiles (:func:`torch.quantile`, as :func:`numpy.percentile`) and the
    same fallbacks, in float64: the result equals :func:`robust_stats` of the same data up to
    float64 rounding.

    Parameters
    ----------
    volume : torch.Tensor of real dtype, any shape
    max_samples : int, default=4194304
        At most 16 Mi (the limit of :func:`torch.quantile`).

    Returns
    -------
    center, scale : float

    Raises
    ------
    ValueError
        If the volume holds no finite value.
    """
    import torch

    step = _step(volume.numel(), volume.ndim, max_samples)
    sample = volume[(slice(None, None, step),) * volume.ndim].reshape(-1).to(torch.float64)
    sample = sample[torch.isfinite(sample)]
    if sample.numel() == 0:
        raise ValueError("volume holds no finite values (all NaN or Inf)")
    probs = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64, device=sample.device)
    q25, med, q75 = torch.quantile(sample, probs).tolist()
    return _center_scale(q25, med, q75, lambda: sample.std(correction=0).item())
