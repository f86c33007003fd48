"""Fourier resampling to the model's voxel size (issue 21): the operation, the plan, the wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import corr, drain

from napari_cryoden.inference import resample as rs
from napari_cryoden.inference.resample import (
    ResamplePlan, fourier_resample, iter_denoise_resampled, plan_resample, voxel_size_known,
)
from napari_cryoden.models import LoadedModel


def _cosines(n: int, coefs) -> np.ndarray:
    """sum_k a_k cos(pi k (i + 1/2) / n), i < n: a band-limited signal sampled at pixel centres."""
    i = np.arange(n) + 0.5
    return sum(a * np.cos(np.pi * k * i / n) for k, a in enumerate(coefs))


@pytest.mark.parametrize("n, m", [(96, 40), (41, 17), (30, 64)])
def test_band_limited_signal_is_resampled_exactly(n, m, rng):
    """A cosine series below the smaller grid's band limit, sampled at the centres of n pixels,
    becomes the same series sampled at the centres of m pixels over the same length."""
    a, b = rng.normal(size=min(n, m) - 1), rng.normal(size=min(n, m) - 1)
    image = (_cosines(n, a)[:, None] * _cosines(n, b)[None, :]).astype(np.float32)
    expected = _cosines(m, a)[:, None] * _cosines(m, b)[None, :]
    np.testing.assert_allclose(fourier_resample(image, (m, m)), expected, atol=2e-4 * np.abs(expected).max())


def test_borders_do_not_ring(rng):
    """A ramp (left and right borders far apart) binned and padded back stays a ramp: a plain FFT
    would join its ends and ring along both borders."""
    ramp = np.tile(np.linspace(0, 100, 200, dtype=np.float32), (50, 1))
    back = fourier_resample(fourier_resample(ramp, (50, 25)), ramp.shape)
    assert np.abs(back - ramp).max() < 2.0  # FFT resampling (scipy.signal.resample) is off by 44


@pytest.mark.parametrize("small, big", [((20, 33, 32), (40, 64, 64)), ((7, 12, 13), (7, 31, 30)), ((17, 16), (64, 64)),
                                        ((5, 8, 9), (11, 16, 18))])
def test_crop_undoes_pad_and_keeps_the_mean(rng, small, big):
    y = rng.normal(size=small).astype(np.float32)
    padded = fourier_resample(y, big)
    assert padded.shape == big and padded.dtype == np.float32
    assert padded.mean() == pytest.approx(y.mean(), abs=1e-6)
    np.testing.assert_allclose(fourier_resample(padded, small), y, atol=2e-6)
    x = rng.normal(size=big).astype(np.float32)
    assert fourier_resample(x, small).mean() == pytest.approx(x.mean(), abs=1e-6)


def test_streamed_slab_by_slab_equals_whole(rng, tmp_path, monkeypatch):
    x = rng.normal(size=(12, 30, 28)).astype(np.float32)
    path = tmp_path / "x.raw"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    whole_down, whole_up = fourier_resample(x, (6, 11, 13)), fourier_resample(x, (20, 45, 40))
    monkeypatch.setattr(rs, "SLAB_BYTES", 4 * 30 * 28)  # one slice per slab
    out = np.memmap(tmp_path / "o.raw", dtype=np.float32, mode="w+", shape=(6, 11, 13))
    assert fourier_resample(mm, (6, 11, 13), out=out) is out
    np.testing.assert_allclose(out, whole_down, atol=1e-6)
    np.testing.assert_allclose(fourier_resample(mm, (20, 45, 40)), whole_up, atol=1e-6)


def test_nonfinite_voxels_are_filled_before_the_transform(rng):
    x = rng.normal(size=(40, 40)).astype(np.float32)
    x[3, 4] = np.nan
    assert np.isfinite(fourier_resample(x, (20, 20), fill=0.0)).all()


def test_bad_shapes_are_refused(rng):
    with pytest.raises(ValueError, match="does not fit"):
        fourier_resample(rng.normal(size=(4, 4)), (4,))
    with pytest.raises(ValueError, match="lengths >= 1"):
        fourier_resample(rng.normal(size=(4, 4)), (0, 4))


# ------------------------------------------------------------------------------------ plan


def _model(ndim: int, voxel: float | None) -> LoadedModel:
    import torch

    return LoadedModel(name=f"m{ndim}d", module=torch.nn.Identity(), card={"voxel_size_A": voxel}, ndim=ndim)


@pytest.mark.parametrize("voxel, known", [((0.0, 0.0), False), ((-1.0, -1.0), False), ((math.nan, 1.3), False),
                                          ((1.0, 1.0), False), ((1.0, 1.3), True), ((5.0, 5.0), True)])
def test_unknown_voxel_sizes(voxel, known):
    assert voxel_size_known(voxel) is known


def test_micrograph_is_binned_to_the_model():
    plan = plan_resample((4096, 4096), (0.667, 0.667), _model(2, 5.0))
    assert plan.resampled and plan.model_shape == (546, 546) and plan.output_shape == (4096, 4096)
    assert plan.factor == pytest.approx(7.5, rel=1e-3) and plan.axes == (0, 1)
    assert plan.model_voxel_size == pytest.approx((5.0, 5.0), rel=1e-3)
    assert plan.describe() == "input 0.667 Å → model 5 Å, binned ×7.5"
    assert plan.notes == ()
    binned = plan_resample((4096, 4096), (0.667, 0.667), _model(2, 5.0), mode="binned")
    assert binned.output_shape == (546, 546) and binned.output_voxel_size == pytest.approx((5.0, 5.0), rel=1e-3)


@pytest.mark.parametrize("voxel, resampled", [(3.99, True), (4.01, False), (5.0, False), (5.99, False), (6.01, True)])
def test_tolerance_is_20_percent(voxel, resampled):
    assert plan_resample((100, 100), (voxel, voxel), _model(2, 5.0)).resampled is resampled


def test_stack_with_a_2d_model_keeps_its_image_axis_and_a_3d_model_resamples_z():
    stack = plan_resample((220, 64, 64), (1.0, 2.5, 2.5), _model(2, 5.0), image_stack=True)
    assert stack.model_shape == (220, 32, 32) and stack.axes == (1, 2)
    tomo = plan_resample((40, 200, 200), (5.0, 5.0, 5.0), _model(3, 10.0))
    assert tomo.model_shape == (20, 100, 100) and tomo.axes == (0, 1, 2)


def test_unknown_off_and_coarser_inputs_get_one_note_each():
    unknown = plan_resample((200, 200), (1.0, 1.0), _model(2, 5.0), known=False)
    assert not unknown.resampled and not unknown.known
    (note,) = unknown.notes
    assert "no usable pixel size" in note and "--voxel-size" in note and "\n" not in note
    off = plan_resample((200, 200), (0.667, 0.667), _model(2, 5.0), mode="off")
    assert not off.resampled and "resampling is off" in off.notes[0]
    coarse = plan_resample((100, 100), (10.0, 10.0), _model(2, 5.0))
    assert coarse.model_shape == (200, 200) and "up-sampled" in coarse.notes[0] and "up-sampled ×2" in coarse.describe()
    assert not plan_resample((100, 100), (0.5, 0.5), _model(2, None)).resampled  # no voxel size on the card
    with pytest.raises(ValueError, match="resample must be one of auto, off, binned"):
        plan_resample((4, 4), (1, 1), _model(2, 5.0), mode="bin")


# ------------------------------------------------------------------------------------ wrapper


def test_wrapper_denoises_on_the_model_grid_and_pads_back(rng, identity_model):
    lm = LoadedModel.from_module(identity_model, name="id", ndim=3)
    lm.card = {"voxel_size_A": 10.0}
    vol = rng.normal(size=(16, 48, 40)).astype(np.float32)
    plan = plan_resample(vol.shape, (5.0, 5.0, 5.0), lm)
    assert plan.model_shape == (8, 24, 20)
    info: dict = {}
    out = drain(iter_denoise_resampled(vol, lm, plan, device="cpu", precision="fp32", info=info))
    assert out.shape == vol.shape and out.dtype == np.float32
    # An identity network: the result is the input low-passed to the model's Nyquist.
    np.testing.assert_allclose(out, fourier_resample(fourier_resample(vol, (8, 24, 20)), vol.shape), atol=1e-4)
    assert info["resample"]["model_shape"] == (8, 24, 20) and info["tiles"] >= 1
    binned = plan_resample(vol.shape, (5.0, 5.0, 5.0), lm, mode="binned")
    small = drain(iter_denoise_resampled(vol, lm, binned, device="cpu", precision="fp32"))
    assert small.shape == (8, 24, 20)
    assert corr(fourier_resample(out, (8, 24, 20)), small) > 0.999


def test_wrapper_replaces_nonfinite_input_and_counts_it(rng, identity_model):
    lm = LoadedModel.from_module(identity_model, name="id", ndim=2)
    lm.card = {"voxel_size_A": 4.0}
    img = rng.normal(size=(64, 64)).astype(np.float32)
    img[5, 5] = np.inf
    before = img.copy()
    plan = plan_resample(img.shape, (2.0, 2.0), lm)
    info: dict = {}
    out = drain(iter_denoise_resampled(img, lm, plan, device="cpu", precision="fp32", info=info))
    assert np.isfinite(out).all() and info["nonfinite"] == 1 and info["nonfinite_action"] == "replace"
    np.testing.assert_array_equal(img, before)  # the input is never written
    with pytest.raises(ValueError, match="1 NaN/Inf voxels"):
        drain(iter_denoise_resampled(img, lm, plan, device="cpu", nonfinite="refuse"))
    with pytest.raises(ValueError, match="plan was made for"):
        drain(iter_denoise_resampled(img[:10], lm, plan, device="cpu"))


def test_plan_is_a_frozen_value():
    plan = plan_resample((10, 10), (5.0, 5.0), _model(2, 5.0))
    assert isinstance(plan, ResamplePlan) and not plan.resampled and plan.factor == 1.0
    with pytest.raises(AttributeError):
        plan.mode = "off"  # type: ignore[misc]
