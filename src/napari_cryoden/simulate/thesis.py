"""The training and test data of van Gijn (2019), section 3.1 and 4.2-4.4, made on the fly.

A clean volume holds one centred particle or several non-overlapping ones in random orientations;
its degraded copy has a missing wedge (a Fourier mask, single-axis tilt about Y) and additive
Gaussian noise at a chosen SNR, or salt-and-pepper noise. Every function takes a
``numpy.random.Generator`` and is reproducible from its seed.

Particles come from density maps (``load_particle_maps``, e.g. the SHREC proteins in
``shared/data/maps_10A``) or from :func:`blob_particle`, a procedural pseudo-protein made of
Gaussian pseudo-atoms, which needs no data files (for sample data and tests).

Arrays are (Z, Y, X); the beam is along Z and the tilt axis is Y.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

__all__ = [
    "add_gaussian_noise",
    "apply_missing_wedge",
    "blob_particle",
    "load_particle_maps",
    "missing_wedge_mask",
    "place_particles",
    "random_rotation",
    "rotate_particle",
    "salt_and_pepper",
    "thesis_pair",
]


def load_particle_maps(folder: str | Path, names: list[str] | None = None, *, threshold: float = 0.01) -> dict[str, np.ndarray]:
    """Read particle density maps (``*.mrc``) and crop each to its support.

    Parameters
    ----------
    folder : path-like
        Folder of positive-density maps, all at one voxel size.
    names : list of str, optional
        File stems to load (default: all).
    threshold : float, default=0.01
        Voxels above ``threshold * max`` define the support; a 2-voxel margin is kept.

    Returns
    -------
    dict
        Stem -> float32 (Z, Y, X) map scaled to a maximum of 1.

    Raises
    ------
    FileNotFoundError
        If the folder holds none of the requested maps.
    """
    from ..io import read_mrc

    folder = Path(folder)
    paths = sorted(folder.glob("*.mrc"))
    if names is not None:
        paths = [p for p in paths if p.stem in set(names)]
    if not paths:
        raise FileNotFoundError(f"{folder}: no particle maps{' named ' + ', '.join(names) if names else ''}")
    maps = {}
    for p in paths:
        m = np.asarray(read_mrc(p).data, dtype=np.float32)
        m = np.clip(m, 0, None)
        m /= m.max()
        idx = np.argwhere(m > threshold)
        lo = np.maximum(idx.min(0) - 2, 0)
        hi = np.minimum(idx.max(0) + 3, m.shape)
        maps[p.stem] = np.ascontiguousarray(m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    return maps


def blob_particle(rng: np.random.Generator, radius: float = 8.0, n_atoms: int | None = None) -> np.ndarray:
    """A procedural pseudo-protein: Gaussian pseudo-atoms scattered in an ellipsoid.

    Parameters
    ----------
    rng : numpy.random.Generator
    radius : float, default=8.0
        Mean radius in voxels.
    n_atoms : int, optional
        Number of pseudo-atoms (default: random, 8-40).

    Returns
    -------
    (Z, Y, X) ndarray of float32, maximum 1.
    """
    n_atoms = int(rng.integers(8, 41)) if n_atoms is None else n_atoms
    axes = radius * rng.uniform(0.6, 1.3, size=3)
    size = int(np.ceil(2 * axes.max() + 8))
    pts = rng.normal(size=(n_atoms, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    pts *= rng.uniform(0, 1, size=(n_atoms, 1)) ** (1 / 3)
    pts = pts * axes + size / 2
    vol = np.zeros((size,) * 3, dtype=np.float32)
    idx = np.clip(np.round(pts).astype(int), 0, size - 1)
    np.add.at(vol, tuple(idx.T), rng.uniform(0.5, 1.0, size=n_atoms).astype(np.float32))
    vol = ndimage.gaussian_filter(vol, sigma=rng.uniform(1.2, 2.2))
    return vol / vol.max()


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3)."""
    return Rotation.random(random_state=rng).as_matrix()


def rotate_particle(particle: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Rotate a particle about its box centre (linear interpolation) into a cube that holds it."""
    size = int(np.ceil(np.sqrt(3) * max(particle.shape))) | 1
    center_in = (np.asarray(particle.shape) - 1) / 2
    center_out = np.full(3, (size - 1) / 2)
    offset = center_in - rotation @ center_out
    out = ndimage.affine_transform(particle, rotation, offset=offset, output_shape=(size,) * 3, order=1, mode="constant")
    idx = np.argwhere(out > 1e-3)
    if idx.size == 0:
        return out.astype(np.float32)
    lo, hi = idx.min(0), idx.max(0) + 1
    return np.ascontiguousarray(out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)


def place_particles(
    shape: tuple[int, int, int],
    particles: list[np.ndarray],
    rng: np.random.Generator,
    *,
    center_single: bool = True,
    max_tries: int = 200,
) -> np.ndarray:
    """Place particles without overlap (bounding spheres) into a volume of `shape`.

    A single particle is centred when `center_single` is True (thesis section 3.1); otherwise
    positions are random. Particles that find no free place after `max_tries` are left out.

    Returns
    -------
    (Z, Y, X) ndarray of float32
    """
    vol = np.zeros(shape, dtype=np.float32)
    shape_a = np.asarray(shape)
    placed: list[tuple[np.ndarray, float]] = []
    for p in particles:
        ps = np.asarray(p.shape)
        if np.any(ps > shape_a):
            continue
        r = 0.5 * float(np.linalg.norm(ps)) * 0.8
        for _ in range(max_tries):
            if center_single and len(particles) == 1:
                lo = (shape_a - ps) // 2
            else:
                lo = np.array([rng.integers(0, s - q + 1) for s, q in zip(shape_a, ps)])
            c = lo + ps / 2
            if all(np.linalg.norm(c - c2) > r + r2 for c2, r2 in placed):
                sl = tuple(slice(a, a + q) for a, q in zip(lo, ps))
                vol[sl] += p
                placed.append((c, r))
                break
    return vol


def missing_wedge_mask(shape: tuple[int, int, int], tilt_max_deg: float = 60.0) -> np.ndarray:
    """Fourier mask of a single-axis tilt series about Y from -tilt_max to +tilt_max degrees.

    The beam is along Z. A Fourier component (kz, ky, kx) was measured when its direction in the
    kz-kx plane lies within `tilt_max_deg` of the kx axis: ``|kz| <= tan(tilt_max) * |kx|``. The
    zero frequency is always kept.

    Returns
    -------
    (Z, Y, X) ndarray of float32, in ``numpy.fft.fftn`` layout (zero frequency first), values 0/1.
    """
    if not 0 < tilt_max_deg <= 90:
        raise ValueError(f"tilt_max_deg must be in (0, 90], got {tilt_max_deg}")
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    kx = np.fft.fftfreq(shape[2])[None, None, :]
    keep = np.abs(kz) <= np.tan(np.deg2rad(tilt_max_deg)) * np.abs(kx) + 1e-12
    return np.broadcast_to(keep, shape).astype(np.float32)


def apply_missing_wedge(volume: np.ndarray, tilt_max_deg: float = 60.0) -> np.ndarray:
    """Remove the missing wedge of a ±`tilt_max_deg` tilt series from `volume` (float32 result)."""
    mask = missing_wedge_mask(volume.shape, tilt_max_deg)
    return np.fft.ifftn(np.fft.fftn(volume) * mask).real.astype(np.float32)


def add_gaussian_noise(volume: np.ndarray, snr: float, rng: np.random.Generator, *, reference: np.ndarray | None = None) -> np.ndarray:
    """Add white Gaussian noise with variance ``var(reference) / snr`` (reference: `volume`)."""
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    ref = volume if reference is None else reference
    sigma = float(np.sqrt(ref.var() / snr)) if ref.var() > 0 else 1.0
    return (volume + rng.normal(0.0, sigma, size=volume.shape)).astype(np.float32)


def salt_and_pepper(volume: np.ndarray, rng: np.random.Generator, *, fraction: float = 0.1, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Set `fraction` of the voxels to `low` or `high` (50/50), thesis section 4.2 (10 %)."""
    low = float(volume.min()) if low is None else low
    high = float(volume.max()) if high is None else high
    out = volume.astype(np.float32, copy=True)
    hit = rng.random(volume.shape) < fraction
    salt = rng.random(volume.shape) < 0.5
    out[hit & salt] = high
    out[hit & ~salt] = low
    return out


def thesis_pair(
    particles: list[np.ndarray],
    rng: np.random.Generator,
    *,
    box: int | tuple[int, int, int] = 64,
    n_particles: int = 1,
    snr: float = 0.5,
    tilt_max_deg: float | None = 60.0,
    noise: str = "gaussian",
) -> tuple[np.ndarray, np.ndarray]:
    """One (degraded, clean) pair of the thesis dataset (section 3.1; 4.2 and 4.4 variants).

    Parameters
    ----------
    particles : list of ndarray
        Particle maps to draw from (uniformly, with replacement).
    rng : numpy.random.Generator
    box : int or tuple, default=64
    n_particles : int, default=1
        1 gives a centred particle (section 3.1); more give the multiple-particle variant (4.4).
    snr : float, default=0.5
        Signal-to-noise ratio of the Gaussian noise: var(clean) / var(noise).
    tilt_max_deg : float or None, default=60
        Missing wedge of a ±tilt series; None for no wedge.
    noise : {"gaussian", "salt-and-pepper"}
        "salt-and-pepper" replaces the missing wedge and Gaussian noise by 10 % salt and pepper
        (section 4.2).

    Returns
    -------
    degraded, clean : (Z, Y, X) ndarrays of float32
    """
    shape = (box,) * 3 if np.isscalar(box) else tuple(box)
    chosen = [particles[int(rng.integers(len(particles)))] for _ in range(n_particles)]
    rotated = [rotate_particle(p, random_rotation(rng)) for p in chosen]
    clean = place_particles(shape, rotated, rng)
    if noise == "salt-and-pepper":
        return salt_and_pepper(clean, rng), clean
    if noise != "gaussian":
        raise ValueError(f"noise must be 'gaussian' or 'salt-and-pepper', got {noise!r}")
    degraded = apply_missing_wedge(clean, tilt_max_deg) if tilt_max_deg is not None else clean
    return add_gaussian_noise(degraded, snr, rng, reference=clean), clean
