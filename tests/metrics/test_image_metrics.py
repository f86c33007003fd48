"""SSIM, PSNR, MSE and NRMSE, alone and with the FSC in :func:`compare`, on whole arrays and regions."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_cryoden.metrics import (
    CSV_COLUMNS, FSC_CSV_COLUMNS, compare, compare_slices, fourier_shell_correlation, image_metrics,
    summarize, write_fsc_csv, write_metrics_csv,
)


@pytest.fixture
def pair(rng):
    """A smooth, anisotropic (12, 30, 34) reference and a noisy copy."""
    z, y, x = np.meshgrid(np.arange(12), np.arange(30), np.arange(34), indexing="ij")
    clean = (np.sin(z / 3.0) + np.cos(y / 4.0) * np.sin(x / 5.0)).astype(np.float32)
    noisy = (clean + 0.3 * rng.normal(size=clean.shape)).astype(np.float32)
    return noisy, clean


# ------------------------------------------------------------------------------ image_metrics
def test_identical_volumes_score_perfectly(pair):
    _, clean = pair
    scores = image_metrics(clean, clean.copy())
    assert scores == {"ssim": pytest.approx(1.0), "psnr": np.inf, "mse": 0.0, "nrmse": 0.0}


def test_definitions_match_the_formulas(pair):
    """PSNR from the reference's range, NRMSE with the Euclidean norm (van Gijn 2019, section 4.1)."""
    noisy, clean = pair
    scores = image_metrics(noisy, clean)
    err = noisy.astype(np.float64) - clean
    mse = np.mean(err**2)
    data_range = float(clean.max() - clean.min())
    assert scores["mse"] == pytest.approx(mse)
    assert scores["psnr"] == pytest.approx(10 * np.log10(data_range**2 / mse))
    assert scores["nrmse"] == pytest.approx(np.linalg.norm(err) / np.linalg.norm(clean.astype(np.float64)))
    assert 0 < scores["ssim"] < 1


def test_data_range_comes_from_the_reference_not_the_image(pair):
    noisy, clean = pair
    spiky = noisy.copy()
    spiky[0, 0, 0] += 100.0  # widens the image's range, not the reference's
    data_range = float(clean.max() - clean.min())
    mse = float(np.mean((spiky.astype(np.float64) - clean) ** 2))
    assert image_metrics(spiky, clean)["psnr"] == pytest.approx(10 * np.log10(data_range**2 / mse))
    assert image_metrics(spiky, clean, data_range=2 * data_range)["psnr"] == pytest.approx(
        10 * np.log10(4 * data_range**2 / mse)
    )


def test_image_metrics_errors(pair):
    noisy, clean = pair
    with pytest.raises(ValueError, match="differs from reference shape"):
        image_metrics(noisy[:, :, :-1], clean)
    with pytest.raises(ValueError, match="constant"):
        image_metrics(noisy, np.zeros_like(clean))


def test_summarize_gives_percentiles_per_metric():
    rows = [{"ssim": s, "psnr": 20.0 + s} for s in np.linspace(0, 1, 101)]
    table = summarize(rows)
    assert table["ssim"] == {5: pytest.approx(0.05), 50: pytest.approx(0.5), 95: pytest.approx(0.95)}
    assert table["psnr"][50] == pytest.approx(20.5)


# ------------------------------------------------------------------------------ compare
def test_compare_reports_metrics_and_fsc(pair):
    noisy, clean = pair
    report = compare(noisy, clean, voxel_size=(12.0, 10.0, 10.0))
    assert report.scores == pytest.approx(image_metrics(noisy, clean))
    expected = fourier_shell_correlation(noisy, clean, voxel_size=(12.0, 10.0, 10.0))
    np.testing.assert_allclose(report.curve.fsc, expected.fsc)
    assert report.res_fsc_05 == report.curve.crossing(0.5)
    assert report.roi is None and report.slice_index is None


def test_identical_volumes_give_valid_json(pair):
    """Infinite PSNR and never-reached crossings are JSON null, not Infinity."""
    _, clean = pair
    data = compare(clean, clean.copy(), voxel_size=10.0).to_json()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["psnr"] is None
    assert data["ssim"] == pytest.approx(1.0) and data["mse"] == 0.0 and data["nrmse"] == 0.0
    assert data["res_fsc_0.5_A"] is None and data["res_fsc_0.143_A"] is None
    assert list(data) == ["ssim", "psnr", "mse", "nrmse", "fsc", "res_fsc_0.5_A", "res_fsc_0.143_A"]
    resolutions, values = np.array(data["fsc"]).T
    np.testing.assert_allclose(values, 1.0, atol=1e-6)
    assert resolutions[0] == pytest.approx(12 * 10.0) and resolutions[-1] == pytest.approx(2 * 10.0)
    assert np.all(np.diff(resolutions) < 0)


def test_region_of_interest_equals_cropping_first(pair):
    noisy, clean = pair
    roi = (slice(0, 12), slice(5, 25), slice(3, 30))
    report = compare(noisy, clean, voxel_size=10.0, roi=roi)
    cropped = compare(noisy[roi], clean[roi], voxel_size=10.0)
    assert report.scores == pytest.approx(cropped.scores)
    np.testing.assert_allclose(report.curve.fsc, cropped.curve.fsc)
    assert report.roi == roi
    assert report.row()["roi"] == "z 0:12, y 5:25, x 3:30"
    # The data range is the region's, so a spike elsewhere does not change the scores.
    spiked = clean.copy()
    spiked[0, 0, 0] = 100.0
    assert compare(noisy, spiked, voxel_size=10.0, roi=roi).scores == pytest.approx(report.scores)


def test_region_of_a_memory_map_is_read_in_place(tmp_path, pair):
    noisy, clean = pair
    np.save(tmp_path / "noisy.npy", noisy)
    np.save(tmp_path / "clean.npy", clean)
    mapped = [np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in ("noisy", "clean")]
    roi = (slice(2, 10), slice(0, 30), slice(0, 34))
    report = compare(*mapped, voxel_size=10.0, roi=roi)
    assert report.scores == pytest.approx(compare(noisy, clean, voxel_size=10.0, roi=roi).scores)


def test_compare_slices_scores_every_slice(pair):
    noisy, clean = pair
    roi = (slice(3, 6), slice(0, 30), slice(2, 34))
    reports = compare_slices(noisy, clean, voxel_size=(50.0, 10.0, 10.0), roi=roi)
    assert [r.slice_index for r in reports] == [3, 4, 5]
    data_range = float(clean[roi].max() - clean[roi].min())
    for r in reports:
        z = r.slice_index
        expected = image_metrics(noisy[z, 0:30, 2:34], clean[z, 0:30, 2:34], data_range=data_range)
        assert r.scores == pytest.approx(expected)
        assert r.curve.voxel_size == (10.0, 10.0)
        assert r.curve.nyquist == pytest.approx(20.0)


def test_half_maps_get_only_the_fsc(pair, rng):
    _, clean = pair
    even, odd = clean + 0.3 * rng.normal(size=(2, *clean.shape))
    report = compare(even, odd, voxel_size=10.0, half_maps=True)
    assert report.scores is None
    data = report.to_json()
    assert data["ssim"] is None and data["psnr"] is None
    assert len(data["fsc"]) == len(report.curve.fsc) - 1
    assert all(r.scores is None for r in compare_slices(even, odd, half_maps=True))


@pytest.mark.parametrize("func", [compare, compare_slices])
def test_different_shapes_are_a_clear_error(pair, func):
    noisy, clean = pair
    with pytest.raises(ValueError, match=r"image shape \(12, 30, 33\) differs from reference shape \(12, 30, 34\)"):
        func(noisy[..., :-1], clean)


def test_compare_errors_name_the_problem(pair):
    noisy, clean = pair
    with pytest.raises(ValueError, match="empty along axis 1"):
        compare(noisy, clean, roi=(slice(0, 12), slice(10, 10), slice(0, 34)))
    with pytest.raises(ValueError, match="constant"):
        compare(noisy, np.ones_like(clean))
    with pytest.raises(ValueError, match="stack"):
        compare_slices(noisy[0], clean[0])
    with pytest.raises(ValueError, match=r"SSIM needs at least 7 voxels along every axis.*\(5, 30, 34\)"):
        compare(noisy[:5], clean[:5])
    assert compare(noisy[:5], clean[:5], half_maps=True).scores is None  # the FSC alone is fine


# ------------------------------------------------------------------------------ CSV
def test_csv_export_round_trips(tmp_path, pair):
    noisy, clean = pair
    reports = {"noisy": compare(noisy, clean, voxel_size=10.0), "clean": compare(clean, clean, voxel_size=10.0)}
    rows = [{"image": name, "reference": "clean", **r.row()} for name, r in reports.items()]
    write_metrics_csv(tmp_path / "metrics.csv", rows)
    with open(tmp_path / "metrics.csv", newline="", encoding="utf-8") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == ["image", "reference", *CSV_COLUMNS]
    assert float(back[0]["ssim"]) == reports["noisy"].scores["ssim"]
    assert back[1]["psnr"] == "inf" and float(back[1]["psnr"]) == np.inf
    assert back[1]["res_fsc_0.5_A"] == ""  # never crossed
    assert back[0]["roi"] == "whole"

    write_fsc_csv(tmp_path / "fsc.csv", {name: r.curve for name, r in reports.items()})
    with open(tmp_path / "fsc.csv", newline="", encoding="utf-8") as fh:
        lines = list(csv.DictReader(fh))
    assert tuple(lines[0]) == FSC_CSV_COLUMNS
    n = len(reports["noisy"].curve.fsc)
    assert len(lines) == 2 * n
    assert lines[0]["resolution_A"] == "inf" and float(lines[1]["resolution_A"]) == pytest.approx(120.0)
    np.testing.assert_allclose([float(r["fsc"]) for r in lines[:n]], reports["noisy"].curve.fsc)
