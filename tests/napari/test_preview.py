"""The Denoise widget's Preview: a slab around the displayed slice, placed at its Z offset."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoden._widgets.denoise import DenoiseWidget
from napari_cryoden.inference import denoise

pytestmark = [pytest.mark.qt, pytest.mark.filterwarnings("error::DeprecationWarning:napari_cryoden")]

TIMEOUT_MS = 120_000
SETTINGS = {"tile": 24, "overlap": 24, "device": "cpu", "precision": "fp32"}  # 24: the receptive field


def _widget(viewer, qtbot, model="tiny-test"):
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    widget.model.value = model
    widget.tile.value, widget.overlap.value = SETTINGS["tile"], SETTINGS["overlap"]
    widget.device.value, widget.precision.value = SETTINGS["device"], SETTINGS["precision"]
    return widget


def _preview_and_wait(widget, qtbot):
    widget.preview()
    assert widget.is_running
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)


def test_preview_denoises_the_slab_around_the_displayed_slice(viewer_model, qtbot, tiny_model_dir, rng,
                                                              error_notifications):
    viewer = viewer_model
    vol = rng.normal(size=(48, 16, 16)).astype(np.float32)
    layer = viewer.add_image(vol, name="tomo", scale=(2.0, 1.0, 1.0), translate=(10.0, 0.0, 0.0))
    widget = _widget(viewer, qtbot)
    widget.image.value = layer
    full = denoise(vol, "tiny-test", **SETTINGS)

    viewer.dims.set_point(0, 10.0 + 2.0 * 20)  # world Z of slice 20
    _preview_and_wait(widget, qtbot)
    assert error_notifications == []
    preview = viewer.layers["tomo preview"]
    assert preview.data.shape == (33, 16, 16)  # slices 4..36
    np.testing.assert_allclose(preview.translate, (10.0 + 2.0 * 4, 0.0, 0.0))
    np.testing.assert_allclose(preview.scale, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(preview.data, full[4:37], rtol=0, atol=1e-5)
    assert "slices 4-36" in widget.status.value

    viewer.dims.set_point(0, 10.0 + 2.0 * 45)  # move near the end and press again
    _preview_and_wait(widget, qtbot)
    assert [ly.name for ly in viewer.layers] == ["tomo", "tomo preview"]  # updated, not added
    preview = viewer.layers["tomo preview"]
    assert preview.data.shape == (19, 16, 16)  # slices 29..47
    np.testing.assert_allclose(preview.translate, (10.0 + 2.0 * 29, 0.0, 0.0))
    np.testing.assert_allclose(preview.data, full[29:], rtol=0, atol=1e-5)
    assert "tomo denoised" not in viewer.layers


def test_preview_of_a_2d_image_with_a_3d_model_is_refused(viewer_model, qtbot, tiny_model_dir, rng,
                                                          error_notifications):
    viewer = viewer_model
    viewer.add_image(rng.normal(size=(40, 48)).astype(np.float32), name="micrograph")
    widget = _widget(viewer, qtbot)
    _preview_and_wait(widget, qtbot)
    assert len(error_notifications) == 1 and "2D image" in error_notifications[0]
    assert [ly.name for ly in viewer.layers] == ["micrograph"]


def test_preview_of_a_stack_with_a_2d_model_is_the_displayed_slice(viewer_model, qtbot, tiny_2d_model, rng,
                                                                    error_notifications):
    viewer = viewer_model
    stack = rng.normal(size=(5, 40, 36)).astype(np.float32)
    layer = viewer.add_image(stack, name="particles", metadata={"path": "/data/particles.mrcs"})
    widget = _widget(viewer, qtbot, model=tiny_2d_model)
    widget.tile.value, widget.overlap.value = 0, -1  # automatic
    widget.image.value = layer
    viewer.dims.set_point(0, 3.0)
    _preview_and_wait(widget, qtbot)
    assert error_notifications == []
    preview = viewer.layers["particles preview"]
    assert preview.data.shape == (1, 40, 36)
    np.testing.assert_allclose(preview.translate, (3.0, 0.0, 0.0))
    full = denoise(stack, tiny_2d_model, device="cpu", precision="fp32")
    np.testing.assert_allclose(preview.data[0], full[3], rtol=0, atol=1e-5)
