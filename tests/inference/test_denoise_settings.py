"""The Denoise widget's settings without Qt (napari_cryoden._widgets.denoise_settings): what the
widget's values mean for the core, and the attributes of its result layers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoden._widgets.denoise_settings import (
    HEADER_KEYS, contrast_limits, denoise_kwargs, denoised_layer_kwargs, is_image_stack, layer_source, model_ndim,
    output_scale, preview_layer_kwargs, resample_plan, slice_by_slice,
)
from napari_cryoden.inference.resample import plan_resample

CARD_2D = {"architecture": "N2NUNet2D", "voxel_size_A": 10.0}
CARD_3D = {"architecture": "UpsampleUnet48", "voxel_size_A": 10.0}


# ------------------------------------------------------------------------ moved from the Qt tests
def test_denoise_kwargs_auto_values_become_none():
    assert denoise_kwargs(tile=0, overlap=-1, device="auto", precision="auto") == {
        "tile": None, "overlap": None, "device": "auto", "precision": "auto",
    }


def test_denoise_kwargs_passes_explicit_values():
    assert denoise_kwargs(tile=64, overlap=0, device="cpu", precision="bf16") == {
        "tile": 64, "overlap": 0, "device": "cpu", "precision": "bf16",
    }


@pytest.mark.parametrize(
    "settings, word",
    [
        ({"tile": -8}, "tile"),
        ({"overlap": -2}, "overlap"),
        ({"device": "tpu"}, "device"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_denoise_kwargs_names_the_bad_setting(settings, word):
    base = {"tile": 0, "overlap": -1, "device": "auto", "precision": "auto"}
    with pytest.raises(ValueError, match=word):
        denoise_kwargs(**{**base, **settings})


def test_denoised_layer_kwargs_copy_geometry_and_contrast():
    kw = denoised_layer_kwargs(
        "tomo", scale=np.array([3.0, 2.0, 2.0]), translate=np.array([1.0, 0.0, -5.0]),
        contrast_limits=[-0.5, 2.5], model="tiny-test", source_path="/data/tomo.mrc",
    )
    assert kw == {
        "name": "tomo denoised",
        "scale": (3.0, 2.0, 2.0),
        "translate": (1.0, 0.0, -5.0),
        "contrast_limits": (-0.5, 2.5),
        "metadata": {"denoised_from": "tomo", "model": "tiny-test", "source_path": "/data/tomo.mrc"},
    }
    assert "source_path" not in denoised_layer_kwargs(
        "x", scale=(1, 1), translate=(0, 0), contrast_limits=(0, 1), model="m"
    )["metadata"]


def test_preview_layer_kwargs_shift_the_slab():
    kw = preview_layer_kwargs("t", scale=(2, 1, 1), translate=(10, 5, 0), contrast_limits=(0, 1), model="m",
                              z_start=4, slab_ndim=3)
    assert kw["translate"] == (18.0, 5.0, 0.0) and kw["name"] == "t preview"
    kw = preview_layer_kwargs("t", scale=(2, 1), translate=(10, 5), contrast_limits=(0, 1), model="m",
                              z_start=0, slab_ndim=2)
    assert kw["translate"] == (10.0, 5.0)



def test_denoised_layer_kwargs_keep_the_header_and_record_the_voxel_size():
    meta = {"header": {"nx": 4}, "extended_header_bytes": b"FEI1", "path": "/data/a.mrc", "other": 1}
    kw = denoised_layer_kwargs("a", scale=(5, 5), translate=(0, 0), contrast_limits=(0, 1), model="m",
                               input_metadata=meta, voxel_size_known=False)
    assert {k: kw["metadata"][k] for k in HEADER_KEYS} == {"header": {"nx": 4}, "extended_header_bytes": b"FEI1"}
    assert kw["metadata"]["voxel_size_known"] is False and "other" not in kw["metadata"]
    bare = denoised_layer_kwargs("a", scale=(5, 5), translate=(0, 0), contrast_limits=(0, 1), model="m")
    assert set(bare["metadata"]) == {"denoised_from", "model"}


def test_contrast_limits_of_a_slab_and_of_degenerate_data():
    vol = np.zeros((40, 8, 8), np.float32)
    vol[20] = np.linspace(0, 1, 64).reshape(8, 8)
    vol[0] = 1000.0  # outside the central slab: not counted
    lo, hi = contrast_limits(vol, slab=2)
    assert 0.0 <= lo < hi <= 1.0
    assert contrast_limits(np.full((4, 4), 3.0)) == (3.0, 4.0)
    assert contrast_limits(np.full((4, 4), np.nan)) == (0.0, 1.0)


def test_layer_source_and_image_stacks():
    assert layer_source({"path": "/d/p.mrcs", "source_path": "/d/q.mrc"}) == "/d/p.mrcs"
    assert layer_source({"source_path": "/d/q.mrc"}) == "/d/q.mrc"
    assert layer_source({}) is None and layer_source(None) is None
    assert is_image_stack({"path": "/d/p.mrcs.gz"}) and is_image_stack({"source_path": "/d/p.mrcs"})
    assert not is_image_stack({"path": "/d/t.mrc"}) and not is_image_stack({})


def test_model_ndim_and_slice_by_slice():
    assert model_ndim(CARD_2D) == 2 and model_ndim(CARD_3D) == 3
    assert model_ndim({"architecture": "unknown"}) is None and model_ndim(None) is None
    assert slice_by_slice(2, 3)  # a 2D model and a tomogram
    assert not slice_by_slice(2, 3, image_stack=True)  # a stack is slice by slice by nature
    assert not slice_by_slice(3, 3) and not slice_by_slice(2, 2) and not slice_by_slice(None, 3)


def test_resample_plan_from_the_layer_and_the_boxes():
    plan = resample_plan((3, 96, 80), (2.5, 2.5, 2.5), {"path": "s.mrcs"}, CARD_2D)
    assert plan == plan_resample((3, 96, 80), (2.5, 2.5, 2.5), _Model(CARD_2D, 2), image_stack=True)
    assert plan.model_shape == (3, 24, 20) and plan.describe("layer") == "layer 2.5 Å → model 10 Å, binned ×4"
    # The pixel size box overrides the scale (in Y and X; Z too for a tomogram and a 3D model).
    typed = resample_plan((16, 40, 40), (1.0, 1.0, 1.0), {"voxel_size_known": False}, CARD_3D, pixel_size=5.0)
    assert typed.known and typed.input_voxel_size == (5.0, 5.0, 5.0) and typed.model_shape == (8, 20, 20)
    unknown = resample_plan((16, 40, 40), (5.0, 5.0, 5.0), {"voxel_size_known": False}, CARD_3D)
    assert not unknown.known and not unknown.resampled
    binned = resample_plan((96, 80), (2.5, 2.5), None, CARD_2D, mode="binned")
    assert binned.output_shape == (24, 20)
    assert resample_plan((96, 80), (2.5, 2.5), None, None) is None
    assert resample_plan((96, 80), (2.5, 2.5), None, {"architecture": "unknown"}) is None
    with pytest.raises(ValueError, match="resample must be one of"):
        resample_plan((96, 80), (2.5, 2.5), None, CARD_2D, mode="bin")
    with pytest.raises(ValueError, match="voxel_size must be a positive number"):
        resample_plan((96, 80), (2.5, 2.5), None, CARD_2D, pixel_size=float("nan"))


def test_output_scale_is_the_plan_s_when_known():
    binned = resample_plan((96, 80), (2.5, 2.5), None, CARD_2D, mode="binned")
    assert output_scale((2.5, 2.5), binned) == pytest.approx((10.0, 10.0))
    auto = resample_plan((96, 80), (2.5, 2.5), None, CARD_2D)
    assert output_scale((2.5, 2.5), auto) == (2.5, 2.5)
    unknown = resample_plan((96, 80), (1.0, 1.0), None, CARD_2D)  # the 1 Å placeholder
    assert output_scale((1.0, 1.0), unknown) == (1.0, 1.0) and output_scale((3.0, 3.0), None) == (3.0, 3.0)


class _Model:
    def __init__(self, card, ndim):
        self.card, self.ndim = card, ndim
