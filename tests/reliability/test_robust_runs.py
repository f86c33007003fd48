"""Robust runs: NaN/Inf input replaced (and said) or refused, never spread; training on NaN stops;
two widget runs at once are queued; closing the viewer stops the worker.

Core tests come first and never import napari. The widget tests are marked ``qt``; only one of
them opens a real napari window (PySide6 6.12 aborts a session after about a dozen).
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_cryoden.inference import denoise
from napari_cryoden.inference.engine import count_nonfinite

#: Hypothesis examples per property.
NONFINITE_EXAMPLES = 60
TIMEOUT_MS = 60_000


class Identity(torch.nn.Module):
    stride = 8

    def forward(self, x):
        return x.clone()


class MakesNaN(torch.nn.Module):
    stride = 8

    def forward(self, x):
        return x * float("nan")


# ------------------------------------------------------------------------------ NaN / Inf, core
@st.composite
def volumes_with_nonfinite(draw):
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64, np.int16, np.uint16, np.int8]))
    shape = draw(hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=12))
    if np.issubdtype(dtype, np.integer):
        elements = st.integers(np.iinfo(dtype).min, np.iinfo(dtype).max)
    else:
        finite = st.floats(-1e3, 1e3, width=16 if dtype == np.float16 else 32)
        elements = st.one_of(finite, finite, finite, st.sampled_from([np.nan, np.inf, -np.inf]))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=NONFINITE_EXAMPLES, deadline=None)
@given(vol=volumes_with_nonfinite(), geometry=st.sampled_from([(8, 0), (8, 4), (16, 4), (16, 8)]))
def test_nonfinite_replaced_and_counted_never_spread(vol, geometry):
    tile, overlap = geometry
    bad = ~np.isfinite(vol.astype(np.float64))
    original = vol.copy()
    info: dict = {}
    if bad.all():
        with pytest.raises(ValueError, match="no finite values"):
            denoise(vol, Identity(), tile=tile, overlap=overlap, device="cpu", precision="fp32", info=info)
        return
    out = denoise(vol, Identity(), tile=tile, overlap=overlap, device="cpu", precision="fp32", info=info)
    np.testing.assert_array_equal(vol, original)  # the input is never modified
    assert out.dtype == np.float32 and out.shape == vol.shape
    assert np.isfinite(out).all()
    assert info["nonfinite"] == int(bad.sum()) == count_nonfinite(vol)
    assert info["nonfinite_action"] == ("replace" if bad.any() else None)
    ref = vol.astype(np.float32)
    span = float(np.abs(ref[~bad]).max()) + 1.0
    np.testing.assert_allclose(out[~bad], ref[~bad], rtol=1e-5, atol=1e-5 * span)  # identity round trip
    if bad.any():
        np.testing.assert_allclose(out[bad], info["nonfinite_value"], rtol=1e-5, atol=1e-5 * span)

    if bad.any():
        with pytest.raises(ValueError, match=f"{int(bad.sum())} NaN/Inf voxels"):
            denoise(vol, Identity(), tile=tile, overlap=overlap, device="cpu", precision="fp32", nonfinite="refuse")
    else:
        refused = denoise(vol, Identity(), tile=tile, overlap=overlap, device="cpu", precision="fp32",
                          nonfinite="refuse")
        np.testing.assert_array_equal(refused, out)


def test_replacement_is_logged_with_the_count(caplog, aniso_volume):
    vol = aniso_volume.copy()
    vol[0, 0, :5] = np.nan
    vol[4, 36, 40] = np.inf
    with caplog.at_level(logging.WARNING, logger="napari_cryoden"):
        denoise(vol, Identity(), tile=16, overlap=4, device="cpu", precision="fp32")
    [record] = [r for r in caplog.records if "NaN/Inf" in r.getMessage()]
    assert "replacing 6 NaN/Inf voxels" in record.getMessage()


def test_bad_nonfinite_choice_is_named(aniso_volume):
    with pytest.raises(ValueError, match="nonfinite must be one of replace, refuse"):
        denoise(aniso_volume, Identity(), device="cpu", nonfinite="ignore")


def test_network_output_nan_is_refused_not_written(aniso_volume):
    with pytest.raises(ValueError, match="network produced NaN/Inf"):
        denoise(aniso_volume, MakesNaN(), tile=16, overlap=4, device="cpu", precision="fp32")


def test_extreme_finite_values_never_become_nan(rng):
    vol = (np.clip(rng.normal(size=(4, 16, 16)), -1, 1) * 3e38).astype(np.float32)
    try:
        out = denoise(vol, Identity(), tile=16, overlap=4, device="cpu", precision="fp32")
    except ValueError as exc:
        assert "NaN/Inf" in str(exc)
    else:
        assert np.isfinite(out).all()


def test_training_on_a_nan_volume_stops_with_message():
    from napari_cryoden.models import UpsampleUnet48
    from napari_cryoden.training import TrainConfig, train

    volume = np.full((16, 16, 16), np.nan, np.float32)
    patch = torch.from_numpy(volume)[None, None]
    batches = iter([(patch, patch.clone())] * 3)
    with pytest.raises(ValueError, match="not finite"):
        train(UpsampleUnet48(ch=4, final_activation="identity"), batches,
              TrainConfig(steps=2, mode="ae", device="cpu"))


# ------------------------------------------------------------------------------ the widget
@pytest.fixture
def notifications():
    """(severity name, message) of the notifications dispatched during the test."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(notification):
        seen.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def _widget(viewer, qtbot):
    from napari_cryoden._widgets.denoise import DenoiseWidget

    widget = DenoiseWidget(viewer)
    if qtbot is not None:  # None: the widget goes into a window, which deletes it
        qtbot.addWidget(widget)
    widget.model.value = "tiny-test"
    widget.tile.value, widget.overlap.value = 16, 4
    widget.device.value, widget.precision.value = "cpu", "fp32"
    return widget


def _gate(monkeypatch):
    """Hold the core generator after its first tile; returns (started, release, closed) events."""
    import napari_cryoden._widgets.denoise as denoise_mod

    real = denoise_mod.iter_denoise
    started, release, closed = threading.Event(), threading.Event(), threading.Event()

    def gated(volume, model, **kwargs):
        core = real(volume, model, **kwargs)
        try:
            yield next(core)
            started.set()
            release.wait(30)
            return (yield from core)
        finally:
            core.close()
            closed.set()

    monkeypatch.setattr(denoise_mod, "iter_denoise", gated)
    return started, release, closed


@pytest.mark.qt
def test_two_runs_at_once_are_queued_and_both_complete(viewer_model, qtbot, tiny_model_dir, rng, monkeypatch):
    started, release, _ = _gate(monkeypatch)
    a = rng.normal(size=(4, 20, 24)).astype(np.float32)
    b = rng.normal(size=(3, 17, 16)).astype(np.float32)
    viewer_model.add_image(a, name="a")
    viewer_model.add_image(b, name="b")
    widget = _widget(viewer_model, qtbot)
    widget.image.value = viewer_model.layers["a"]
    widget.run()
    qtbot.waitUntil(started.is_set, timeout=TIMEOUT_MS)
    widget.image.value = viewer_model.layers["b"]
    widget.run()  # while the first runs: queued, not dropped and not run in parallel
    assert widget.queued == 1 and "1 queued" in widget.status.value
    release.set()
    qtbot.waitUntil(lambda: not widget.is_running and widget.queued == 0, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: "b denoised" in viewer_model.layers, timeout=TIMEOUT_MS)

    kw = {"tile": 16, "overlap": 4, "device": "cpu", "precision": "fp32"}
    np.testing.assert_allclose(viewer_model.layers["a denoised"].data, denoise(a, "tiny-test", **kw), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(viewer_model.layers["b denoised"].data, denoise(b, "tiny-test", **kw), rtol=1e-5, atol=1e-6)


@pytest.mark.qt
def test_cancel_also_drops_queued_runs(viewer_model, qtbot, tiny_model_dir, rng, monkeypatch):
    started, release, closed = _gate(monkeypatch)
    viewer_model.add_image(rng.normal(size=(4, 20, 24)).astype(np.float32), name="a")
    widget = _widget(viewer_model, qtbot)
    widget.run()
    qtbot.waitUntil(started.is_set, timeout=TIMEOUT_MS)
    widget.run()
    widget.cancel()
    release.set()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert closed.is_set() and widget.queued == 0
    assert [layer.name for layer in viewer_model.layers] == ["a"]


@pytest.mark.qt
def test_shutdown_during_a_run_stops_the_worker(viewer_model, qtbot, tiny_model_dir, rng, monkeypatch):
    started, release, closed = _gate(monkeypatch)
    viewer_model.add_image(rng.normal(size=(4, 20, 24)).astype(np.float32), name="a")
    widget = _widget(viewer_model, qtbot)
    widget.run()
    qtbot.waitUntil(started.is_set, timeout=TIMEOUT_MS)
    widget.run()  # a queued job must not start after the shutdown
    widget.shutdown()
    release.set()
    qtbot.waitUntil(closed.is_set, timeout=TIMEOUT_MS)
    qtbot.wait(100)
    assert not widget.is_running and widget.queued == 0
    assert [layer.name for layer in viewer_model.layers] == ["a"]


@pytest.mark.qt
def test_closing_the_viewer_window_stops_the_worker(make_napari_viewer, qtbot, tiny_model_dir, rng, monkeypatch):
    """The one test with a real napari window."""
    started, release, closed = _gate(monkeypatch)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(rng.normal(size=(4, 20, 24)).astype(np.float32), name="a")
    widget = _widget(viewer, None)
    viewer.window.add_dock_widget(widget, name="Denoise")
    qtbot.waitUntil(lambda: widget._watched_window is not None, timeout=TIMEOUT_MS)
    widget.run()
    qtbot.waitUntil(started.is_set, timeout=TIMEOUT_MS)
    worker = widget.worker
    viewer.close()
    assert worker.abort_requested and widget.worker is None
    release.set()
    qtbot.waitUntil(closed.is_set, timeout=TIMEOUT_MS)  # the core generator was closed, no exception


@pytest.mark.qt
def test_nan_layer_gives_warning_and_finite_result(viewer_model, qtbot, tiny_model_dir, rng, notifications):
    data = rng.normal(size=(4, 20, 24)).astype(np.float32)
    data[1, 2, 3], data[2, 4, 4] = np.nan, np.inf
    viewer_model.add_image(data, name="a")
    widget = _widget(viewer_model, qtbot)
    widget.run()
    qtbot.waitUntil(lambda: "a denoised" in viewer_model.layers, timeout=TIMEOUT_MS)
    assert np.isfinite(viewer_model.layers["a denoised"].data).all()
    warnings = [m for sev, m in notifications if sev == "warning"]
    assert len(warnings) == 1 and "2 NaN/Inf voxels" in warnings[0]


@pytest.mark.qt
@pytest.mark.parametrize(
    "data, expected",
    [
        (np.ones((2, 3, 16, 16), np.float32), "expects 3D input"),
        (np.zeros((3, 16, 16), np.complex64), "real numbers"),
        (np.full((3, 16, 16), np.nan, np.float32), "no finite values"),
    ],
    ids=["4d", "complex", "all-nan"],
)
def test_unusable_layer_gives_one_error_notification(data, expected, viewer_model, qtbot, tiny_model_dir, notifications):
    if np.iscomplexobj(data):
        # napari itself refuses complex image layers; the widget's job is given the array.
        from napari_cryoden._widgets.denoise import _denoise_job, _Failed

        job = _denoise_job(data, "tiny-test", {"tile": 16, "overlap": 4, "device": "cpu", "precision": "fp32"})
        with pytest.raises(StopIteration) as stop:
            while True:
                next(job)
        assert isinstance(stop.value.value, _Failed) and expected in stop.value.value.message
        return
    viewer_model.add_image(data, name="a")
    widget = _widget(viewer_model, qtbot)
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    errors = [m for sev, m in notifications if sev == "error"]
    assert len(errors) == 1 and expected in errors[0] and "\n" not in errors[0]
    assert [layer.name for layer in viewer_model.layers] == ["a"]
