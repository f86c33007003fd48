"""The training and test data of van Gijn (2019), section 3.1 and 4.2-4.4, made on the fly.

A clean volume holds one centred particle or several non-overlapping ones in random orientations;
its degraded copy has a missing wedge (a Fourier mask, single-axis tilt about Y) and additive
Gaussian noise at a chosen SNR, or salt-and-pepper noise. Every function takes a
``numpy.random.Generator`` and is reproducible from its seed.

Particles come from density maps (:func:`~napari_cryoden.simulate.specimen.load_particle_maps`,
e.g. the SHREC proteins in ``shared/data/maps_10A``) or from
:func:`~napari_cryoden.simulate.specimen.blob_particle`, a procedural pseudo-protein made of
Gaussian pseudo-atoms, which needs no data files (for sample data and tests).

Arrays are (Z, Y, X); the beam is along Z and the tilt axis is Y.
"""

from __future__ import annotations

import numpy as np

from .specimen import random_rotation, rotate_particle

__all__ = [
    "add_gaussian_noise",
    "apply_missing_wedge",
    "missing_wedge_mask",
    "place_particles",
    "salt_and_pepper",
    "thesis_pair",
]


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
