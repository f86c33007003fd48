"""Noise2Void blind spots: the correlated-noise mask and the masking of a patch.

Noise2Void (Krull et al. 2019) trains on one noisy volume: a few voxels of each patch are
replaced by other voxels of their neighbourhood and the loss is taken on them only, so the
network must predict a voxel from its surroundings. Tomogram noise after weighted
back-projection is correlated over a few voxels along Z and X, so the blind spot must also hide
those neighbours (structured Noise2Void, Broaddus et al. 2020): :func:`noise_correlation_mask`
estimates them from the data, :func:`n2v_manipulate` applies the blind spots.

References
----------
.. [1] Krull, A., Buchholz, T.-O. & Jug, F. (2019). Noise2Void - Learning denoising from single
   noisy images. CVPR, 2129-2137. doi:10.1109/CVPR.2019.00223
.. [2] Broaddus, C. et al. (2020). Removing structured noise with self-supervised blind-spot
   networks. ISBI, 159-163. doi:10.1109/ISBI45749.2020.9098336
.. [3] Batson, J. & Royer, L. (2019). Noise2Self: Blind denoising by self-supervision. ICML,
   PMLR 97, 524-533.
"""

from __future__ import annotations

import numpy as np

__all__ = ["n2v_manipulate", "noise_correlation_mask"]


def noise_correlation_mask(
    volume: np.ndarray,
    *,
    radius: int = 4,
    threshold: float = 0.1,
    sigma: float = 2.0,
    max_edge: int = 128,
) -> np.ndarray:
    """Offsets of the neighbours whose noise is correlated with a voxel's, estimated from the data.

    The autocorrelation of the volume after removing its low frequencies (the volume minus a
    Gaussian blur of width `sigma`) is dominated by the noise, since in cryo-ET the noise has far
    more power than the signal at high frequency. Every offset within `radius` whose normalised
    autocorrelation reaches `threshold` in absolute value is returned, with the zero offset. A
    blind spot that hides all of them leaves the network no voxel from which it could predict
    the hidden voxel's noise (the condition of Noise2Self, Batson & Royer 2019, section 3;
    structured Noise2Void, Broaddus et al. 2020, ISBI, section 2, where the mask was read from
    the noise autocorrelation by eye).

    For a tomogram reconstructed by weighted back-projection about the Y axis this finds the
    few voxels along Z and X that the ramp filter, the interpolation and the streaks couple; for
    white noise it finds the voxel alone.

    Parameters
    ----------
    volume : ndarray, 2D (Y, X) or 3D (Z, Y, X)
        The noisy data (any real dtype; NaN/Inf count as the median). Only a central crop of at
        most `max_edge` voxels per axis is read.
    radius : int, default=4
        Largest offset searched, per axis, in voxels.
    threshold : float, default=0.1
        Smallest absolute correlation coefficient that counts as correlated.
    sigma : float, default=2.0
        Width, in voxels, of the Gaussian whose blur is subtracted first.
    max_edge : int, default=128

    Returns
    -------
    offsets : ndarray of int64, shape (K, ndim)
        The offsets, the zero offset first. Symmetric: -d is in it when d is.

    Raises
    ------
    ValueError
        If `volume` is not 2D or 3D, or is constant.
    """
    from scipy import ndimage

    v = np.asarray(volume)
    if v.ndim not in (2, 3):
        raise ValueError(f"noise_correlation_mask needs a 2D or 3D array, got shape {v.shape}")
    crop = tuple(slice(max(0, (n - max_edge) // 2), max(0, (n - max_edge) // 2) + max_edge) for n in v.shape)
    x = np.array(v[crop], dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        x[bad] = np.median(x[~bad]) if (~bad).any() else 0.0
    x -= ndimage.gaussian_filter(x, float(sigma), mode="reflect")
    x -= x.mean()
    power = np.abs(np.fft.rfftn(x, s=[2 * n for n in x.shape])) ** 2  # zero-padded: no wrap-around
    ac = np.fft.irfftn(power, s=[2 * n for n in x.shape])
    if not ac.flat[0] > 0:
        raise ValueError("cannot estimate the noise correlation of a constant volume")
    ac /= ac.flat[0]
    grid = np.stack(np.meshgrid(*[np.arange(-radius, radius + 1)] * x.ndim, indexing="ij"), -1).reshape(-1, x.ndim)
    rho = ac[tuple(grid.T)]  # negative offsets wrap to the end of the padded array
    keep = (np.abs(rho) >= threshold) & (np.abs(grid) < np.array(x.shape)).all(axis=1)
    keep |= (grid == 0).all(axis=1)
    offsets = grid[keep]
    order = np.argsort(np.abs(offsets).sum(axis=1), kind="stable")  # the zero offset first
    return offsets[order].astype(np.int64)


def n2v_manipulate(
    patch: np.ndarray,
    rng: np.random.Generator,
    *,
    fraction: float,
    radius: int = 2,
    blind: int = 0,
    offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise2Void blind spots: hide a random fraction of voxels from the network.

    Krull et al. (2019): ``n = max(1, round(fraction * patch.size))`` distinct voxels are drawn
    uniformly; each takes the value (from the unmodified patch) of a voxel drawn uniformly from
    the window of ``2 * radius + 1`` voxels per axis around it, clipped to the patch, excluding
    the voxel itself.

    Parameters
    ----------
    patch : ndarray of float32, 2D or 3D
        A normalised training patch, (Z, Y, X) or (Y, X) voxels.
    rng : numpy.random.Generator
    fraction : float
        Share of the patch's voxels that become blind spots, in (0, 1] (at least one voxel).
    radius : int, default=2
        Half-width in voxels of the window a classic blind spot's replacement value is drawn from.
    blind : int, default=0
        Half-width of a cubic structured blind spot: the same as `offsets` holding the whole cube
        of ``2 * blind + 1`` voxels per axis. 0: no cube.
    offsets : ndarray of int, shape (K, ndim), optional
        A structured blind spot (structured Noise2Void, Broaddus et al. 2020, ISBI, section 2):
        the voxels at these offsets from each blind-spot voxel (clipped to the patch), and the
        blind-spot voxel itself, take values of voxels drawn uniformly from the whole patch, so
        the network cannot read a blind spot's noise from neighbours whose noise is correlated
        with it (see :func:`noise_correlation_mask`). The loss stays on the blind-spot voxels.
        With only the zero offset (or None, and ``blind=0``) this is classic Noise2Void.

    Returns
    -------
    masked : ndarray of float32, same shape
        The patch with the blind-spot voxels replaced.
    mask : ndarray of float32, same shape
        1 at the blind-spot voxels, 0 elsewhere.
    """
    shape = np.array(patch.shape)
    n = max(1, min(patch.size, int(round(fraction * patch.size))))
    flat = rng.choice(patch.size, size=n, replace=False)
    pos = np.stack(np.unravel_index(flat, patch.shape), axis=1)
    if blind > 0:
        offsets = np.stack(np.meshgrid(*[np.arange(-blind, blind + 1)] * patch.ndim, indexing="ij"), -1)
    structured = offsets is not None and np.asarray(offsets).reshape(-1, patch.ndim).any()
    masked = np.array(patch, dtype=np.float32, copy=True)
    if structured:
        offs = np.asarray(offsets, dtype=np.int64).reshape(1, -1, patch.ndim)
        cover = np.clip(pos[:, None, :] + offs, 0, shape - 1).reshape(-1, patch.ndim)
        cover = np.concatenate([pos, cover])
        donors = rng.integers(0, patch.size, size=len(cover))
        masked[tuple(cover.T)] = patch.reshape(-1)[donors]
    else:
        nbr = pos.copy()
        todo = np.arange(n)
        while todo.size:
            lo = np.maximum(pos[todo] - radius, 0)
            hi = np.minimum(pos[todo] + radius, shape - 1)
            nbr[todo] = rng.integers(lo, hi + 1)
            todo = todo[(nbr[todo] == pos[todo]).all(axis=1)]
        masked[tuple(pos.T)] = patch[tuple(nbr.T)]
    mask = np.zeros(patch.shape, np.float32)
    mask[tuple(pos.T)] = 1.0
    return masked, mask
