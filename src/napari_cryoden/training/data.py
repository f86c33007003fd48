"""Batches of (noisy, clean) training patches, normalised as at inference time."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ..inference.normalize import robust_stats
from ..simulate.thesis import thesis_pair

__all__ = ["ThesisStream", "normalize_pair"]


def normalize_pair(noisy: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise both volumes with the noisy volume's robust statistics (as inference does).

    The network then learns to output the clean signal in the noisy input's normalised units,
    so that :func:`~napari_cryoden.inference.denoise` can map it back to the input's scale.
    """
    center, scale = robust_stats(noisy)
    return (noisy - center) / scale, (clean - center) / scale


class ThesisStream:
    """Endless batches of the thesis dataset (van Gijn 2019, section 3.1), made on the fly.

    Each sample is a cube of `patch` voxels with one centred particle (probability
    `p_single`) or 2-`max_particles` randomly placed ones, a missing wedge of a tilt series with
    maximum tilt drawn from `tilt_range`, and Gaussian noise with an SNR drawn log-uniformly from
    `snr_range`. Augmentation: flips along Z, Y, X (they keep the wedge about Y) and a random
    contrast sign (dark or bright particles).

    Parameters
    ----------
    particles : sequence of ndarray
        Particle maps (see :func:`~napari_cryoden.simulate.load_particle_maps`).
    rng : numpy.random.Generator
    batch_size, patch : int
    p_single : float, default=0.3
    max_particles : int, default=40
    snr_range : (float, float), default=(0.1, 2.0)
    tilt_range : (float, float), default=(50, 70)
        Degrees.

    Yields
    ------
    noisy, clean : torch.Tensor of shape (batch_size, 1, patch, patch, patch), float32
    """

    def __init__(
        self,
        particles: Sequence[np.ndarray],
        rng: np.random.Generator,
        *,
        batch_size: int = 4,
        patch: int = 32,
        p_single: float = 0.3,
        max_particles: int = 40,
        snr_range: tuple[float, float] = (0.1, 2.0),
        tilt_range: tuple[float, float] = (50.0, 70.0),
    ):
        self.particles = list(particles)
        self.rng = rng
        self.batch_size, self.patch = batch_size, patch
        self.p_single, self.max_particles = p_single, max_particles
        self.snr_range, self.tilt_range = snr_range, tilt_range

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        n = 1 if rng.random() < self.p_single else int(rng.integers(2, self.max_particles + 1))
        snr = float(np.exp(rng.uniform(*np.log(self.snr_range))))
        tilt = float(rng.uniform(*self.tilt_range))
        noisy, clean = thesis_pair(self.particles, rng, box=self.patch, n_particles=n, snr=snr, tilt_max_deg=tilt)
        noisy, clean = normalize_pair(noisy, clean)
        for axis in range(3):
            if rng.random() < 0.5:
                noisy, clean = np.flip(noisy, axis), np.flip(clean, axis)
        if rng.random() < 0.5:
            noisy, clean = -noisy, -clean
        return np.ascontiguousarray(noisy, np.float32), np.ascontiguousarray(clean, np.float32)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            pairs = [self.sample() for _ in range(self.batch_size)]
            x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
            y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None])
            yield x, y
