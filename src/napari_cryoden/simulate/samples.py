"""Small simulated tomograms that need no data files: napari sample data, tests and demos."""

from __future__ import annotations

import numpy as np

from .specimen import blob_particle, random_rotation, rotate_particle
from .thesis import add_gaussian_noise, apply_missing_wedge, place_particles

__all__ = ["sample_tomogram"]


def sample_tomogram(
    seed: int = 0,
    shape: tuple[int, int, int] = (48, 96, 96),
    *,
    n_particles: int = 40,
    snr: float = 0.5,
    tilt_max_deg: float = 60.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """A crowded noisy tomogram and its clean version, made from procedural pseudo-proteins.

    Particles (:func:`~napari_cryoden.simulate.specimen.blob_particle`) in random orientations are
    placed without overlap; the noisy copy has a ±`tilt_max_deg` missing wedge and Gaussian
    noise at `snr` (thesis recipe, van Gijn 2019, section 3.1).

    Parameters
    ----------
    seed : int, default=0
    shape : tuple of 3 int, default=(48, 96, 96)
        (Z, Y, X) in voxels.
    n_particles : int, default=40
    snr : float, default=0.5
    tilt_max_deg : float, default=60

    Returns
    -------
    noisy, clean : (Z, Y, X) ndarrays of float32
    voxel_size : float
        Å per voxel (10.0), the scale of the pseudo-proteins.
    """
    rng = np.random.default_rng(seed)
    parts = [rotate_particle(blob_particle(rng, radius=rng.uniform(4, 8)), random_rotation(rng)) for _ in range(n_particles)]
    clean = place_particles(shape, parts, rng, center_single=False)
    noisy = add_gaussian_noise(apply_missing_wedge(clean, tilt_max_deg), snr, rng, reference=clean)
    return noisy, clean, 10.0
