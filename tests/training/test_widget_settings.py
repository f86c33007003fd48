"""The Train widget's settings (``_widgets/train_settings.py``), tested without Qt or napari.

The widget itself is tested in ``tests/napari/test_train_widget.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoden._widgets.train_settings import (
    card_extra, check_save_name, default_val_slab, finetune_config, input_roles, parse_learning_rate, preview_slice,
    scratch_arch_kwargs, suggest_name, val_slab_rectangles, voxel_size_A,
)
from napari_cryoden.inference import denoise


def test_input_roles_per_mode():
    assert input_roles("n2n") == ("even half", "odd half")
    assert input_roles("supervised") == ("noisy", "clean reference")
    assert input_roles("n2v") == ("volume", None)
    with pytest.raises(ValueError, match="mode"):
        input_roles("care")


def test_finetune_config_maps_the_settings():
    cfg = finetune_config(mode="supervised", loss="l1", adversarial="wgangp", patch=16, batch=2, steps=7,
                          lr="3e-4", val_slab=(16, 32), val_every=2, preview_every=3, device="cpu",
                          precision="fp32")
    assert (cfg.mode, cfg.loss, cfg.adversarial, cfg.patch, cfg.batch, cfg.steps) == ("supervised", "l1", "wgangp", 16, 2, 7)
    assert cfg.lr == pytest.approx(3e-4)
    assert (cfg.val_slab, cfg.val_every, cfg.preview_every, cfg.device, cfg.precision) == ((16, 32), 2, 3, "cpu", "fp32")
    # the adversarial term belongs to supervised training only
    assert finetune_config(mode="n2v", adversarial="gan", patch=16, batch=1, steps=1, lr=1e-4, val_slab=None,
                           val_every=1).adversarial == "none"
    # no ramp-down and no clipping unless asked; 0 in the clip box means off
    assert (cfg.rampdown, cfg.max_grad_norm) == (0.0, None)
    ramped = finetune_config(mode="n2n", patch=16, batch=1, steps=10, lr=1e-4, val_slab=None, val_every=1,
                             rampdown=0.3, max_grad_norm=0.0)
    assert (ramped.rampdown, ramped.max_grad_norm) == (0.3, None)
    assert finetune_config(mode="n2n", patch=16, batch=1, steps=10, lr=1e-4, val_slab=None, val_every=1,
                           max_grad_norm=0.5).max_grad_norm == 0.5
    # about 200 training-loss reports per run, at least one per validation
    assert cfg.log_every == 1
    assert finetune_config(mode="n2n", patch=16, batch=1, steps=10_000, lr=1e-4, val_slab=None,
                           val_every=500).log_every == 50
    assert finetune_config(mode="n2n", patch=16, batch=1, steps=10_000, lr=1e-4, val_slab=None,
                           val_every=20).log_every == 20


@pytest.mark.parametrize("text", ["", "fast", "0", "-1e-3", "nan", "inf"])
def test_learning_rate_must_be_a_positive_number(text):
    with pytest.raises(ValueError, match="learning rate"):
        parse_learning_rate(text)


@pytest.mark.parametrize(
    "name, word",
    [("", "enter a name"), ("   ", "enter a name"), ("../evil", "letters"), ("a b", "letters"), ("-x", "starting"),
     ("x" * 101, "1-100"), ("tiny-test", "already exists")],
)
def test_check_model_name_refuses(name, word, tiny_model_dir):
    with pytest.raises(ValueError, match=word):
        check_save_name(name, existing=["tiny-test"])


def test_check_and_suggest_names(tiny_model_dir):
    assert check_save_name(" lamella_3.v2 ", ["tiny-test"]) == "lamella_3.v2"
    assert suggest_name("m", []) == "m"
    assert suggest_name("m", ["m", "m-2"]) == "m-3"


def test_scratch_arch_kwargs_keep_to_the_allowed_ones():
    assert scratch_arch_kwargs("UpsampleUnet48", 4) == {"ch": 4, "final_activation": "identity"}
    assert scratch_arch_kwargs("SimpleAutoEncoder", 4) == {"final_activation": "identity"}
    with pytest.raises(ValueError, match="architecture"):
        scratch_arch_kwargs("ResNet", 4)


def test_default_val_slab_is_the_last_slices():
    assert default_val_slab(200, 48) == (152, 200)
    assert default_val_slab(1000, 48) == (900, 1000)
    assert default_val_slab(20, 48) == (0, 20)


def test_val_slab_rectangles_frame_each_held_out_slice():
    rects = val_slab_rectangles((16, 20, 30), (12, 99))
    assert len(rects) == 4
    assert [r[0, 0] for r in rects] == [12.0, 13.0, 14.0, 15.0]
    np.testing.assert_array_equal(rects[0][:, 1:], [[-0.5, -0.5], [-0.5, 29.5], [19.5, 29.5], [19.5, -0.5]])
    assert val_slab_rectangles((16, 20, 30), (8, 8)) == []
    [rows] = val_slab_rectangles((40, 48), (30, 40))
    np.testing.assert_array_equal(rows, [[29.5, -0.5], [29.5, 47.5], [39.5, 47.5], [39.5, -0.5]])


def test_preview_slice_is_the_network_output_of_that_slice(rng, identity_model):
    vol = (rng.normal(size=(70, 20, 28)) * 3 + 5).astype(np.float32)
    identity_model.train()
    out = preview_slice(vol, identity_model, 40, ndim=3, context=8)
    assert out.shape == (20, 28) and out.dtype == np.float32
    np.testing.assert_allclose(out, vol[40], rtol=1e-5, atol=1e-5)
    assert identity_model.training  # the trainer's mode is restored


@pytest.mark.parametrize("architecture, shape, z", [("UpsampleUnet48", (40, 24, 32), 17), ("N2NUNet2D", (64, 64), 0)])
def test_preview_slice_equals_that_slice_of_the_full_result(rng, architecture, shape, z):
    from napari_cryoden.models import ARCHITECTURES, LoadedModel, build

    torch.manual_seed(0)
    net = build(architecture, ch=4).eval()
    ndim = ARCHITECTURES[architecture].ndim
    vol = (rng.normal(size=shape) * 2 + 7).astype(np.float32)
    full = denoise(vol, LoadedModel(name="m", module=net, card={"overlap": 24}, stride=net.stride, ndim=ndim),
                   device="cpu", precision="fp32")
    out = preview_slice(vol, net, z, ndim=ndim, context=24)
    np.testing.assert_allclose(out, full[z] if ndim == 3 else full, rtol=1e-4, atol=1e-4)


def test_card_extra_records_layers_shapes_and_voxel_size():
    extra = card_extra("supervised", [
        ("noisy", "tomo", (16, 32, 32), (12.0, 10.0, 10.0), {"path": "/data/tomo.mrc", "voxel_size_known": True}),
        ("clean reference", "clean", (16, 32, 32), (12.0, 10.0, 10.0), None),
    ])
    assert extra["voxel_size_A"] == 10.0  # in-plane: a number, as the model card wants
    assert extra["data"]["mode"] == "supervised"
    assert extra["data"]["layers"][0] == {"role": "noisy", "layer": "tomo", "shape": [16, 32, 32],
                                          "voxel_size_A": [12.0, 10.0, 10.0], "path": "/data/tomo.mrc"}
    assert extra["data"]["layers"][1]["layer"] == "clean"
    unknown = card_extra("n2v", [("volume", "v", (8, 8), (1.0, 1.0), {"voxel_size_known": False})])
    assert "voxel_size_A" not in unknown and unknown["data"]["layers"][0]["voxel_size_A"] is None
    assert voxel_size_A((10.0, 10.0)) == 10.0
    assert voxel_size_A((1.0, 1.0, 1.0), {"voxel_size_known": False}) is None


def test_val_slab_rectangles_across_rows_or_columns():
    rects = val_slab_rectangles((3, 20, 30), (12, 20), axis=1)  # rows 12-19 on each of the 3 slices
    assert [int(r[0, 0]) for r in rects] == [0, 1, 2]
    np.testing.assert_allclose(rects[1][:, 1:], [[11.5, -0.5], [11.5, 29.5], [19.5, 29.5], [19.5, -0.5]])
    [cols] = val_slab_rectangles((40, 48), (30, 48), axis=1)
    np.testing.assert_allclose(cols, [[-0.5, 29.5], [39.5, 29.5], [39.5, 47.5], [-0.5, 47.5]])


def test_finetune_config_patch_0_is_automatic_and_keeps_the_axis():
    cfg = finetune_config(mode="n2v", patch=0, batch=1, steps=1, lr=1e-4, val_slab=(10, 20), val_every=1, val_axis=2)
    assert cfg.patch is None and cfg.val_axis == 2 and cfg.val_slab == (10, 20)


def test_card_voxel_size_is_one_answer_for_the_cli_and_the_widget():
    from napari_cryoden.training.finetune import card_voxel_size

    assert card_voxel_size((12.0, 10.0, 8.0)) == 9.0 == voxel_size_A((12.0, 10.0, 8.0))  # mean of Y and X
    assert card_voxel_size((5.0, 5.0)) == 5.0
    for bad in ((10.0, 0.0), (10.0, float("nan")), (-1.0, -1.0)):
        assert card_voxel_size(bad) is None and voxel_size_A(bad) is None
    assert card_voxel_size((10.0, 10.0), known=False) is None
    assert voxel_size_A((10.0, 10.0), {"voxel_size_known": False}) is None
