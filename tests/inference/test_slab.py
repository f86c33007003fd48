"""The preview slab equals the same slices of the full denoised tomogram."""

import numpy as np
import pytest
import torch

from napari_cryoden.inference import denoise, iter_denoise_slab
from napari_cryoden.inference.preview import iter_denoise_preview, slab_bounds
from napari_cryoden.inference.resample import fourier_resample, iter_denoise_resampled, plan_resample
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


# ------------------------------------------------------------------------ resampled preview


def _tiny2d(voxel_size_A):
    from test_2d import Tiny2D  # tests/inference is on sys.path (no __init__.py)

    lm = LoadedModel.from_module(Tiny2D(), name="tiny-2d", ndim=2)
    lm.card = {"voxel_size_A": voxel_size_A}
    return lm


def test_resampled_preview_of_a_stack_slice_is_that_slice_of_the_full_run(rng):
    """A 2.5 Å stack for a 10 Å 2D model: the preview of one slice is binned, denoised with the
    whole stack's statistics on the model's grid and padded back, as the full run is."""
    lm = _tiny2d(10.0)
    stack = rng.normal(size=(3, 96, 80)).astype(np.float32)
    stack[0] += 3.0  # uneven statistics: the slice must use the whole stack's
    plan = plan_resample(stack.shape, (2.5, 2.5, 2.5), lm, image_stack=True)
    assert plan.resampled and plan.model_shape == (3, 24, 20)
    full = drain(iter_denoise_resampled(stack, lm, plan, image_stack=True, **FP32))
    info = {}
    z0, slab = drain(iter_denoise_preview(stack, lm, 1.3, plan=plan, image_stack=True, info=info, **FP32))
    assert z0 == 1 and slab.shape == (1, 96, 80) and slab.dtype == np.float32
    assert info["resample"]["model_shape"] == (1, 24, 20)
    np.testing.assert_allclose(slab[0], full[1], atol=1e-4)
    # "binned" keeps the preview on the model's grid, like the full run.
    binned = plan_resample(stack.shape, (2.5, 2.5, 2.5), lm, mode="binned", image_stack=True)
    z0, small = drain(iter_denoise_preview(stack, lm, 2, plan=binned, image_stack=True, **FP32))
    assert z0 == 2 and small.shape == (1, 24, 20)


def test_resampled_preview_of_an_image_is_the_full_run(rng):
    lm = _tiny2d(4.0)
    image = rng.normal(size=(64, 48)).astype(np.float32)
    plan = plan_resample(image.shape, (2.0, 2.0), lm)
    z0, preview = drain(iter_denoise_preview(image, lm, 99, plan=plan, **FP32))
    assert z0 == 0 and preview.shape == image.shape
    np.testing.assert_allclose(preview, drain(iter_denoise_resampled(image, lm, plan, **FP32)), atol=1e-5)


def test_resampled_preview_of_a_tomogram_bins_the_slab_with_the_whole_statistics(rng, identity_model):
    """A 3D model's preview: the slab around the displayed slice, on the model's grid in Z too,
    normalised with the statistics of the whole tomogram binned to that grid."""
    lm = LoadedModel.from_module(identity_model, name="id", ndim=3)
    lm.card = {"voxel_size_A": 10.0}
    vol = rng.normal(size=(48, 32, 32)).astype(np.float32)
    plan = plan_resample(vol.shape, (5.0, 5.0, 5.0), lm)
    z0, slab = drain(iter_denoise_preview(vol, lm, 30, plan=plan, half_depth=4, **FP32))
    assert z0 == 26 and slab.shape == (9, 32, 32)
    # An identity network: the slab low-passed to the model's grid and back.
    part = vol[26:35]
    small = plan_resample(part.shape, (5.0, 5.0, 5.0), lm).model_shape
    np.testing.assert_allclose(slab, fourier_resample(fourier_resample(part, small), part.shape), atol=1e-4)


def test_preview_without_resampling_is_the_slab(full_run):
    model, vol, full = full_run
    for plan in (None, plan_resample(vol.shape, (5.0, 5.0, 5.0), model)):  # no voxel size on the card
        z0, slab = drain(iter_denoise_preview(vol, model, 40, plan=plan, half_depth=4, tile=(16, 24, 24),
                                              overlap=24, **FP32))
        assert z0 == 36
        np.testing.assert_allclose(slab, full[36:45], rtol=0, atol=1e-5 * vol.std())


def test_resampled_preview_refuses_a_plan_for_another_shape_and_a_stack_for_a_3d_model(rng, identity_model):
    lm = _tiny2d(10.0)
    stack = rng.normal(size=(3, 40, 40)).astype(np.float32)
    plan = plan_resample(stack.shape, (2.5, 2.5, 2.5), lm, image_stack=True)
    with pytest.raises(ValueError, match="plan was made for"):
        drain(iter_denoise_preview(stack[:2], lm, 0, plan=plan, image_stack=True, **FP32))
    lm3 = LoadedModel.from_module(identity_model, name="id", ndim=3)
    lm3.card = {"voxel_size_A": 10.0}
    plan3 = plan_resample(stack.shape, (2.5, 2.5, 2.5), lm3, image_stack=True)
    with pytest.raises(ValueError):
        drain(iter_denoise_preview(stack, lm3, 0, plan=plan3, image_stack=True, **FP32))
