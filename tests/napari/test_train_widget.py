"""The Train / fine-tune dock widget: pure helpers, a short Noise2Noise run, cancel + save, bad settings."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_cryoden._widgets.denoise import DenoiseWidget
from napari_cryoden._widgets.train import (
    SCRATCH, TrainWidget, card_extra, check_model_name, default_val_slab, finetune_config, input_roles,
    parse_learning_rate, preview_slice, scratch_arch_kwargs, suggest_name, val_slab_rectangles,
    voxel_size_A,
)
from napari_cryoden.inference import denoise
from napari_cryoden.models import DEFAULT_MODEL, available_models, load_model

pytestmark = [
    pytest.mark.qt,
    # The widget must not lean on napari API that is on its way out.
    pytest.mark.filterwarnings("error::DeprecationWarning:napari_cryoden"),
    pytest.mark.filterwarnings("error::FutureWarning:napari_cryoden"),
]

TIMEOUT_MS = 120_000
SHAPE = (32, 32, 32)
VOXEL = 10.0


# ------------------------------------------------------------------------------ pure helpers
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
        check_model_name(name, existing=["tiny-test"])


def test_check_and_suggest_names(tiny_model_dir):
    assert check_model_name(" lamella_3.v2 ", ["tiny-test"]) == "lamella_3.v2"
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


# ------------------------------------------------------------------------------ widget helpers
def _volume(rng, shape=SHAPE):
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    clean = (np.sin(z / 3.0) * np.cos(y / 4.0) + x / shape[2]).astype(np.float32)
    return clean, (clean + 0.5 * rng.normal(size=shape)).astype(np.float32), \
        (clean + 0.5 * rng.normal(size=shape)).astype(np.float32)


def _add_halves(viewer, rng, shape=SHAPE):
    clean, even, odd = _volume(rng, shape)
    viewer.add_image(even, name="tomo even", scale=(VOXEL,) * len(shape))
    viewer.add_image(odd, name="tomo odd", scale=(VOXEL,) * len(shape))
    viewer.add_image(clean, name="tomo clean", scale=(VOXEL,) * len(shape))
    return viewer.layers["tomo even"], viewer.layers["tomo odd"]


def _widget(viewer, qtbot, *, start="tiny-test", steps=4, val_every=2, preview_every=0, name="lamella-n2n"):
    widget = TrainWidget(viewer)
    qtbot.addWidget(widget)
    widget.mode.value = "n2n"
    if "tomo even" in viewer.layers:
        widget.source.value = viewer.layers["tomo even"]
        widget.target.value = viewer.layers["tomo odd"]
    widget.start.value = start
    widget.architecture.value = "UpsampleUnet48"
    widget.channels.value = 4
    widget.patch.value = 16
    widget.batch.value = 2
    widget.steps.value = steps
    widget.lr.value = "1e-3"
    widget.val_start.value, widget.val_stop.value = 16, 32
    widget.val_every.value = val_every
    widget.preview_every.value = preview_every
    widget.device.value = "cpu"
    widget.precision.value = "fp32"
    widget.name.value = name
    return widget


# ------------------------------------------------------------------------------ widget
def test_pickers_follow_the_mode_and_the_slab_layer_follows_the_settings(viewer_model, qtbot, tiny_model_dir, rng):
    viewer = viewer_model
    even, odd = _add_halves(viewer, rng)
    widget = TrainWidget(viewer)
    qtbot.addWidget(widget)

    # inputs per mode
    assert widget.source.label == "even half" and widget.target.label == "odd half"
    assert widget.source.value is even and widget.target.value is odd  # two different layers offered
    assert widget.input_visibility()["target"] and not widget.input_visibility()["adversarial"]
    widget.mode.value = "supervised"
    assert (widget.source.label, widget.target.label) == ("noisy", "clean reference")
    assert widget.input_visibility()["adversarial"]
    widget.mode.value = "n2v"
    assert widget.source.label == "volume"
    assert not widget.input_visibility()["target"] and not widget.input_visibility()["adversarial"]
    # starting point: the registry's models, or a new network of a chosen architecture
    assert "tiny-test" in widget.start.choices and SCRATCH in widget.start.choices
    widget.start.value = "tiny-test"
    assert not widget.input_visibility()["architecture"]
    widget.start.value = SCRATCH
    assert widget.input_visibility()["architecture"] and widget.input_visibility()["channels"]
    widget.refresh_models()
    assert widget.start.value == SCRATCH  # the user's choice survives a refresh

    # the validation slab: defaults from the source layer, drawn as frames, kept in step
    # (rows of Y, the longest in-plane axis, not Z; the automatic patch for 32^3 is 16)
    assert widget.patch.value == 0 and widget._val_axis == 1
    assert (widget.val_start.value, widget.val_stop.value) == default_val_slab(SHAPE[1], 16) == (16, 32)
    widget.patch.value = 8  # the default slab follows the patch size
    assert (widget.val_start.value, widget.val_stop.value) == default_val_slab(SHAPE[1], 8) == (24, 32)
    slab = viewer.layers["validation slab"]
    assert viewer.layers.selection.active is not slab  # adding it did not steal the selection
    np.testing.assert_allclose(slab.scale, even.scale)
    widget.val_start.value, widget.val_stop.value = 20, 24
    assert sorted(int(r[0, 0]) for r in slab.data) == list(range(SHAPE[0]))  # a frame on every Z slice...
    assert all(r[:, 1].min() == 19.5 and r[:, 1].max() == 23.5 for r in slab.data)  # ...around rows 20-23
    assert slab.metadata["slab"] == (20, 24)
    assert slab.text.visible
    viewer.dims.ndisplay = 3  # the stacked frames draw a box; their labels would pile up
    assert not slab.text.visible
    viewer.dims.ndisplay = 2
    assert slab.text.visible
    widget.patch.value = 24  # a user-chosen slab stays where it is
    assert (widget.val_start.value, widget.val_stop.value) == (20, 24)
    assert [layer.name for layer in widget.source.choices] == ["tomo even", "tomo odd", "tomo clean"]


def test_noise2noise_finetune_plots_previews_and_saves(viewer_model, qtbot, tiny_model_dir, rng, error_notifications):
    viewer = viewer_model
    even, _odd = _add_halves(viewer, rng)
    open_denoise = DenoiseWidget(viewer)  # already open: must list the new model without a restart
    qtbot.addWidget(open_denoise)
    widget = _widget(viewer, qtbot, start="tiny-test", steps=2, val_every=1, preview_every=2)
    viewer.dims.set_current_step(0, 9)
    assert widget._current_z(even) == 9

    widget.run()
    assert widget.is_running
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)

    assert error_notifications == []
    steps, losses = widget.train_line.get_data()
    assert list(steps) == [1, 2] and np.isfinite(losses).all()
    val_steps, val_losses = widget.val_line.get_data()
    assert list(val_steps) == [1, 2] and np.isfinite(val_losses).all()
    assert widget.progress_bar.value == widget.progress_bar.max == 2

    preview = viewer.layers["lamella-n2n preview"]
    assert preview.data.shape == SHAPE[1:] and np.isfinite(preview.data).all()
    assert preview.metadata["z"] == 9
    np.testing.assert_allclose(preview.scale, (VOXEL, VOXEL))
    assert preview not in [layer for _, layer in widget._image_choices()]  # never offered as training data

    assert widget.saved_path is not None and widget.saved_path.exists()
    card = available_models()["lamella-n2n"]
    assert card["parent"] == "tiny-test" and card["training"]["mode"] == "n2n"
    assert card["training"]["steps"] == 2 and card["training"]["val_slab"] == [16, 32]
    assert [d["layer"] for d in card["data"]["layers"]] == ["tomo even", "tomo odd"]
    assert card["data"]["layers"][0]["shape"] == list(SHAPE)
    assert card["voxel_size_A"] == VOXEL
    assert "lamella-n2n" in open_denoise.model.choices
    fresh = DenoiseWidget(viewer)
    qtbot.addWidget(fresh)
    assert "lamella-n2n" in fresh.model.choices
    assert "lamella-n2n" in widget.start.choices  # and it can be fine-tuned further
    assert widget.name.value != "lamella-n2n"  # a free name is proposed for the next run
    assert widget.train_button.enabled and not widget.cancel_button.enabled and not widget.save_button.enabled


def test_cancel_keeps_a_usable_checkpoint(viewer_model, qtbot, tiny_model_dir, rng, error_notifications):
    viewer = viewer_model
    _add_halves(viewer, rng)
    widget = _widget(viewer, qtbot, start=SCRATCH, steps=100_000, val_every=1, name="from-scratch")
    widget.run()
    qtbot.waitUntil(lambda: len(widget.val_line.get_data()[0]) >= 2, timeout=TIMEOUT_MS)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)

    assert error_notifications == []
    assert widget.result is not None and widget.result.cancelled
    assert widget.result.steps_done < 100_000
    assert widget.save_button.enabled and "from-scratch" not in available_models()
    widget.save_button.clicked.emit()

    assert error_notifications == []
    assert "from-scratch" in available_models()
    model = load_model("from-scratch")
    assert model.card["architecture"] == "UpsampleUnet48" and model.card["arch_kwargs"]["ch"] == 4
    vol = _volume(np.random.default_rng(5), (16, 24, 24))[1]
    out = denoise(vol, model, tile=16, overlap=8, device="cpu", precision="fp32")
    assert out.shape == vol.shape and np.isfinite(out).all()


@pytest.mark.parametrize(
    "change, word",
    [
        ("odd_shape", "shape"),
        ("big_patch", "patch"),
        ("empty_name", "enter a name"),
        ("used_name", "already exists"),
        ("same_layer", "two different layers"),
        ("bad_lr", "learning rate"),
        ("2d_data", "2D"),
        ("2d_network", "2D"),
    ],
)
def test_bad_settings_are_refused_before_starting(viewer_model, qtbot, tiny_model_dir, rng, error_notifications,
                                                  change, word):
    viewer = viewer_model
    even, odd = _add_halves(viewer, rng)
    widget = _widget(viewer, qtbot)
    if change == "odd_shape":
        viewer.add_image(_volume(rng, (32, 32, 24))[1], name="cropped odd")
        widget.target.value = viewer.layers["cropped odd"]
    elif change == "big_patch":
        widget.patch.value = 64
    elif change == "empty_name":
        widget.name.value = " "
    elif change == "used_name":
        widget.name.value = "tiny-test"
    elif change == "same_layer":
        widget.target.value = even
    elif change == "bad_lr":
        widget.lr.value = "fast"
    elif change == "2d_data":  # a 3D network on micrographs
        viewer.add_image(rng.normal(size=(64, 64)).astype(np.float32), name="mic even")
        viewer.add_image(rng.normal(size=(64, 64)).astype(np.float32), name="mic odd")
        widget.source.value, widget.target.value = viewer.layers["mic even"], viewer.layers["mic odd"]
        widget.start.value = SCRATCH
        widget.val_start.value, widget.val_stop.value = 48, 64
    elif change == "2d_network":  # a micrograph network on tomograms
        widget.start.value = SCRATCH
        widget.architecture.value = "N2NUNet2D"
        widget.patch.value = 32
        widget.val_start.value, widget.val_stop.value = 0, 32

    widget.run()

    assert not widget.is_running and widget.worker is None
    assert len(error_notifications) == 1, error_notifications
    assert word in error_notifications[0]
    assert word in widget.status.value
    assert widget.train_button.enabled


def test_settings_become_a_run_in_every_mode(viewer_model, qtbot, tiny_model_dir, rng, error_notifications):
    viewer = viewer_model
    even, odd = _add_halves(viewer, rng)
    widget = _widget(viewer, qtbot)
    widget.mode.value = "supervised"
    widget.source.value, widget.target.value = even, viewer.layers["tomo clean"]
    widget.loss.value, widget.adversarial.value = "l1", "wgangp"
    widget.rampdown.value, widget.max_grad_norm.value = 0.25, 2.0
    run = widget._make_run()
    assert (run.config.mode, run.config.loss, run.config.adversarial) == ("supervised", "l1", "wgangp")
    assert (run.config.rampdown, run.config.max_grad_norm) == (0.25, 2.0)
    assert run.target is viewer.layers["tomo clean"].data and run.model == "tiny-test" and run.architecture is None
    assert [d["role"] for d in run.extra["data"]["layers"]] == ["noisy", "clean reference"]

    widget.mode.value = "n2v"
    widget.start.value = SCRATCH
    widget.architecture.value = "Unet48"
    run = widget._make_run()
    assert run.target is None and run.config.mode == "n2v" and run.config.adversarial == "none"
    assert (run.model, run.architecture, run.arch_kwargs) == (None, "Unet48", {"ch": 4, "final_activation": "identity"})
    assert run.config.val_slab == (16, 32) and run.ndim == 3
    assert [d["role"] for d in run.extra["data"]["layers"]] == ["volume"]
    assert error_notifications == [] and not widget.is_running


def test_plugin_widget_stops_training_when_the_viewer_closes(make_napari_viewer, qtbot, tiny_model_dir, rng,
                                                             error_notifications):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-cryoden", "Train / fine-tune")
    assert isinstance(widget, TrainWidget)
    _add_halves(viewer, rng)
    widget.source.value, widget.target.value = viewer.layers["tomo even"], viewer.layers["tomo odd"]
    for attr, value in (("start", SCRATCH), ("channels", 4), ("patch", 16), ("batch", 1), ("steps", 100_000),
                        ("val_every", 1), ("device", "cpu"), ("precision", "fp32"), ("name", "never-saved")):
        getattr(widget, attr).value = value
    widget.val_start.value, widget.val_stop.value = 16, 32
    widget.run()
    run, worker = widget._run, widget.worker
    finished = threading.Event()
    worker.finished.connect(finished.set)
    qtbot.waitUntil(lambda: run.step >= 1, timeout=TIMEOUT_MS)

    viewer.close()

    assert run.cancel.is_set() and run.detached
    qtbot.waitUntil(finished.is_set, timeout=TIMEOUT_MS)
    assert run.step < 100_000
    assert "never-saved" not in available_models()
    assert error_notifications == []
    assert torch.is_grad_enabled()


# ------------------------------------------------------------------ defaults that fit the data (issue 21)
def test_val_slab_rectangles_across_rows_or_columns():
    rects = val_slab_rectangles((3, 20, 30), (12, 20), axis=1)  # rows 12-19 on each of the 3 slices
    assert [int(r[0, 0]) for r in rects] == [0, 1, 2]
    np.testing.assert_allclose(rects[1][:, 1:], [[11.5, -0.5], [11.5, 29.5], [19.5, 29.5], [19.5, -0.5]])
    [cols] = val_slab_rectangles((40, 48), (30, 48), axis=1)
    np.testing.assert_allclose(cols, [[-0.5, 29.5], [39.5, 29.5], [39.5, 47.5], [-0.5, 47.5]])


def test_finetune_config_patch_0_is_automatic_and_keeps_the_axis():
    cfg = finetune_config(mode="n2v", patch=0, batch=1, steps=1, lr=1e-4, val_slab=(10, 20), val_every=1, val_axis=2)
    assert cfg.patch is None and cfg.val_axis == 2 and cfg.val_slab == (10, 20)


@pytest.mark.skipif(DEFAULT_MODEL not in available_models(), reason="default model not built")
def test_thin_tomogram_trains_with_the_widget_defaults(viewer_model, qtbot, rng, error_notifications,
                                                      tiny_model_dir):
    """A 36-slice tomogram: the old defaults (a 48-slice slab along Z) refused it. Only the steps
    are set (to keep the test short); patch, slab, start model and the rest are the defaults."""
    viewer = viewer_model
    viewer.add_image(_volume(rng, (36, 96, 64))[1], name="thin", scale=(VOXEL,) * 3)
    widget = TrainWidget(viewer)
    qtbot.addWidget(widget)
    widget.mode.value = "n2v"
    widget.source.value = viewer.layers["thin"]
    assert widget.start.value == DEFAULT_MODEL and widget.patch.value == 0
    assert widget._val_axis == 1 and (widget.val_start.value, widget.val_stop.value) == (64, 96)  # patch 32
    widget.steps.value, widget.val_every.value, widget.preview_every.value = 1, 1, 0
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert error_notifications == []
    assert widget.saved_path is not None and widget.saved_path.parent == tiny_model_dir  # saved when done
    card = available_models()[widget.saved_path.stem]
    assert card["parent"] == DEFAULT_MODEL and card["training"]["patch"] == 32
    assert card["training"]["val_slab"] == [64, 96]


@pytest.mark.skipif("n2n-unet-2d" not in available_models(), reason="2D default model not built")
def test_micrograph_starts_from_the_2d_default(viewer_model, qtbot, rng, tiny_model_dir):
    viewer = viewer_model
    viewer.add_image(rng.normal(size=(512, 512)).astype(np.float32), name="mic")
    widget = TrainWidget(viewer)
    qtbot.addWidget(widget)
    widget.mode.value = "n2v"
    widget.source.value = viewer.layers["mic"]
    assert widget.start.value == "n2n-unet-2d"
    assert (widget.val_start.value, widget.val_stop.value) == (448, 512)  # patch 64, a multiple of 32
    widget.start.value = SCRATCH  # the user's choice stays when the data changes
    viewer.add_image(rng.normal(size=(16, 64, 64)).astype(np.float32), name="tomo")
    widget.source.value = viewer.layers["tomo"]
    assert widget.start.value == SCRATCH


def test_save_uses_the_name_set_when_training_started_and_the_plot_starts_empty(viewer_model, qtbot, tiny_model_dir,
                                                                                 rng):
    viewer = viewer_model
    _add_halves(viewer, rng)
    widget = _widget(viewer, qtbot, start="tiny-test", steps=2, val_every=1, name="first-name")
    assert not widget.axes.get_visible()  # no made-up axes before the first loss
    widget.run()
    widget.name.value = "typed-while-training"
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert widget.axes.get_visible()
    assert widget.saved_path is not None and widget.saved_path.stem == "first-name"
