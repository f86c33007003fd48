"""The Metrics widget's settings without Qt (napari_cryoden._widgets.metrics_settings): the jobs,
the "current view" region, the table and the FSC plot."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from napari_cryoden._widgets.metrics_settings import (
    TABLE_COLUMNS, MetricsResult, displayed_data_axes, metrics_jobs, plot_fsc, table_rows, view_box, view_corners,
)
from napari_cryoden.metrics import bounding_box_roi, compare
from napari_cryoden.simulate import sample_tomogram

SHAPE = (16, 32, 32)


# ------------------------------------------------------------------------ moved from the Qt tests
def test_metrics_jobs_pass_arrays_and_settings(rng):
    vol = rng.normal(size=SHAPE).astype(np.float32)
    ref = rng.normal(size=SHAPE).astype(np.float32)
    roi = (slice(0, 16), slice(4, 20), slice(0, 32))
    jobs = metrics_jobs([("a", vol), ("b", ref)], ("ref", ref), voxel_size=np.array([12.0, 10.0, 10.0]),
                        roi=roi, half_maps=True)
    assert [j.name for j in jobs] == ["a", "b"]
    assert jobs[0].image is vol and jobs[0].reference is ref  # the arrays themselves, never copies
    assert jobs[0].kwargs == {"voxel_size": (12.0, 10.0, 10.0), "roi": roi, "half_maps": True}
    assert metrics_jobs([("a", vol)], ("ref", ref), voxel_size=7.0)[0].kwargs["voxel_size"] == (7.0, 7.0, 7.0)


def test_metrics_jobs_name_the_problem(rng):
    vol = rng.normal(size=SHAPE)
    with pytest.raises(ValueError, match="at least one image"):
        metrics_jobs([], ("ref", vol))
    with pytest.raises(ValueError, match=r"layer 'small' has shape \(16, 32, 30\) but the reference 'ref'"):
        metrics_jobs([("ok", vol), ("small", vol[..., :30])], ("ref", vol))


def test_view_box_is_centred_on_the_camera():
    np.testing.assert_allclose(view_box((160.0, 195.0), 2.0, (800, 600)), [[-40.0, 45.0], [360.0, 345.0]])


def test_table_rows_and_plot_of_results():
    noisy, clean, _ = sample_tomogram(seed=1, shape=SHAPE)
    results = [
        MetricsResult("noisy", "clean", compare(noisy, clean, voxel_size=10.0)),
        MetricsResult("same", "clean", compare(clean, clean, voxel_size=10.0)),
        MetricsResult("half", "clean", compare(noisy, clean, voxel_size=10.0, half_maps=True)),
    ]
    rows = table_rows(results)
    assert all(len(row) == len(TABLE_COLUMNS) for row in rows)
    noisy_row, same_row, half_row = rows
    assert float(noisy_row[1]) == pytest.approx(results[0].report.scores["ssim"], abs=1e-4)
    assert float(noisy_row[5]) == pytest.approx(results[0].report.res_fsc_05, rel=1e-2)
    assert same_row[2] == "inf" and same_row[5] == same_row[6] == "< 20"
    assert half_row[1:5] == ["—"] * 4 and half_row[5] == noisy_row[5]

    axes = Figure().add_subplot()
    plot_fsc(axes, results)
    curves = [line for line in axes.lines if line.get_gid() is None]
    assert len(curves) == 3
    np.testing.assert_allclose(curves[0].get_ydata(), results[0].report.curve.fsc)
    assert {line.get_gid() for line in axes.lines} >= {"threshold 0.5", "threshold 0.143", "crossing"}
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend[0].startswith("noisy (0.5: ") and " Å" in legend[0]
    assert legend[1] == "same (0.5: not reached, 0.143: not reached)"
    assert axes.xaxis.get_major_formatter()(1 / 40.0, 0) == "40"



def test_jobs_run_compare_on_the_arrays(rng):
    noisy, clean, _ = sample_tomogram(seed=2, shape=SHAPE)
    roi = (slice(0, 16), slice(0, 24), slice(8, 32))
    [job] = metrics_jobs([("noisy", noisy)], ("clean", clean), voxel_size=10.0, roi=roi)
    result = job.run()
    expected = compare(noisy, clean, voxel_size=10.0, roi=roi)
    assert (result.name, result.reference_name) == ("noisy", "clean")
    assert result.report.scores == pytest.approx(expected.scores)
    np.testing.assert_allclose(result.report.curve.fsc, expected.curve.fsc)


def test_current_view_corners_and_axes_make_the_region():
    """The visible part of the displayed plane (Y, X) of a 3D layer in a 3D viewer at slice 5."""
    box = view_box((20.0, 30.0), 2.0, (20, 40))  # 10 by 20 world units around (20, 30)
    corners = view_corners((5.0, 0.0, 0.0), (1, 2), box)
    assert corners.tolist() == [[5.0, 15.0, 20.0], [5.0, 15.0, 40.0], [5.0, 25.0, 20.0], [5.0, 25.0, 40.0]]
    axes = displayed_data_axes((1, 2), world_ndim=3, data_ndim=3)
    assert axes == [1, 2]
    roi = bounding_box_roi(corners, (16, 64, 64), axes=axes)  # scale 1: world == data
    assert roi == (slice(0, 16), slice(15, 26), slice(20, 41))
    # A 2D layer in a 3D viewer is the last two world axes; an undisplayed leading axis is dropped.
    assert displayed_data_axes((1, 2), world_ndim=3, data_ndim=2) == [0, 1]
    assert displayed_data_axes((0, 2), world_ndim=3, data_ndim=2) == [1]
