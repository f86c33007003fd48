"""2D models: (Y, X) images tile by tile, (N, Y, X) stacks slice by slice; mismatches refused."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoden.inference import denoise, input_mode, iter_denoise, plan_geometry, receptive_margin, robust_stats
from napari_cryoden.models.registry import LoadedModel

from conftest import drain  # tests/conftest.py (tests/ is on sys.path)


class Tiny2D(nn.Module):
    """A small 2D U-Net-like network with stride 2 (one pooling), for the 2D paths."""

    stride = 2

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x):
        a = F.leaky_relu(self.c1(x), 0.1)
        b = F.leaky_relu(self.c2(F.avg_pool2d(a, 2)), 0.1)
        return self.c3(torch.cat((a, F.interpolate(b, scale_factor=2)), 1))


@pytest.fixture
def model2d():
    return LoadedModel.from_module(Tiny2D(), name="tiny-2d", ndim=2)


@pytest.fixture
def image(rng):
    return rng.normal(size=(45, 58)).astype(np.float32) + np.linspace(0, 3, 58, dtype=np.float32)


FP32 = {"device": "cpu", "precision": "fp32"}


def test_receptive_margin_of_the_tiny_net(model2d):
    # 3x3, then pool + 3x3 at half resolution (reach 1 + 2*1 + pooling phase), then 3x3: 6 at most
    (my, mx) = receptive_margin(model2d)
    assert my == mx and 4 <= my <= 8 and my % 2 == 0


def test_2d_image_tiled_equals_one_tile(model2d, image):
    whole = denoise(image, model2d, tile=(46, 58), **FP32)
    tiled = denoise(image, model2d, tile=8, **FP32)
    assert whole.shape == image.shape and whole.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5 * image.std())
    # and the automatic plan (here one tile) gives the same
    np.testing.assert_allclose(denoise(image, model2d, **FP32), whole, rtol=0, atol=1e-5 * image.std())


def test_2d_stack_is_denoised_slice_by_slice(model2d, rng):
    stack = rng.normal(size=(5, 30, 34)).astype(np.float32)
    stack[2] += 4.0  # a slice unlike the others
    out = denoise(stack, model2d, tile=8, **FP32)
    assert out.shape == stack.shape
    # Each slice depends on itself only: reordering the slices (same statistics) reorders the result.
    np.testing.assert_allclose(denoise(stack[::-1].copy(), model2d, tile=8, **FP32), out[::-1], atol=1e-5)
    # ... and batching slices together changes nothing
    np.testing.assert_allclose(denoise(stack, model2d, tile=8, batch_size=4, **FP32), out, atol=1e-6)
    info = {}
    denoise(stack, model2d, info=info, **FP32)
    assert info["mode"] == "stack" and info["tile"][0] == 1 and info["overlap"][0] == 0


def test_image_is_one_slice_of_a_stack(model2d, image):
    info = {}
    stats = robust_stats(image)  # a stack of copies has slightly different percentiles
    as_image = drain(iter_denoise(image, model2d, tile=16, info=info, stats=stats, **FP32))
    assert info["mode"] == "image"
    as_stack = drain(iter_denoise(np.stack([image, image + 1]), model2d, tile=16, stats=stats, **FP32))
    np.testing.assert_array_equal(as_stack[0], as_image)


def test_mismatches_get_one_line_messages(model2d, identity_model, image):
    model3d = LoadedModel.from_module(identity_model, name="vol3d")
    with pytest.raises(ValueError, match="'vol3d' is a 3D tomogram model and the input is a 2D image"):
        denoise(image, model3d, **FP32)
    with pytest.raises(ValueError, match="stack of 2D images"):
        denoise(np.stack([image] * 3), model3d, image_stack=True, **FP32)
    with pytest.raises(ValueError, match="expects 2D images"):
        denoise(np.zeros((2, 3, 8, 8), np.float32), model2d, **FP32)
    assert input_mode(3, model2d) == "stack" and input_mode(2, model2d) == "image"
    assert input_mode(3, model3d) == "volume"


def test_2d_tile_arguments(model2d, image):
    plan = plan_geometry(model2d, image.shape, torch.device("cpu"), tile=(16, 24), overlap=(4, 6))
    assert plan.geometry.tile == (1, 16, 24) and plan.geometry.overlap == (0, 4, 6)
    with pytest.raises(ValueError, match="tile"):
        plan_geometry(model2d, image.shape, torch.device("cpu"), tile=(16, 24, 8))
    with pytest.raises(ValueError, match="tile"):
        denoise(image, model2d, tile=7, **FP32)
