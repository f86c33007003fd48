"""The 2D recipe n2n-unet-2d: training on simulated even/odd frame sums, held-out set, evaluation, card."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import write_particle_maps  # tests/conftest.py (tests/ is on sys.path)

import napari_cryoden.simulate as simulate_pkg
from napari_cryoden.inference import denoise
from napari_cryoden.models import load_model
from napari_cryoden import recipes
from napari_cryoden.evaluation.experiments import HELD_OUT, half_sum_noise_std, micrograph_held_out_set
from napari_cryoden.evaluation.held_out import evaluate_micrographs
from napari_cryoden.recipes import RECIPES, run_recipe

NAME = "n2n-unet-2d"
TRAIN = ("aaa1", "bbb2")
#: Smoke-test sizes: a 4-channel network, 64^2 patches of 64^2 micrographs, 2 held-out images, no
#: held-out learning curve.
TINY = {"arch_kwargs": {"ch": 4}, "patch": 64, "batch_size": 2,
        "micrographs": {"shape": [64, 64], "patches_per_micrograph": 2},
        "held_out": {"n": 2, "shape": [64, 64]}, "monitor_n": 0}


def _write_maps(folder, voxel_size=5.0):
    return write_particle_maps(folder, (*TRAIN, *HELD_OUT), voxel_size)


@pytest.fixture
def maps_dir(tmp_path):
    return _write_maps(tmp_path / "maps")


@pytest.fixture
def tiny_maps(maps_dir):
    return simulate_pkg.load_particle_maps(maps_dir)


def _finite_percentiles(block):
    """Each metric has finite 5th, 50th and 95th percentiles (int keys, or str keys after JSON)."""
    rows = {k: {str(q): v for q, v in block[k].items()} for k in ("ssim", "psnr", "mse", "nrmse")}
    return all(set(r) == {"5", "50", "95"} and all(math.isfinite(v) for v in r.values()) for r in rows.values())


def test_recipe_trains_on_training_particles_only_and_writes_a_loadable_card(maps_dir, tmp_path, monkeypatch):
    seen = []
    real = simulate_pkg.simulate_micrograph

    def recording(shape, **kw):
        seen.append(sorted(kw["particles"]))
        return real(shape, **kw)

    monkeypatch.setattr(simulate_pkg, "simulate_micrograph", recording)
    out = tmp_path / "models"
    card_path = run_recipe(NAME, maps_dir, out, steps=3, overrides=TINY, bm3d=False, log=lambda *a, **k: None)

    # the 2 held-out micrographs are made first; then 3 steps x 2 patches, 2 patches per micrograph
    assert seen == [sorted(HELD_OUT)] * 2 + [sorted(TRAIN)] * 3
    lm = load_model(card_path)
    assert lm.ndim == 2 and lm.stride == 32
    card = lm.card
    assert card["architecture"] == "N2NUNet2D" and card["arch_kwargs"] == {"ch": 4}
    assert card["ndim"] == 2 and card["voxel_size_A"] == 5.0 and card["overlap"] == 128
    t = card["training"]
    assert t["steps"] == 3 and t["seed"] == 0 and t["patch"] == 64 and t["batch_size"] == 2
    assert t["command"].startswith(f"python -m napari_cryoden.recipes {NAME} --maps ")
    assert t["overrides_not_in_command"] == TINY
    assert t["seconds"] > 0 and t["hardware"] and t["torch"]
    assert "1u6g" not in t["data"] and "3h84" not in t["data"] and "aaa1, bbb2" in t["data"]
    ho = card["held_out"]
    assert ho["particles"] == list(HELD_OUT) and "--evaluate-only" in ho["command"]
    assert ho["metrics"]["n_images"] == 2 and ho["metrics"]["bm3d"] is None
    assert "licence" in card and "normalization" in card

    image = np.random.default_rng(0).normal(size=(50, 70)).astype(np.float32)
    den = denoise(image, lm, device="cpu", precision="fp32")
    assert den.shape == image.shape and den.dtype == np.float32 and np.isfinite(den).all()


def test_evaluate_only_re_measures_the_card(maps_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "models"
    run_recipe(NAME, maps_dir, out, steps=1, overrides=TINY, bm3d=False, log=lambda *a, **k: None)
    monkeypatch.setitem(RECIPES[NAME], "held_out", {"n": 1, "shape": [64, 64], "seed": 24680})
    assert recipes.main([NAME, "--evaluate-only", "--maps", str(maps_dir), "--out", str(out), "--skip-bm3d"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["n_images"] == 1 and _finite_percentiles(scores["denoised"]) and scores["bm3d"] is None


def test_maps_at_another_voxel_size_are_refused(tmp_path, capsys):
    maps = _write_maps(tmp_path / "maps10", voxel_size=10.0)
    with pytest.raises(ValueError, match="10 Å/voxel.*5 Å/pixel"):
        run_recipe(NAME, maps, tmp_path / "out", steps=1, overrides=TINY, bm3d=False)
    assert recipes.main([NAME, "--maps", str(maps), "--out", str(tmp_path / "out"), "--skip-bm3d"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the particle maps") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_held_out_set_is_fixed_and_made_of_held_out_particles_only(tiny_maps):
    a = micrograph_held_out_set(tiny_maps, n=2, shape=(48, 48))
    b = micrograph_held_out_set(tiny_maps, n=2, shape=(48, 48))
    for sa, sb in zip(a, b):
        assert sa.params["particles"] == sorted(HELD_OUT)
        np.testing.assert_array_equal(sa.noisy, sb.noisy)
    assert [s.params["dose_total"] for s in a] == [20.0, 30.0]
    with pytest.raises(ValueError, match="held-out particles"):
        micrograph_held_out_set({k: tiny_maps[k] for k in TRAIN}, n=1, shape=(48, 48))


def test_half_sum_noise_std_matches_the_full_sum_for_unequal_halves():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(256, 256))
    n_even, n_odd, c = 3, 2, 4.0
    even = clean + rng.normal(scale=math.sqrt(c / n_even), size=clean.shape)
    odd = clean + rng.normal(scale=math.sqrt(c / n_odd), size=clean.shape)
    full = (n_even * even + n_odd * odd) / (n_even + n_odd)
    est = half_sum_noise_std(even, odd, n_even, n_odd)
    assert est == pytest.approx(float(np.std(full - clean)), rel=0.02)
    assert est == pytest.approx(math.sqrt(c / 5), rel=0.02)


def test_evaluation_reports_every_method_with_finite_percentiles(tiny_maps, tiny_2d_model):
    sims = micrograph_held_out_set(tiny_maps, n=2, shape=(48, 48))
    scores = evaluate_micrographs(load_model(tiny_2d_model), sims, bm3d=False)
    for key in ("input", "gaussian", "denoised"):
        assert _finite_percentiles(scores[key])
    assert scores["bm3d"] is None and "not run" in scores["bm3d_note"]
    assert len(scores["gaussian_sigma"]) == 2 and scores["n_images"] == 2
    # the oracle σ is at least as good as the smallest width searched
    assert scores["gaussian"]["psnr"][50] > scores["input"]["psnr"][50]
    gain = scores["median_psnr_gain_db"]
    assert gain["vs_bm3d"] is None
    assert gain["vs_gaussian"] == pytest.approx(scores["denoised"]["psnr"][50] - scores["gaussian"]["psnr"][50])


def test_bm3d_row_uses_the_even_odd_noise_estimate(tiny_maps, tiny_2d_model):
    pytest.importorskip("bm3d")
    sims = micrograph_held_out_set(tiny_maps, n=1, shape=(48, 48))
    scores = evaluate_micrographs(load_model(tiny_2d_model), sims, bm3d=True)
    assert _finite_percentiles(scores["bm3d"])
    true_std = float(np.std(sims[0].noisy - sims[0].clean))
    assert scores["bm3d_sigma_psd"][0] == pytest.approx(true_std, rel=0.1)
    assert scores["bm3d"]["psnr"][50] > scores["input"]["psnr"][50]


def test_main_asks_for_bm3d_or_skip_bm3d(maps_dir, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "bm3d", None)  # import bm3d raises ImportError
    assert recipes.main([NAME, "--maps", str(maps_dir), "--out", str(tmp_path / "o")]) == 2
    assert "--skip-bm3d" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_monitor_records_a_held_out_curve_without_changing_the_weights(maps_dir, tmp_path):
    quiet = {"log": lambda *a, **k: None, "bm3d": False, "steps": 4}
    plain = load_model(run_recipe(NAME, maps_dir, tmp_path / "a", overrides=TINY, **quiet))
    watched = load_model(run_recipe(NAME, maps_dir, tmp_path / "b",
                                    overrides={**TINY, "monitor_every": 2, "monitor_n": 1}, **quiet))
    curve = watched.card["training"]["held_out_curve"]
    assert [p["step"] for p in curve["points"]] == [2, 4] and "no checkpoint is selected" in curve["note"]
    assert all(math.isfinite(p["psnr"]) and -1 <= p["ssim"] <= 1 for p in curve["points"])
    assert "held_out_curve" not in plain.card["training"]
    history = watched.card["training"]["final_losses"]
    assert history["step"] == 4 and history["grad_norm_max"] >= history["grad_norm"] > 0
    # watching copies the network: the trained weights are those of the unwatched run
    for a, b in zip(plain.module.state_dict().values(), watched.module.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_pairs_with_clean_targets_keep_the_inputs_and_drop_the_target_noise(tiny_maps):
    from napari_cryoden.training.data import MicrographPairs

    m = {"shape": (64, 64), "patches_per_micrograph": 4, "density": (0.2, 0.3), "defocus_um": (1.0, 2.0),
         "dose_total": (30.0, 60.0), "ice_thickness": (300.0, 500.0), "n_frames": 8}
    train = {k: tiny_maps[k] for k in TRAIN}

    def batch(target):
        return MicrographPairs(train, np.random.default_rng(3), batch_size=4, patch=64, pixel_size=5.0,
                                target=target, **m).batch()

    (x_half, y_half), (x_clean, y_clean) = batch("half"), batch("clean")
    torch.testing.assert_close(x_half, x_clean)  # the same stream of inputs
    # The other half adds its own noise to the target; the clean image does not.
    assert float(((x_clean - y_clean) ** 2).mean()) < 0.75 * float(((x_half - y_half) ** 2).mean())
    with pytest.raises(ValueError, match="target must be 'half' or 'clean'"):
        MicrographPairs(train, np.random.default_rng(3), batch_size=1, patch=64, pixel_size=5.0, target="odd", **m)


class _Clock:
    """A perf_counter that advances one second per call: a time budget ends after a fixed number of steps."""

    def __init__(self):
        self.t = 0.0

    def perf_counter(self):
        self.t += 1.0
        return self.t


def test_the_2d_recipe_runs_in_time_boxed_windows_and_resumes(maps_dir, tmp_path, monkeypatch, capsys):
    """--minutes/--workdir/--resume for n2n-unet-2d: a window ends at its budget with a checkpoint
    (no model), the next resumes it; the card records both windows and the micrographs of both."""
    import napari_cryoden.training.loop as loop

    work, out = tmp_path / "work", tmp_path / "out"
    quiet = {"log": lambda *a, **k: None, "bm3d": False, "overrides": TINY}
    monkeypatch.setattr(loop, "time", _Clock())
    assert run_recipe(NAME, maps_dir, out, steps=5, minutes=0.04, workdir=work, **quiet) is None
    state = json.loads((work / "checkpoint.json").read_text())
    first = state["step"]
    assert 0 < first < 5 and state["recipe"] == NAME and not (out / f"{NAME}.json").exists()
    (window,) = state["windows"]
    assert window["steps"] == [0, first] and window["micrographs"] == first  # one micrograph per batch of 2
    with pytest.raises(ValueError, match="holds the checkpoint"):
        run_recipe(NAME, maps_dir, out, steps=5, workdir=work, **quiet)
    monkeypatch.undo()
    card = load_model(run_recipe(NAME, maps_dir, out, steps=5, workdir=work, resume=True, **quiet)).card
    t = card["training"]
    assert t["steps"] == 5 and [w["steps"] for w in t["windows"]] == [[0, first], [first, 5]]
    assert sum(w["micrographs"] for w in t["windows"]) == 5 and t["gpu_seconds"] == 0
    assert t["final_losses"]["step"] == 5 and t["final_losses"]["micrographs"] == 5
    # the command line takes the same options for 2D recipes
    with pytest.raises(SystemExit):
        recipes.main([NAME, "--maps", str(maps_dir), "--out", str(out), "--skip-bm3d", "--minutes", "1"])
    assert "--workdir" in capsys.readouterr().err


def test_a_single_2d_window_is_the_plain_run(maps_dir, tmp_path):
    """A work folder without a budget checkpoints but trains the same weights as a run without one."""
    quiet = {"log": lambda *a, **k: None, "bm3d": False, "overrides": TINY, "steps": 3}
    plain = load_model(run_recipe(NAME, maps_dir, tmp_path / "a", **quiet))
    boxed = load_model(run_recipe(NAME, maps_dir, tmp_path / "b", workdir=tmp_path / "work", **quiet))
    assert json.loads((tmp_path / "work" / "checkpoint.json").read_text())["step"] == 3
    for a, b in zip(plain.module.state_dict().values(), boxed.module.state_dict().values()):
        assert torch.equal(a, b)
