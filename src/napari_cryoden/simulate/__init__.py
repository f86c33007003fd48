"""Simulated cryo-ET data (no Qt): the thesis dataset, sample tomograms, and physically modelled
tomograms and micrographs with even/odd halves.

Modules: ``physics`` (electron optics, CTF, radiation damage, image formation), ``specimen``
(particles, vesicles, ice), ``tomogram`` (tilt series and reconstruction), ``micrograph``
(frame sums of a movie), ``thesis`` (the dataset of van Gijn 2019), ``samples`` and ``batched``
(thesis and realistic training pairs made in batches with torch on the training device).
"""

from .micrograph import SimulatedMicrograph, simulate_micrograph
from .samples import sample_tomogram
from .specimen import blob_particle, load_particle_maps, random_rotation, rotate_particle
from .thesis import (
    add_gaussian_noise, apply_missing_wedge, missing_wedge_mask, place_particles, salt_and_pepper, thesis_pair,
)
from .tomogram import SimulatedTomogram, simulate_tomogram

__all__ = [
    "BatchedStream", "ParticleBank", "realistic_batch", "thesis_batch",
    "add_gaussian_noise", "apply_missing_wedge", "blob_particle", "load_particle_maps",
    "missing_wedge_mask", "place_particles", "random_rotation", "rotate_particle",
    "salt_and_pepper", "sample_tomogram", "thesis_pair",
    "SimulatedMicrograph", "SimulatedTomogram", "simulate_micrograph", "simulate_tomogram",
]

_BATCHED = ("BatchedStream", "ParticleBank", "realistic_batch", "thesis_batch")


def __getattr__(name: str):
    """The torch-based names of :mod:`.batched`, imported on first use (``simulate`` itself imports no torch)."""
    if name in _BATCHED:
        from . import batched

        return getattr(batched, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
