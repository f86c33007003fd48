"""The specimen's particles: one rotation function for the thesis dataset and the tomogram simulator."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_cryoden.simulate.specimen import blob_particle, particle_radius, random_rotation, rotate_particle


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotation_in_the_bounding_sphere_equals_the_full_cube(seed):
    """The cheap cube of the particle's radius (the tomogram simulator) gives the same voxels,
    bit for bit, as the cube that holds the whole box (the thesis dataset): seeds give the same data."""
    rng = np.random.default_rng(seed)
    p = np.pad(blob_particle(rng, radius=5.0), ((2, 0), (0, 3), (1, 1)))  # off-centre, anisotropic box
    rotation = random_rotation(rng)
    full = rotate_particle(p, rotation)
    cheap = rotate_particle(p, rotation, radius=particle_radius(p))
    assert full.dtype == cheap.dtype == np.float32
    np.testing.assert_array_equal(cheap, full)


def test_rotation_turns_the_particle_about_its_box_centre():
    """A rod along X turned by 90° about Y (a (z, y, x) rotation matrix) lies along Z; the identity
    keeps it (cropped to its support)."""
    rod = np.zeros((9, 9, 9), np.float32)
    rod[4, 4, 1:8] = 1.0
    turned = rotate_particle(rod, Rotation.from_euler("y", 90, degrees=True).as_matrix()[::-1, ::-1])
    assert turned.shape == (7, 1, 1) and np.allclose(turned.ravel(), 1.0, atol=1e-5)
    same = rotate_particle(rod, np.eye(3), radius=particle_radius(rod))
    np.testing.assert_array_equal(same, rod[4:5, 4:5, 1:8])


def test_particle_radius_reaches_the_farthest_voxel():
    p = np.zeros((11, 11, 11), np.float32)
    p[5, 5, 5] = 1.0
    p[5, 5, 9] = 0.5  # 4 voxels from the centre
    assert particle_radius(p) == pytest.approx(5.0)
    p[5, 5, 9] = 1e-4  # below 1e-3 of the maximum: not part of the particle
    assert particle_radius(p) == pytest.approx(1.0)
