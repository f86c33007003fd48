"""Robust intensity statistics of a whole volume, for normalising network input."""

from __future__ import annotations

import math

import numpy as np

from .tiling import release_pages

__all__ = ["robust_stats"]

_IQR_TO_SIGMA = 1.349  # IQR of a unit normal distribution


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
    n = volume.size
    step = max(1, math.ceil((n / max_samples) ** (1.0 / max(volume.ndim, 1)))) if n > max_samples else 1
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
    # The scale divides float32 tiles: it must stay a normal float32 number (not 0 or denormal).
    tiny = float(np.finfo(np.float32).tiny) * 2**24
    scale = (q75 - q25) / _IQR_TO_SIGMA
    if not scale > tiny:
        scale = float(sample.std())
    if not scale > tiny:
        scale = 1.0
    return float(med), float(scale)
