"""The GUI meets the data where it is (issue 21): the Denoise widget resamples to the model's pixel
size and picks the model by the layer; the reader sets translate and units and claims only what
it can read; the writer keeps the MRC header."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from conftest import shared_file

from napari_cryoden._reader import get_reader, read_mrc_layers
from napari_cryoden._widgets.denoise import DenoiseWidget
from napari_cryoden._writer import write_single_image
from napari_cryoden.models import DEFAULT_MODEL, DEFAULT_MODEL_2D, available_models

pytestmark = [pytest.mark.qt, pytest.mark.filterwarnings("error::DeprecationWarning:napari_cryoden")]
TIMEOUT_MS = 120_000


def _fei1(path, rng, voxel=2.5, shape=(96, 80)):
    ext = np.zeros(1, dtype=mrcfile.dtypes.get_ext_header_dtype(b"FEI1"))
    ext["Metadata size"] = ext.dtype.itemsize
    ext["HT"] = 300000.0
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_extended_header(ext)
        mrc.header.exttyp = b"FEI1"
        mrc.set_data(rng.normal(size=shape).astype(np.float32))
        mrc.voxel_size = voxel
        mrc.header.origin = (40.0, 20.0, 0.0)
        mrc.add_label("from the microscope")
    return path


# ------------------------------------------------------------------------------ reader / writer
def test_reader_sets_translate_from_the_origin_and_units_in_angstrom(tmp_path, rng):
    path = _fei1(tmp_path / "mic.mrc", rng)
    [(data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "image" and data.shape == (96, 80)
    assert kwargs["scale"] == pytest.approx((2.5, 2.5))
    assert kwargs["translate"] == (20.0, 40.0)  # (Y, X) from the origin's (x, y) in Å
    assert kwargs["units"] == ("angstrom", "angstrom")


def test_viewer_layer_reads_in_angstrom(viewer_model, tmp_path, rng):
    path = _fei1(tmp_path / "mic.mrc", rng)
    [(data, kwargs, _)] = read_mrc_layers(str(path))
    layer = viewer_model.add_image(data, **kwargs)  # as napari adds what the reader returns
    assert tuple(layer.translate) == (20.0, 40.0)
    assert [str(u) for u in layer.units] == ["angstrom", "angstrom"]


def test_old_style_file_is_claimed_read_and_noted_once(info_notifications):
    path = shared_file("real", "ribosome_subtilts_bin8.mrcs")
    reader = get_reader(str(path))
    assert reader is not None
    [(data, kwargs, _)] = reader(str(path))
    assert data.shape == (220, 64, 64)
    assert [m for m in info_notifications if "old-style MRC header" in m] == [kwargs["metadata"]["notes"][0]]


def test_writer_keeps_the_header_of_the_file_the_layer_came_from(tmp_path, rng):
    src = _fei1(tmp_path / "mic.mrc", rng)
    [(data, kwargs, _)] = read_mrc_layers(str(src))
    out = tmp_path / "saved.mrc"
    write_single_image(out, np.asarray(data) * 2, {**kwargs, "metadata": kwargs["metadata"]})
    with mrcfile.open(src) as a, mrcfile.open(out) as b:
        assert b.extended_header.tobytes() == a.extended_header.tobytes() and bytes(b.header.exttyp) == b"FEI1"
        assert b.header.origin.tolist() == a.header.origin.tolist()
        labels = [bytes(lab).decode().strip() for lab in b.header.label[: int(b.header.nlabl)]]
        assert "from the microscope" in labels and labels[-1] == "napari-cryoden: mic"
        assert b.voxel_size.x == pytest.approx(2.5)


def test_writer_keeps_an_unknown_pixel_size_unknown(tmp_path, rng):
    src = tmp_path / "p.mrcs"
    with mrcfile.new(src) as mrc:
        mrc.set_data(rng.normal(size=(2, 16, 16)).astype(np.float32))
    [(data, kwargs, _)] = read_mrc_layers(str(src))
    assert kwargs["scale"] == (1.0, 1.0, 1.0)  # napari needs a scale...
    write_single_image(tmp_path / "o.mrcs", data, kwargs)
    with mrcfile.open(tmp_path / "o.mrcs") as out:
        assert float(out.voxel_size.x) == 0.0  # ...but the file never gets an invented 1 Å


# ------------------------------------------------------------------------------ Denoise widget
def _widget(viewer, qtbot):
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    widget.device.value = "cpu"
    widget.precision.value = "fp32"
    return widget


@pytest.mark.skipif(not {DEFAULT_MODEL, DEFAULT_MODEL_2D} <= set(available_models()), reason="default models not built")
def test_model_follows_the_layer_until_the_user_picks_one(viewer_model, qtbot, rng):
    viewer = viewer_model
    widget = _widget(viewer, qtbot)
    tomo = viewer.add_image(rng.normal(size=(8, 16, 16)).astype(np.float32), name="tomo", scale=(10, 10, 10))
    mic = viewer.add_image(rng.normal(size=(64, 64)).astype(np.float32), name="mic", scale=(0.667, 0.667))
    widget.image.value = mic
    assert widget.model.value == DEFAULT_MODEL_2D
    assert widget.pixel_info.value == "layer 0.667 Å → model 5 Å, binned ×7.5"
    widget.image.value = tomo
    assert widget.model.value == DEFAULT_MODEL
    assert widget.pixel_info.value == "layer 10 Å → model 10 Å, no resampling needed"
    widget.model.value = "upsampleunet48-ae"  # the user's choice now stays
    widget.image.value = mic
    assert widget.model.value == "upsampleunet48-ae"


def test_micrograph_is_binned_to_the_model_and_padded_back(viewer_model, qtbot, tiny_2d_model, rng):
    viewer = viewer_model
    widget = _widget(viewer, qtbot)
    mic = viewer.add_image(rng.normal(size=(96, 80)).astype(np.float32), name="mic", scale=(2.5, 2.5),
                           translate=(5.0, 7.0))
    widget.image.value = mic
    widget.model.value = tiny_2d_model  # a 10 Å model
    assert widget.pixel_info.value == "layer 2.5 Å → model 10 Å, binned ×4"
    for mode, shape, scale in (("auto", (96, 80), (2.5, 2.5)), ("binned", (24, 20), (10.0, 10.0))):
        widget.resample.value = mode
        widget.run()
        qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
        layer = viewer.layers["mic denoised"]
        assert layer.data.shape == shape and tuple(layer.scale) == pytest.approx(scale)
        assert tuple(layer.translate) == (5.0, 7.0)
        assert widget._info["resample"]["model_shape"] == (24, 20)
        viewer.layers.remove(layer)


def test_unknown_pixel_size_is_shown_and_can_be_typed_in(viewer_model, qtbot, tiny_2d_model, rng, info_notifications):
    viewer = viewer_model
    widget = _widget(viewer, qtbot)
    mic = viewer.add_image(rng.normal(size=(40, 40)).astype(np.float32), name="mic")  # scale 1: a placeholder
    widget.image.value = mic
    widget.model.value = tiny_2d_model
    assert widget.pixel_info.value == "pixel size unknown: not resampled"
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert any("no usable pixel size" in m for m in info_notifications)
    assert viewer.layers["mic denoised"].data.shape == (40, 40)
    widget.pixel_size.value = 5.0
    assert widget.pixel_info.value == "layer 5 Å → model 10 Å, binned ×2"


def test_side_by_side_resets_the_view(viewer_model, qtbot, monkeypatch):
    widget = _widget(viewer_model, qtbot)
    calls = []
    monkeypatch.setattr(type(viewer_model), "reset_view", lambda *a, **k: calls.append(1))
    widget.side_by_side.value = True
    assert calls == [1]


def test_preview_is_resampled_too(viewer_model, qtbot, tiny_2d_model, rng):
    """A 2D model's preview of a stack slice at 2.5 Å for the 10 Å model: binned, denoised and
    padded back like the full run (the same slice of it)."""
    viewer = viewer_model
    widget = _widget(viewer, qtbot)
    stack = viewer.add_image(rng.normal(size=(3, 96, 80)).astype(np.float32), name="stack", scale=(2.5, 2.5, 2.5))
    widget.image.value = stack
    widget.model.value = tiny_2d_model
    viewer.dims.set_current_step(0, 1)
    widget.preview()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    preview = viewer.layers["stack preview"]
    assert preview.data.shape == (1, 96, 80) and preview.metadata["z_start"] == 1
    assert widget._info["resample"]["model_shape"] == (1, 24, 20)
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    full = viewer.layers["stack denoised"].data
    np.testing.assert_allclose(preview.data[0], full[1], atol=1e-4)


def test_long_status_text_does_not_widen_the_dock(viewer_model, qtbot):
    from qtpy.QtWidgets import QSizePolicy

    widget = _widget(viewer_model, qtbot)  # not shown: a shown dock of a window-less viewer crashes PySide6 later
    label = widget.status.native
    label.setText("failed: " + "a very long message that would widen the dock " * 6)
    # The label wraps, and the layout gives it the dock's width instead of the text's.
    assert label.wordWrap() and label.sizePolicy().horizontalPolicy() == QSizePolicy.Policy.Ignored
