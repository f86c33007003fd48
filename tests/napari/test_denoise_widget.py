"""The Denoise dock widget: end-to-end runs, cancel, errors and the default model (its settings:
tests/inference/test_denoise_settings.py, without Qt)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari.utils import progress

import napari_cryoden._widgets.denoise as denoise_mod
from napari_cryoden._sample_data import make_sample_tomogram
from napari_cryoden._widgets.denoise import DenoiseWidget
from napari_cryoden.models import ARCHITECTURES, DEFAULT_MODEL, available_models

pytestmark = [
    pytest.mark.qt,
    # The widget must not lean on napari API that is on its way out.
    pytest.mark.filterwarnings("error::DeprecationWarning:napari_cryoden"),
    pytest.mark.filterwarnings("error::FutureWarning:napari_cryoden"),
]

NOISY = "noisy sample tomogram"
TIMEOUT_MS = 120_000


# ------------------------------------------------------------------------------ widget helpers
def _add_sample(viewer, shape=(16, 32, 32), seed=0):
    for data, kwargs, _ in make_sample_tomogram(seed=seed, shape=shape):
        viewer.add_image(data, **kwargs)
    return viewer.layers[NOISY]


def _widget(viewer, qtbot, model="tiny-test", tile=16, overlap=8):
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    widget.model.value = model
    widget.tile.value = tile
    widget.overlap.value = overlap
    widget.device.value = "cpu"
    widget.precision.value = "fp32"
    return widget


def _run_and_wait(widget, qtbot):
    widget.run()
    assert widget.is_running
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)


# ------------------------------------------------------------------------------ widget
def test_widget_lists_layers_and_models(viewer_model, qtbot, tiny_model_dir):
    viewer = viewer_model
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.image.choices == ()
    noisy = _add_sample(viewer)
    assert [layer.name for layer in widget.image.choices] == [NOISY, "clean sample tomogram"]
    viewer.add_points(np.zeros((1, 3)))  # not an image: not offered
    assert len(widget.image.choices) == 2
    noisy.name = "renamed"
    combo = widget.image.native
    assert sorted(combo.itemText(i) for i in range(combo.count())) == ["clean sample tomogram", "renamed"]

    assert "tiny-test" in widget.model.choices
    widget.model.value = "tiny-test"
    assert "untrained test network" in widget.model.tooltip


def test_widget_sees_new_user_models_when_shown(viewer_model, qtbot, tiny_model_dir):
    from napari_cryoden.models import UpsampleUnet48, save_model

    viewer = viewer_model
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    assert "tiny-fresh" not in widget.model.choices
    save_model(
        UpsampleUnet48(ch=4, final_activation="identity"), tiny_model_dir, "tiny-fresh",
        {"architecture": "UpsampleUnet48", "arch_kwargs": {"ch": 4, "final_activation": "identity"},
         "description": "saved while the viewer is open", "voxel_size_A": 10.0},
    )
    widget.show()
    qtbot.waitExposed(widget)
    assert "tiny-fresh" in widget.model.choices
    widget.model.value = "tiny-fresh"
    assert "saved while the viewer is open" in widget.model.tooltip
    (tiny_model_dir / "tiny-fresh.json").unlink()
    widget.refresh_button.clicked.emit()
    assert "tiny-fresh" not in widget.model.choices


def test_side_by_side_checkbox_follows_the_grid(viewer_model, qtbot):
    viewer = viewer_model
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    widget.side_by_side.value = True
    assert viewer.canvas.grid.enabled
    viewer.canvas.grid.enabled = False
    assert widget.side_by_side.value is False


def test_widget_denoises_sample_with_tiny_model(make_napari_viewer, qtbot, tiny_model_dir, error_notifications):
    viewer = make_napari_viewer()
    noisy = _add_sample(viewer)
    noisy.translate = (5.0, -10.0, 20.0)
    noisy.contrast_limits = (-0.2, 0.3)
    widget = _widget(viewer, qtbot)
    widget.image.value = noisy
    widget.side_by_side.value = True
    ticks = []
    widget.progress_bar.changed.connect(ticks.append)

    _run_and_wait(widget, qtbot)

    assert error_notifications == []
    out = viewer.layers[f"{NOISY} denoised"]
    assert out.data.shape == noisy.data.shape
    assert out.data.dtype == np.float32
    assert np.isfinite(out.data).all()
    np.testing.assert_allclose(out.scale, (10.0, 10.0, 10.0))
    np.testing.assert_allclose(out.translate, (5.0, -10.0, 20.0))
    # its own contrast limits (1st-99th percentile of a central slab), not the input's
    np.testing.assert_allclose(out.contrast_limits, denoise_mod.contrast_limits(out.data))
    assert tuple(out.contrast_limits) != (-0.2, 0.3)
    assert out.metadata["model"] == "tiny-test"
    assert viewer.canvas.grid.enabled
    assert widget.progress_bar.value == widget.progress_bar.max > 1
    assert ticks  # the bar moved while tiles were done
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_cancel_closes_the_core_generator_and_adds_nothing(viewer_model, qtbot, tiny_model_dir, monkeypatch):
    real_iter_denoise = denoise_mod.iter_denoise
    first_tile_done, release, core_closed = threading.Event(), threading.Event(), threading.Event()

    def gated_iter_denoise(volume, model, **kwargs):
        # The real core generator, held after its first tile until the test has pressed Cancel.
        core = real_iter_denoise(volume, model, **kwargs)
        try:
            yield next(core)
            yield next(core)
            first_tile_done.set()
            release.wait(30)
            yield from core
        finally:
            core.close()
            core_closed.set()

    monkeypatch.setattr(denoise_mod, "iter_denoise", gated_iter_denoise)
    viewer = viewer_model
    _add_sample(viewer)
    widget = _widget(viewer, qtbot)
    widget.run()
    qtbot.waitUntil(first_tile_done.is_set, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: widget.progress_bar.value == 1, timeout=TIMEOUT_MS)
    [activity] = [p for p in progress._all_instances if p.desc.startswith("Denoising")]
    assert (activity.n, activity.total) == (1, widget.progress_bar.max)
    widget.cancel_button.clicked.emit()
    release.set()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)

    assert core_closed.is_set()
    assert activity not in progress._all_instances
    assert [layer.name for layer in viewer.layers] == [NOISY, "clean sample tomogram"]
    assert widget.status.value == "cancelled"
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_2d_image_gives_an_error_notification(viewer_model, qtbot, tiny_model_dir, rng, error_notifications):
    viewer = viewer_model
    viewer.add_image(rng.normal(size=(40, 48)).astype(np.float32), name="micrograph")
    widget = _widget(viewer, qtbot)
    _run_and_wait(widget, qtbot)

    assert len(error_notifications) == 1
    message = error_notifications[0]
    assert "'tiny-test' is a 3D tomogram model and the input is a 2D image" in message
    # The hint names the 2D models there are (a shipped one in models/, user ones), or says there is none.
    two_d = [name for name, card in available_models().items() if ARCHITECTURES[card["architecture"]].ndim == 2]
    if two_d:
        assert f"choose a 2D micrograph model ({', '.join(two_d)})" in message
    else:
        assert "no 2D micrograph model is available yet" in message
    assert [layer.name for layer in viewer.layers] == ["micrograph"]
    assert widget.run_button.enabled


def test_bad_tile_gives_an_error_notification(viewer_model, qtbot, tiny_model_dir, error_notifications):
    viewer = viewer_model
    _add_sample(viewer)
    widget = _widget(viewer, qtbot, tile=12, overlap=-1)  # not a multiple of the stride 8
    _run_and_wait(widget, qtbot)

    assert len(error_notifications) == 1
    assert "tile" in error_notifications[0]
    assert len(viewer.layers) == 2


def test_corrupt_model_gives_an_error_notification(viewer_model, qtbot, tiny_model_dir, error_notifications):
    viewer = viewer_model
    _add_sample(viewer)
    widget = _widget(viewer, qtbot)
    (tiny_model_dir / "tiny-test.safetensors").write_bytes(b"changed after the list was read")
    _run_and_wait(widget, qtbot)

    assert len(error_notifications) == 1
    assert "sha256" in error_notifications[0]
    assert len(viewer.layers) == 2


@pytest.mark.parametrize(
    "error, expected",
    [(MemoryError("cannot allocate 8 GiB"), "try a smaller tile size"), (RuntimeError("unforeseen"), "unforeseen")],
)
def test_worker_errors_become_notifications(
    viewer_model, qtbot, tiny_model_dir, monkeypatch, error_notifications, error, expected
):
    def failing_iter_denoise(volume, model, **kwargs):
        yield 0, 4
        raise error

    monkeypatch.setattr(denoise_mod, "iter_denoise", failing_iter_denoise)
    viewer = viewer_model
    _add_sample(viewer)
    widget = _widget(viewer, qtbot)
    _run_and_wait(widget, qtbot)

    assert len(error_notifications) == 1
    assert expected in error_notifications[0]
    assert len(viewer.layers) == 2
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_rgb_layer_is_refused_before_starting(viewer_model, qtbot, tiny_model_dir, rng, error_notifications):
    viewer = viewer_model
    viewer.add_image(rng.uniform(size=(16, 16, 3)).astype(np.float32), rgb=True, name="photo")
    widget = _widget(viewer, qtbot)
    widget.run()
    assert not widget.is_running
    assert len(error_notifications) == 1 and "RGB" in error_notifications[0]


def test_plugin_dock_widget_gets_the_viewer(make_napari_viewer, tiny_model_dir):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-cryoden", "Denoise")
    assert isinstance(widget, DenoiseWidget)
    _add_sample(viewer)
    assert NOISY in [layer.name for layer in widget.image.choices]


def test_default_model_denoises_the_sample(make_napari_viewer, qtbot, error_notifications):
    # The default model ships in models/: its absence is a packaging bug, never a reason to skip.
    assert DEFAULT_MODEL in available_models(), f"the shipped default model {DEFAULT_MODEL!r} is missing"
    viewer = make_napari_viewer()
    noisy = _add_sample(viewer, shape=(32, 64, 64), seed=7)
    clean = viewer.layers["clean sample tomogram"].data
    widget = _widget(viewer, qtbot, model=DEFAULT_MODEL, tile=64, overlap=-1)
    widget.image.value = noisy
    _run_and_wait(widget, qtbot)

    assert error_notifications == []
    denoised = viewer.layers[f"{NOISY} denoised"].data
    mse_denoised = float(np.mean((denoised - clean) ** 2))
    mse_noisy = float(np.mean((noisy.data - clean) ** 2))
    assert mse_denoised < mse_noisy
    # At this SNR (0.5) even a constant beats the noisy input (an untrained network passes the
    # line above), so the model must also beat replacing every voxel by the input's mean.
    mse_mean = float(np.mean((noisy.data.mean() - clean) ** 2))
    assert mse_denoised < mse_mean, f"MSE {mse_denoised:.5f} is no better than the mean ({mse_mean:.5f})"
