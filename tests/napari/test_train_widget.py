"""The Train / fine-tune dock widget: pure helpers, a short Noise2Noise run, cancel + save, bad settings."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_cryoden._widgets.denoise import DenoiseWidget
from napari.qt.threading import GeneratorWorker

from napari_cryoden._widgets.train import SCRATCH, TrainWidget, _Note, _PreviewImage, _train_job
from napari_cryoden.training.finetune import FineTuneResult, TrainEvent, default_val_slab
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


def test_the_worker_iterates_iter_fine_tune_and_yields_its_events(viewer_model, qtbot, tiny_model_dir, rng,
                                                                  error_notifications):
    """The training job is a generator: the TrainEvents of iter_fine_tune, the previews made from its
    PreviewWeights in the training thread, then the FineTuneResult; the widget runs it in a
    GeneratorWorker whose yielded signal carries those events to the GUI thread."""
    viewer = viewer_model
    _add_halves(viewer, rng)
    widget = _widget(viewer, qtbot, start="tiny-test", steps=2, val_every=1, preview_every=1)
    viewer.dims.set_current_step(0, 5)
    run = widget._make_run()
    job = _train_job(run)
    yielded = []
    while True:
        try:
            yielded.append(next(job))
        except StopIteration as stop:
            result = stop.value
            break
    reports = [e for e in yielded if isinstance(e, TrainEvent)]
    previews = [e for e in yielded if isinstance(e, _PreviewImage)]
    assert [e.step for e in reports] == [1, 2] and all(e.val_loss is not None for e in reports)
    assert [(p.z, p.step, p.image.shape) for p in previews] == [(5, 1, SHAPE[1:]), (5, 2, SHAPE[1:])]
    assert isinstance(result, FineTuneResult) and result.steps_done == 2 and result.history == reports
    assert run.step == 2

    seen = []
    widget.run()
    assert isinstance(widget.worker, GeneratorWorker)
    widget.worker.yielded.connect(seen.append)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert error_notifications == []
    assert [e.step for e in seen if isinstance(e, TrainEvent)] == [1, 2]
    assert list(widget.train_line.get_data()[0]) == [1, 2]
    assert viewer.layers["lamella-n2n preview"].metadata["step"] == 2


def test_a_failed_preview_is_switched_off_with_one_warning(viewer_model, qtbot, tiny_model_dir, rng,
                                                           error_notifications):
    viewer = viewer_model
    _add_halves(viewer, rng)
    widget = _widget(viewer, qtbot, start="tiny-test", steps=2, val_every=1, preview_every=1)
    run = widget._make_run()
    run.ndim = 2  # a 3D network asked for a 2D preview: preview_slice fails
    yielded = list(_train_job(run))
    notes = [e for e in yielded if isinstance(e, _Note)]
    assert len(notes) == 1 and notes[0].message.startswith("preview failed and is switched off for this run")
    assert not any(isinstance(e, _PreviewImage) for e in yielded) and run.preview_failed
    assert [e.step for e in yielded if isinstance(e, TrainEvent)] == [1, 2]  # training went on
    assert error_notifications == []


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
