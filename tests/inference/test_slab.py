"""The preview slab equals the same slices of the full denoised tomogram."""

import numpy as np
import pytest
import torch

from napari_cryoden.inference import denoise, iter_denoise_slab
from napari_cryoden.inference.preview import slab_bounds
from napari_cryoden.models import UpsampleUnet48
from napari_cryoden.models.registry import LoadedModel

from conftest import drain  # tests/conftest.py (tests/ is on sys.path)

FP32 = {"device": "cpu", "precision": "fp32"}


def test_slab_bounds():
    assert slab_bounds(64, 40, mode="volume", half_depth=4, margin=24, stride=8) == (36, 41 + 4, 8, 64)
    assert slab_bounds(64, 2.4, mode="volume", half_depth=4, margin=8, stride=8) == (0, 7, 0, 15)
    assert slab_bounds(10, 99, mode="stack") == (9, 10, 9, 10)
    assert slab_bounds(10, -3, mode="stack") == (0, 1, 0, 1)
    assert slab_bounds(1, 0, mode="image") == (0, 1, 0, 1)


@pytest.fixture(scope="module")
def full_run():
    torch.manual_seed(0)
    model = LoadedModel.from_module(UpsampleUnet48(ch=4, final_activation="identity").eval())
    vol = np.random.default_rng(3).normal(size=(64, 24, 24)).astype(np.float32)
    vol[::7] += 2.0  # uneven statistics: the slab must use the whole volume's
    return model, vol, denoise(vol, model, tile=(16, 24, 24), overlap=24, **FP32)


@pytest.mark.parametrize("centre", [40, 3, 62])
def test_slab_equals_full_result(full_run, centre):
    model, vol, full = full_run
    z0, slab = drain(iter_denoise_slab(vol, model, centre, half_depth=4, tile=(16, 24, 24), overlap=24, **FP32))
    assert z0 == max(0, centre - 4) and slab.shape == (min(64, centre + 5) - z0, 24, 24)
    np.testing.assert_allclose(slab, full[z0 : z0 + slab.shape[0]], rtol=0, atol=1e-5 * vol.std())


def test_slab_of_a_stack_and_of_an_image(rng):
    from test_2d import Tiny2D  # tests/inference is on sys.path (no __init__.py)

    model2d = LoadedModel.from_module(Tiny2D(), name="tiny-2d", ndim=2)
    stack = rng.normal(size=(6, 20, 22)).astype(np.float32)
    full = denoise(stack, model2d, tile=8, **FP32)
    z0, slab = drain(iter_denoise_slab(stack, model2d, 4.2, tile=8, image_stack=True, **FP32))
    assert z0 == 4 and slab.shape == (1, 20, 22)
    np.testing.assert_allclose(slab[0], full[4], atol=1e-6)
    z0, image = drain(iter_denoise_slab(stack[1], model2d, 123, tile=8, **FP32))
    assert z0 == 0 and image.shape == (20, 22)


def test_the_slab_is_one_tile_along_z_and_computes_less(full_run):
    """One tile spans the slab along Z with its context slices as the only margin: fewer voxels
    than tiling the slab like a volume (which pads it again), and still the full result."""
    model, vol, full = full_run
    info = {}
    z0, slab = drain(iter_denoise_slab(vol, model, 32, half_depth=3, info=info, **FP32))
    assert z0 == 29 and slab.shape == (7, 24, 24)
    assert info["overlap"][0] == 0 and info["tiles"] == 1 and info["tile"][0] % 8 == 0
    assert info["tile"][0] < 7 + 4 * 24  # not padded again by the margin
    np.testing.assert_allclose(slab, full[29:36], rtol=0, atol=1e-5 * vol.std())
