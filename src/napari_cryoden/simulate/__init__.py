"""Simulated cryo-ET data (no Qt): the thesis dataset, sample tomograms, and physically modelled
tomograms and micrographs with even/odd halves."""

from .micrograph import SimulatedMicrograph, simulate_micrograph
from .samples import sample_tomogram
from .thesis import (
    add_gaussian_noise, apply_missing_wedge, blob_particle, load_particle_maps, missing_wedge_mask,
    place_particles, random_rotation, rotate_particle, salt_and_pepper, thesis_pair,
)
from .tomogram import SimulatedTomogram, simulate_tomogram

__all__ = [
    "add_gaussian_noise", "apply_missing_wedge", "blob_particle", "load_particle_maps",
    "missing_wedge_mask", "place_particles", "random_rotation", "rotate_particle",
    "salt_and_pepper", "sample_tomogram", "thesis_pair",
    "SimulatedMicrograph", "SimulatedTomogram", "simulate_micrograph", "simulate_tomogram",
]
