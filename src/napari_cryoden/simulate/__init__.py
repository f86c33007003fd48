"""Simulated cryo-ET data (no Qt): the thesis dataset and sample tomograms."""

from .samples import sample_tomogram
from .thesis import (
    add_gaussian_noise, apply_missing_wedge, blob_particle, load_particle_maps, missing_wedge_mask,
    place_particles, random_rotation, rotate_particle, salt_and_pepper, thesis_pair,
)

__all__ = [
    "add_gaussian_noise", "apply_missing_wedge", "blob_particle", "load_particle_maps",
    "missing_wedge_mask", "place_particles", "random_rotation", "rotate_particle",
    "salt_and_pepper", "sample_tomogram", "thesis_pair",
]
