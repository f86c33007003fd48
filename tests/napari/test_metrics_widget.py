"""The Metrics dock widget: regions, the end-to-end run, even/odd mode and exports (its settings:
tests/metrics/test_metrics_settings.py, without Qt)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_cryoden._sample_data import make_sample_tomogram
from napari_cryoden._widgets.metrics import CURRENT_VIEW, WHOLE, MetricsWidget
from napari_cryoden.metrics import compare

pytestmark = [
    pytest.mark.qt,
    pytest.mark.filterwarnings("error::DeprecationWarning:napari_cryoden"),
    pytest.mark.filterwarnings("error::FutureWarning:napari_cryoden"),
]

NOISY, CLEAN = "noisy sample tomogram", "clean sample tomogram"
SHAPE = (16, 32, 32)
TIMEOUT_MS = 60_000


# ------------------------------------------------------------------------------ widget helpers
def _add_sample(viewer, shape=SHAPE, seed=0):
    for data, kwargs, _ in make_sample_tomogram(seed=seed, shape=shape):
        viewer.add_image(data, **kwargs)
    return viewer.layers[NOISY], viewer.layers[CLEAN]


def _widget(viewer, qtbot):
    widget = MetricsWidget(viewer)
    qtbot.addWidget(widget)
    return widget


def _run_and_wait(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)


def _cells(widget) -> list[list[str]]:
    t = widget.table
    return [[t.item(r, c).text() for c in range(t.columnCount())] for r in range(t.rowCount())]


# ------------------------------------------------------------------------------ widget
def test_widget_lists_layers_and_regions(viewer_model, qtbot):
    viewer = viewer_model
    widget = _widget(viewer, qtbot)
    assert widget.reference.choices == ()
    _add_sample(viewer)
    assert [layer.name for layer in widget.images.choices] == [NOISY, CLEAN]
    assert [layer.name for layer in widget.reference.choices] == [NOISY, CLEAN]
    assert widget.region.choices == (WHOLE, CURRENT_VIEW)
    shapes = viewer.add_shapes(name="box")
    assert widget.region.choices == (WHOLE, CURRENT_VIEW, shapes)
    viewer.add_points(np.zeros((1, 3)))
    assert len(widget.images.choices) == 2


def test_region_from_a_shapes_layer(viewer_model, qtbot):
    viewer = viewer_model
    _, clean = _add_sample(viewer)  # scale 10 Å
    clean.translate = (0.0, 20.0, 0.0)
    # A rectangle drawn in plane z = 7 (world: z 70 Å), y 60..140 Å, x 45..200 Å.
    rect = np.array([[70.0, 60.0, 45.0], [70.0, 60.0, 200.0], [70.0, 140.0, 200.0], [70.0, 140.0, 45.0]])
    shapes = viewer.add_shapes([rect], shape_type="rectangle", name="box")
    widget = _widget(viewer, qtbot)
    widget.reference.value = clean
    widget.region.value = shapes
    # Data y = (world - 20) / 10 -> 4..12; x = world / 10 -> 4.5..20 -> voxels 5..20; all of z.
    assert widget.region_roi() == (slice(0, 16), slice(4, 13), slice(5, 21))

    shapes.add_rectangles(np.array([[70.0, 0.0, 0.0], [70.0, 0.0, 30.0], [70.0, 30.0, 30.0], [70.0, 30.0, 0.0]]))
    shapes.selected_data = {1}
    assert widget.region_roi() == (slice(0, 16), slice(0, 2), slice(0, 4))
    shapes.selected_data = set()
    assert widget.region_roi() == (slice(0, 16), slice(0, 13), slice(0, 21))

    flat = viewer.add_shapes(ndim=2, name="empty")
    widget.region.value = flat
    with pytest.raises(ValueError, match="no shapes"):
        widget.region_roi()


def test_region_from_the_current_view(viewer_model, qtbot):
    viewer = viewer_model
    _, clean = _add_sample(viewer)
    widget = _widget(viewer, qtbot)
    widget.reference.value = clean
    widget.region.value = CURRENT_VIEW
    height, width = viewer.canvas.viewbox_size(viewer.layers)
    camera = viewer.scene.camera
    camera.center = (0.0, 100.0, 150.0)
    camera.zoom = min(height, width) / 100.0  # 100 Å across the shorter canvas side
    roi = widget.region_roi()
    assert roi[0] == slice(0, 16)
    half_y, half_x = height / (2 * camera.zoom) / 10, width / (2 * camera.zoom) / 10
    assert roi[1] == slice(int(np.ceil(10 - half_y)), min(int(np.floor(10 + half_y)) + 1, 32))
    assert roi[2] == slice(int(np.ceil(15 - half_x)), min(int(np.floor(15 + half_x)) + 1, 32))
    viewer.dims.ndisplay = 3
    with pytest.raises(ValueError, match="2D view"):
        widget.region_roi()


def test_shape_mismatch_is_an_error_notification(viewer_model, qtbot, rng, error_notifications):
    viewer = viewer_model
    _add_sample(viewer)
    viewer.add_image(rng.normal(size=(16, 32, 30)).astype(np.float32), name="cropped")
    widget = _widget(viewer, qtbot)
    widget.images.value = [viewer.layers["cropped"]]
    widget.reference.value = viewer.layers[CLEAN]
    widget.run()
    assert not widget.is_running
    assert len(error_notifications) == 1
    assert "'cropped' has shape (16, 32, 30)" in error_notifications[0]
    assert widget.table.rowCount() == 0


def test_even_odd_mode_shows_only_the_fsc(viewer_model, qtbot, rng, error_notifications):
    viewer = viewer_model
    _, clean = _add_sample(viewer)
    halves = clean.data + 0.05 * rng.normal(size=(2, *SHAPE)).astype(np.float32)
    even = viewer.add_image(halves[0], name="even", scale=clean.scale)
    odd = viewer.add_image(halves[1], name="odd", scale=clean.scale)
    widget = _widget(viewer, qtbot)
    widget.images.value = [even]
    widget.reference.value = odd
    widget.half_maps.value = True
    _run_and_wait(widget, qtbot)
    assert error_notifications == []
    [row] = _cells(widget)
    assert row[0] == "even" and row[1:5] == ["—"] * 4
    assert widget.results[0].report.scores is None


def test_widget_scores_the_sample_against_its_clean_version(make_napari_viewer, qtbot, tmp_path, error_notifications):
    viewer = make_napari_viewer()
    noisy, clean = _add_sample(viewer)
    widget = MetricsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Metrics")
    widget.images.value = [noisy, clean]
    widget.reference.value = clean
    assert not widget.export_csv_button.enabled

    _run_and_wait(widget, qtbot)

    assert error_notifications == []
    rows = _cells(widget)
    assert [row[0] for row in rows] == [NOISY, CLEAN]
    noisy_row, clean_row = rows
    expected = compare(noisy.data, clean.data, voxel_size=10.0)
    assert float(noisy_row[1]) == pytest.approx(expected.scores["ssim"], abs=1e-4)
    assert float(noisy_row[2]) == pytest.approx(expected.scores["psnr"], abs=1e-2)
    assert float(noisy_row[5]) == pytest.approx(expected.res_fsc_05, rel=1e-2)
    assert clean_row[1] == "1.0000" and clean_row[2] == "inf" and clean_row[5] == "< 20"
    curves = [line for line in widget.axes.lines if line.get_gid() is None]
    assert len(curves) == 2
    np.testing.assert_allclose(curves[0].get_xdata(), expected.curve.frequency)
    assert widget.axes.get_xlabel() == "resolution (Å)"
    assert widget.export_csv_button.enabled and widget.run_button.enabled

    table, curves_csv = widget.export_csv(tmp_path / "scores.csv")
    with open(table, newline="", encoding="utf-8") as fh:
        saved = list(csv.DictReader(fh))
    assert [r["image"] for r in saved] == [NOISY, CLEAN] and saved[1]["psnr"] == "inf"
    assert curves_csv.name == "scores_fsc.csv" and curves_csv.exists()
    png = widget.export_png(tmp_path / "fsc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A region: the numbers follow the box.
    widget.images.value = [noisy]
    shapes = viewer.add_shapes([np.array([[0.0, 0.0], [0.0, 200.0], [200.0, 200.0], [200.0, 0.0]])],
                               shape_type="rectangle", name="box")
    widget.region.value = shapes
    _run_and_wait(widget, qtbot)
    assert error_notifications == []
    roi = (slice(0, 16), slice(0, 21), slice(0, 21))
    assert widget.results[0].report.roi == roi
    assert float(_cells(widget)[0][1]) == pytest.approx(
        compare(noisy.data, clean.data, voxel_size=10.0, roi=roi).scores["ssim"], abs=1e-4
    )
    assert "z 0:16, y 0:21, x 0:21" in widget.status.value
