"""cryoden benchmark: held-out test sets, baselines, the run, the report and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_particle_maps  # tests/conftest.py (tests/ is on sys.path)
from scipy.ndimage import gaussian_filter

from napari_cryoden.cli import main as cli_main
from napari_cryoden.evaluation import (
    EXPERIMENTS, GAUSSIAN_SIGMAS, HELD_OUT, best_gaussian, block_matching, report_markdown, run_benchmark, targets,
    write_panels,
)
from napari_cryoden.evaluation.benchmark import GAUSSIAN, INPUT, band_medians
from napari_cryoden.evaluation.experiments import DOSE_BANDS, realistic_dose_band_set, realistic_held_out_set
from napari_cryoden.metrics import image_metrics
from napari_cryoden.simulate import load_particle_maps

TRAIN = ("aaa1",)


def _write_maps(folder, voxel_size, names=(*TRAIN, *HELD_OUT)):
    return write_particle_maps(folder, names, voxel_size)


@pytest.fixture
def maps10(tmp_path):
    return _write_maps(tmp_path / "maps10", 10.0)


@pytest.fixture
def maps5(tmp_path):
    return _write_maps(tmp_path / "maps5", 5.0)


@pytest.mark.parametrize("name", ["control", "saltpepper", "unseen", "multiple"])
def test_thesis_experiments_are_seeded_64_cubes_with_a_noise_level(name, maps10):
    maps = load_particle_maps(maps10)
    exp = EXPERIMENTS[name]
    a, b = exp.make(maps, 3, exp.seed), exp.make(maps, 3, exp.seed)
    other = exp.make(maps, 3, exp.seed + 7)
    assert len(a) == 3 and exp.ndim == 3
    for x, y, z in zip(a, b, other):
        assert x.noisy.shape == x.clean.shape == (64, 64, 64)
        np.testing.assert_array_equal(x.noisy, y.noisy)
        assert not np.array_equal(x.noisy, z.noisy)
        assert x.noise_std == pytest.approx(float(np.std(x.noisy.astype(np.float64) - x.clean)), rel=1e-6)
        assert x.noise_std > 0


def test_salt_and_pepper_sets_up_to_a_tenth_of_the_voxels_to_the_extremes(maps10):
    item = EXPERIMENTS["saltpepper"].make(load_particle_maps(maps10), 1, 5)[0]
    changed = item.noisy != item.clean
    # hits on voxels already at the extreme (the empty background is the minimum) change nothing
    assert np.isin(item.noisy[changed], [item.clean.min(), item.clean.max()]).all()
    assert 0.04 < changed.mean() <= 0.11


def test_test_sets_refuse_maps_without_the_held_out_proteins(tmp_path):
    maps = load_particle_maps(_write_maps(tmp_path / "train_only", 10.0, names=TRAIN))
    for name in ("control", "multiple", "realistic"):
        with pytest.raises(ValueError, match="held-out particles"):
            EXPERIMENTS[name].make(maps, 1, 0)
    # the unseen-particle set is one protein, 3h84
    maps = load_particle_maps(_write_maps(tmp_path / "no_3h84", 10.0, names=(*TRAIN, "1u6g")))
    with pytest.raises(ValueError, match="3h84"):
        EXPERIMENTS["unseen"].make(maps, 1, 0)


TINY_TOMO = (8, 32, 32)  # the benchmark's tomograms are 64 x 128 x 128; the settings are what is tested


def test_realistic_set_has_twelve_tomograms_in_three_dose_bands_of_held_out_proteins(maps10, tmp_path):
    maps = load_particle_maps(maps10)
    items = realistic_dose_band_set(maps, shape=TINY_TOMO)
    assert len(items) == EXPERIMENTS["realistic"].default_n == 12
    bands = {}
    for i, it in enumerate(items):
        bands.setdefault(it.band, []).append(it.dose)
        assert it.band == list(DOSE_BANDS)[i % 3] and it.noisy.shape == it.clean.shape == TINY_TOMO
        assert 2.0 <= it.defocus_um <= 5.0 and it.noise_std > 0
    assert list(bands) == ["low", "mid", "high"] and all(len(d) == 4 for d in bands.values())
    assert max(bands["low"]) <= 30 < min(bands["mid"]) and max(bands["mid"]) < min(bands["high"])
    assert 15 <= min(bands["low"]) and max(bands["high"]) <= 160
    assert all(sorted({it.defocus_um for it in items if it.band == b}) == [2.0, 3.0, 4.0, 5.0] for b in bands)
    # only the held-out proteins: dropping the training protein from the maps changes nothing
    held_out = load_particle_maps(_write_maps(tmp_path / "held_out_only", 10.0, names=HELD_OUT))
    for a, b in zip(items[:3], realistic_dose_band_set(held_out, n=3, shape=TINY_TOMO)):
        np.testing.assert_array_equal(a.noisy, b.noisy)
        np.testing.assert_array_equal(a.clean, b.clean)
    with pytest.raises(ValueError, match="at least one dose"):
        realistic_dose_band_set(maps, n=1, shape=TINY_TOMO, bands={"low": ()})
    with pytest.raises(ValueError, match="positive"):
        realistic_dose_band_set(maps, n=1, shape=TINY_TOMO, bands={"low": (0.0,)})


def test_the_model_cards_realistic_set_is_unchanged(maps10):
    from napari_cryoden.simulate.tomogram import simulate_tomogram

    maps = load_particle_maps(maps10)
    shape = (16, 32, 32)
    items = realistic_held_out_set(maps, shape=shape, items=True)
    pairs = realistic_held_out_set(maps, shape=shape)
    parts = {k: maps[k] for k in HELD_OUT}
    # the settings of the set before the dose bands were added, written out
    for i, (dose, defocus) in enumerate([(120.0, 2.0), (100.0, 3.0), (80.0, 4.0), (60.0, 5.0)]):
        sim = simulate_tomogram(shape, particles=parts, density=0.15, membranes=1, defocus_um=defocus,
                                dose_total=dose, seed=54321 + i)
        np.testing.assert_array_equal(items[i].noisy, sim.noisy)
        np.testing.assert_array_equal(items[i].clean, sim.clean)
        np.testing.assert_array_equal(pairs[i][0], sim.noisy)
        assert (items[i].dose, items[i].defocus_um, items[i].band) == (dose, defocus, None)
    # standard deviations of noisy and clean, and the noise estimate, measured before the change
    before = [(0.133259, 0.074793, 0.112978), (0.152542, 0.097952, 0.120417), (0.149122, 0.074022, 0.130613),
              (0.179604, 0.102107, 0.15176)]
    measured = [(np.std(it.noisy.astype(np.float64)), np.std(it.clean.astype(np.float64)), it.noise_std)
                for it in items]
    np.testing.assert_allclose(measured, before, rtol=1e-4)


def test_band_medians_are_the_medians_of_each_bands_items():
    def row(psnr, ssim):
        return {"psnr": psnr, "ssim": ssim, "mse": 0.0, "nrmse": 0.0}

    e = {"methods": {
        "a": {"rows": [row(10, 0.1), row(20, 0.2), row(11, 0.3), row(30, 0.4), row(12, 0.5), row(40, 0.6)]},
        "BM4D": {"rows": [row(5, 0.9), None, None, row(7, 0.8), None, None]},
    }, "bands": {"low": {"items": [0, 2, 4]}, "high": {"items": [1, 3, 5]}}}
    med = band_medians(e)
    assert med["a"] == {"low": {"psnr": 11.0, "ssim": 0.3, "n": 3}, "high": {"psnr": 30.0, "ssim": 0.4, "n": 3}}
    assert med["BM4D"]["low"] == {"psnr": 5.0, "ssim": 0.9, "n": 1} and med["BM4D"]["high"]["psnr"] == 7.0
    del e["bands"]  # no bands: one band of all items
    assert band_medians(e)["a"] == {"all": {"psnr": 16.0, "ssim": 0.35, "n": 6}}
    assert band_medians(e)["BM4D"]["all"]["n"] == 2


def _band_result(gan, gauss, bm4d, gan_ssim=0.6, gauss_ssim=0.5, other=None):
    """A realistic result with bands low/mid/high of 2 items each; per-band PSNRs of every method."""
    bands = {"low": [0, 3], "mid": [1, 4], "high": [2, 5]}

    def rows(per_band, ssim):
        out = [None] * 6
        for b, idx in bands.items():
            for i in idx:
                out[i] = None if per_band[b] is None else {"psnr": per_band[b], "ssim": ssim, "mse": 1.0, "nrmse": 1.0}
        return out

    methods = {INPUT: {"rows": rows({b: 10.0 for b in bands}, 0.1)}, GAUSSIAN: {"rows": rows(gauss, gauss_ssim)},
               "BM4D": {"rows": [r if i < 3 else None for i, r in enumerate(rows(bm4d, 0.4))]},
               "gan": {"rows": rows(gan, gan_ssim)}}
    if other:
        methods["fast"] = {"rows": rows(other, 0.7)}
    return {"experiments": {"realistic": {"methods": methods, "bands": {b: {"items": i} for b, i in bands.items()}}}}


def test_realistic_targets_are_checked_in_every_dose_band():
    gauss = {"low": 20.0, "mid": 23.0, "high": 25.0}
    met = targets(_band_result({"low": 22.6, "mid": 25.6, "high": 28.0}, gauss, {"low": 21.0, "mid": 24.0,
                                                                               "high": 26.0},
                               other={"low": 24.0, "mid": 26.5, "high": 29.0}), default_3d="gan")
    assert [t["met"] for t in met] == [True, True, True, True]
    assert met[0]["value"] == "low +2.60, mid +2.60, high +3.00 dB" and "2.5 dB" in met[0]["target"]
    assert met[1]["bands"]["low"] == {"value": pytest.approx(1.6), "met": True}
    assert met[3]["value"].startswith("fast +3.83 dB") and "3.5 dB" in met[3]["target"]
    # one band short of each target: not met, although the other two bands (and the mean) would pass
    missed = targets(_band_result({"low": 22.0, "mid": 26.0, "high": 29.0}, gauss,
                                  {"low": 21.0, "mid": 26.5, "high": 26.0}, gan_ssim=0.5,
                                  other={"low": 21.0, "mid": 25.0, "high": 27.0}), default_3d="gan")
    assert [t["met"] for t in missed] == [False, False, False, False]
    assert [missed[0]["bands"][b]["met"] for b in ("low", "mid", "high")] == [False, True, True]
    assert [missed[1]["bands"][b]["met"] for b in ("low", "mid", "high")] == [True, False, True]
    assert missed[3]["value"].startswith("gan +3.00 dB")  # the best of the zoo by the band mean, 3.0 < 3.5
    # BM4D did not run on the high band: that check cannot be met
    partial = _band_result({"low": 23.0, "mid": 26.0, "high": 29.0}, gauss, {"low": 21.0, "mid": 24.0, "high": None})
    bm = targets(partial, default_3d="gan")[1]
    assert bm["met"] is None and bm["value"] == "low +2.00, mid +2.00, high not run dB"
    assert targets(partial, default_3d="other")[0] == {"target": "realistic: other runs", "value": "not run",
                                                       "met": None}


def test_multiple_particles_hold_more_protein_than_single_ones(maps10):
    maps = load_particle_maps(maps10)
    single = EXPERIMENTS["unseen"].make(maps, 2, 1)
    multi = EXPERIMENTS["multiple"].make(maps, 2, 1)
    assert min(i.clean.sum() for i in multi) > 5 * max(i.clean.sum() for i in single)


def test_best_gaussian_is_the_psnr_optimum_over_the_grid(rng):
    clean = gaussian_filter(rng.normal(size=(24, 24, 24)), 2).astype(np.float32)
    noisy = (clean + 0.5 * clean.std() * rng.normal(size=clean.shape)).astype(np.float32)
    out, sigma, m = best_gaussian(noisy, clean)
    brute = {s: image_metrics(gaussian_filter(noisy.astype(np.float64), s, mode="reflect"), clean)["psnr"]
             for s in GAUSSIAN_SIGMAS}
    assert sigma == max(brute, key=brute.get) and m["psnr"] == pytest.approx(brute[sigma])
    assert out.dtype == np.float32 and m["psnr"] == pytest.approx(image_metrics(out, clean)["psnr"], abs=1e-3)


def test_block_matching_denoises_or_says_what_to_install(rng, monkeypatch):
    clean = gaussian_filter(rng.normal(size=(16, 32, 32)), 2)
    noisy = clean + 0.1 * rng.normal(size=clean.shape)
    for ndim, x, ref in ((3, noisy, clean), (2, noisy[8], clean[8])):
        pytest.importorskip("bm4d" if ndim == 3 else "bm3d")
        name, run = block_matching(ndim)
        out = run(x, 0.1)
        assert name == ("BM4D" if ndim == 3 else "BM3D") and out.shape == x.shape and out.dtype == np.float32
        assert image_metrics(out, ref)["psnr"] > image_metrics(x, ref)["psnr"] + 3
    monkeypatch.setitem(__import__("sys").modules, "bm4d", None)
    with pytest.raises(ValueError, match=r"pip install 'napari-cryoden\[benchmark\]'"):
        block_matching(3)
    with pytest.raises(ValueError, match="ndim must be 2 or 3"):
        block_matching(4)


def test_run_benchmark_scores_every_method_and_reports_in_the_thesis_layout(maps10, maps5, tiny_2d_model, tmp_path):
    logs = []
    result = run_benchmark(["unseen", "micrographs"], ["tiny-test", tiny_2d_model], maps={10.0: maps10, 5.0: maps5},
                           n=2, bm_n=0, bm_n_2d=0, precision="fp32", log=logs.append)
    unseen, mic = result["experiments"]["unseen"], result["experiments"]["micrographs"]
    # 3D models on volumes, 2D models on micrographs, never the other way round
    assert list(unseen["methods"]) == [INPUT, GAUSSIAN, "tiny-test"]
    assert list(mic["methods"]) == [INPUT, GAUSSIAN, tiny_2d_model]
    for e in (unseen, mic):
        for m in e["methods"].values():
            assert len(m["rows"]) == 2 and all(set(r) == {"ssim", "psnr", "mse", "nrmse"} for r in m["rows"])
        assert list(e["_panels"])[-1] == "clean" and len(e["_panels"]) == len(e["methods"]) + 1
    # the rows are the scores of that method on that item: the input row is image_metrics(noisy, clean)
    item = EXPERIMENTS["unseen"].make(load_particle_maps(maps10), 2, EXPERIMENTS["unseen"].seed)[1]
    assert unseen["methods"][INPUT]["rows"][1] == image_metrics(item.noisy, item.clean)
    assert any("tiny-test median PSNR" in line for line in logs)

    json.dumps({k: {kk: vv for kk, vv in e.items() if kk != "_panels"} for k, e in result["experiments"].items()})
    pngs = write_panels(result, tmp_path / "img")
    assert sorted(pngs) == ["micrographs", "unseen"] and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs.values())
    text = report_markdown(result, command="cryoden benchmark X", panels={"unseen": "img/benchmark_unseen.png"})
    assert "| Method | P % | SSIM | PSNR dB | MSE ×1000 | NRMSE | n | seconds |" in text
    assert text.count("| tiny-test | 5 |") == 1 and "|  | 95 |" in text
    assert "cryoden benchmark X" in text and "![unseen](img/benchmark_unseen.png)" in text
    assert "Thesis best medians" in text  # unseen mirrors thesis Table 4


def test_run_benchmark_runs_block_matching_on_the_first_items_only(maps10, tiny_model_dir, monkeypatch):
    from napari_cryoden.evaluation import benchmark

    calls = []

    def fake(ndim):  # BM4D itself takes ~30 s per 64^3 volume; it is tested on a small one above
        def run(x, sigma):
            calls.append(sigma)
            return gaussian_filter(x, 1.0)
        return "BM4D", run

    monkeypatch.setattr(benchmark, "block_matching", fake)
    result = run_benchmark(["unseen"], ["tiny-test"], maps={10.0: maps10}, n=2, bm_n=1, precision="fp32")
    rows = result["experiments"]["unseen"]["methods"]["BM4D"]["rows"]
    assert rows[0] is not None and rows[1] is None and len(calls) == 1
    assert calls[0] == pytest.approx(result["experiments"]["unseen"]["methods"][INPUT]["rows"][0]["mse"] ** 0.5, rel=1e-2)
    text = report_markdown(result, command="c")
    assert "(n=1)" in text and "on the 1 items BM4D ran on" in text


def test_run_benchmark_reports_the_realistic_set_per_dose_band(maps10, tiny_model_dir, monkeypatch):
    import dataclasses

    from napari_cryoden.evaluation import benchmark

    calls = []

    def fake(ndim):
        def run(x, sigma):
            calls.append(x.shape)
            return gaussian_filter(x, 1.0)
        return "BM4D", run

    monkeypatch.setattr(benchmark, "block_matching", fake)
    exp = EXPERIMENTS["realistic"]
    monkeypatch.setitem(EXPERIMENTS, "realistic", dataclasses.replace(
        exp, make=lambda maps, n, seed: realistic_dose_band_set(maps, n=n, seed=seed, shape=TINY_TOMO)))
    result = run_benchmark(["realistic"], ["tiny-test"], maps={10.0: maps10}, n=6, bm_n=1, precision="fp32")
    e = result["experiments"]["realistic"]
    # BM4D on the first item of each band (items 0, 1, 2), not on the first item only
    assert [r is not None for r in e["methods"]["BM4D"]["rows"]] == [True] * 3 + [False] * 3 and len(calls) == 3
    assert e["bands"] == {"low": {"items": [0, 3], "dose": [15.0, 20.0]}, "mid": {"items": [1, 4], "dose": [40.0, 50.0]},
                          "high": {"items": [2, 5], "dose": [100.0, 120.0]}}
    assert [it["dose"] for it in e["items"]] == [15.0, 40.0, 100.0, 20.0, 50.0, 120.0]
    assert e["band_medians"] == band_medians(e)
    rows = e["methods"]["tiny-test"]["rows"]
    assert e["band_medians"]["tiny-test"]["mid"]["psnr"] == pytest.approx(np.median([rows[1]["psnr"], rows[4]["psnr"]]))
    json.dumps({k: v for k, v in e.items() if k != "_panels"}, allow_nan=True)
    text = report_markdown(result, command="c")
    assert "## Summary per dose band (realistic): median PSNR (dB) / SSIM" in text
    assert "| Method | low: 15–20 e⁻/Å² (n=2) | mid: 40–50 e⁻/Å² (n=2) | high: 100–120 e⁻/Å² (n=2) |" in text
    assert "(realistic: of each dose band, so 3 items)" in text and "low (items 0, 3): 15, 20 e⁻/Å²" in text
    assert "| realistic: upsampleunet48-gan runs | not run | n/a |" in text  # targets name the default model
    med = e["band_medians"]["BM4D"]["high"]
    assert f"| BM4D | {e['band_medians']['BM4D']['low']['psnr']:.2f}" in text and med["n"] == 1
    assert "| BM4D |" in text and "(n=1)" in text


def test_bm3d_runs_on_every_micrograph_unless_bm_n_2d_says_otherwise(maps10, maps5, tiny_2d_model, monkeypatch):
    from napari_cryoden.evaluation import benchmark

    calls = {2: 0, 3: 0}

    def fake(ndim):  # the real BM3D/BM4D are tested on small inputs above
        def run(x, sigma):
            calls[ndim] += 1
            return gaussian_filter(x, 1.0)
        return ("BM4D" if ndim == 3 else "BM3D"), run

    monkeypatch.setattr(benchmark, "block_matching", fake)
    maps = {10.0: maps10, 5.0: maps5}
    result = run_benchmark(["unseen", "micrographs"], ["tiny-test", tiny_2d_model], maps=maps, n=3, bm_n=1,
                           precision="fp32")
    assert calls == {3: 1, 2: 3}  # bm_n counts tomogram items only; BM3D defaults to all micrographs
    assert all(r is not None for r in result["experiments"]["micrographs"]["methods"]["BM3D"]["rows"])
    assert "BM3D (micrographs) on all items" in report_markdown(result, command="c")
    result = run_benchmark(["micrographs"], [tiny_2d_model], maps=maps, n=3, bm_n=0, bm_n_2d=1, precision="fp32")
    assert calls[2] == 4 and [r is None for r in result["experiments"]["micrographs"]["methods"]["BM3D"]["rows"]] \
        == [False, True, True]
    assert "BM3D" not in run_benchmark(["micrographs"], [tiny_2d_model], maps=maps, n=1, bm_n_2d=0,
                                       precision="fp32")["experiments"]["micrographs"]["methods"]
    with pytest.raises(ValueError, match="bm_n_2d must be at least 0"):
        run_benchmark(["micrographs"], [tiny_2d_model], maps=maps, bm_n_2d=-1)


def test_run_benchmark_refuses_bad_requests(maps10, tiny_model_dir):
    with pytest.raises(ValueError, match="unknown experiment 'tables'"):
        run_benchmark(["tables"], ["tiny-test"], maps={10.0: maps10})
    with pytest.raises(ValueError, match="n must be at least 1"):
        run_benchmark(["unseen"], ["tiny-test"], maps={10.0: maps10}, n=0)
    with pytest.raises(ValueError, match="5 Å/voxel"):
        run_benchmark(["micrographs"], ["tiny-test"], maps={10.0: maps10}, bm_n=0)
    with pytest.raises(ValueError, match="no-such-model"):
        run_benchmark(["unseen"], ["no-such-model"], maps={10.0: maps10}, bm_n=0)


def _result(gan_psnr, gauss_psnr, bm4d_psnr, ssim):
    def rows(psnr, s=0.5):
        return [{"psnr": psnr, "ssim": s, "mse": 1.0, "nrmse": 1.0}] * 3

    exp = {"methods": {INPUT: {"rows": rows(10)}, GAUSSIAN: {"rows": rows(gauss_psnr)},
                       "BM4D": {"rows": rows(bm4d_psnr)[:1] + [None, None]}, "gan": {"rows": rows(gan_psnr, ssim)}}}
    return {"experiments": {"multiple": exp, "control": exp}}


def test_targets_compare_the_default_with_the_baselines_and_the_thesis():
    met = targets(_result(gan_psnr=25.0, gauss_psnr=22.9, bm4d_psnr=24.0, ssim=0.99), default_3d="gan")
    assert [t["met"] for t in met] == [True, True, True]
    assert met[0]["value"] == "+2.10 dB" and "0.9934" in met[2]["target"]
    missed = targets(_result(gan_psnr=24.0, gauss_psnr=22.9, bm4d_psnr=24.5, ssim=0.98), default_3d="gan")
    assert [t["met"] for t in missed] == [False, False, False]
    absent = targets(_result(24, 22, 23, 0.9), default_3d="other")
    assert absent[0]["met"] is None and absent[0]["value"] == "not run"


def test_cli_benchmark_writes_report_json_and_panels_and_never_overwrites(maps10, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "report.md"
    argv = ["benchmark", "--experiments", "unseen", "--models", "tiny-test", "--n", "1", "--bm-n", "0",
            "--maps", str(maps10), "--out", str(out), "--precision", "fp32"]
    assert cli_main(argv) == 0
    text = out.read_text()
    assert text.startswith("# Benchmarks") and "## Unseen particle" in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["experiments"]["unseen"]["n"] == 1 and "_panels" not in data["experiments"]["unseen"]
    assert (tmp_path / "img" / "benchmark_unseen.png").exists()
    before = out.read_bytes()
    capsys.readouterr()
    assert cli_main(argv) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


@pytest.mark.parametrize("extra, message", [
    (["--experiments", "unseen"], "--maps is needed for unseen"),
    (["--experiments", "micrographs"], "--maps-2d is needed for micrographs"),
    (["--experiments", "nope", "--maps", "."], "unknown experiment 'nope'"),
    (["--experiments", "unseen", "--maps", "no/such/dir"], "is not a folder"),
    (["--n", "0"], "expected a positive integer"),
])
def test_cli_benchmark_bad_options_exit_2_with_one_line(extra, message, tmp_path, capsys):
    assert cli_main(["benchmark", "--out", str(tmp_path / "r.md"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())
