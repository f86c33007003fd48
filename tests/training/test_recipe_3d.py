"""The 3D recipes: thesis family on thesis + realistic data, written with a complete model card."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_particle_maps  # tests/conftest.py (tests/ is on sys.path)

from napari_cryoden.device import resolve_precision
from napari_cryoden.models import load_model
from napari_cryoden import recipes
from napari_cryoden.recipes import HELD_OUT, RECIPES, run_recipe

TRAIN = ("aaa1", "bbb2")


@pytest.fixture
def maps_dir(tmp_path):
    return write_particle_maps(tmp_path / "maps", (*TRAIN, *HELD_OUT), 10.0)


@pytest.mark.parametrize("name", ["upsampleunet48-wgangp", "unet48-ae"])
def test_3d_recipe_trains_and_writes_a_loadable_card(name, maps_dir, tmp_path, monkeypatch):
    small_thesis = recipes.held_out_set
    monkeypatch.setattr(recipes, "held_out_set", lambda maps: small_thesis(maps, n=2, box=32))
    small_realistic = recipes.realistic_held_out_set
    monkeypatch.setattr(recipes, "realistic_held_out_set",
                        lambda maps: small_realistic(maps, n=1, shape=(32, 48, 48)))
    r = RECIPES[name]
    # smoke-test sizes: 8 channels, batches of 2, small realistic tomograms with few particles
    monkeypatch.setitem(RECIPES, name, {
        **r, "arch_kwargs": {**r["arch_kwargs"], "ch": 8}, "batch_size": 2,
        "realistic": {**r["realistic"], "shape": [32, 48, 48], "density": [0.02, 0.02], "patches_per_volume": 2},
    })
    card_path = run_recipe(name, maps_dir, tmp_path / "out", steps=1, log=lambda *a, **k: None)
    card = json.loads(card_path.read_text())
    t = card["training"]
    assert card["architecture"] == r["architecture"] and t["steps"] == 1 and t["seed"] == 0
    assert t["command"] == f"python -m napari_cryoden.recipes {name} --maps ../shared/data/maps_10A " \
                           "--out models --steps 1"
    assert "realistic simulated tomograms" in t["data"] and "aaa1, bbb2" in t["data"]
    assert t["seconds"] > 0 and t["hardware"] and card["deviations_from_thesis"]
    if r["mode"] == "wgangp":
        assert "WGAN-GP" in t["losses"] and "2 critic updates" in t["losses"] and "betas (0.0, 0.9)" in t["optimizer"]
    else:
        assert t["losses"] == "supervised L1 to the clean target"
    ho = card["held_out"]
    assert ho["particles"] == list(HELD_OUT) and ho["metrics"]["n_volumes"] == 2
    assert ho["realistic_metrics"]["n_volumes"] == 1
    model = load_model(card_path)
    assert model.ndim == 3 and model.card["training"]["steps"] == 1


def _small_recipe(monkeypatch, name):
    r = RECIPES[name]
    monkeypatch.setitem(RECIPES, name, {
        **r, "arch_kwargs": {**r["arch_kwargs"], "ch": 8}, "batch_size": 2,
        "realistic": {**r["realistic"], "shape": [32, 48, 48], "density": [0.02, 0.02], "patches_per_volume": 2},
    })
    small_thesis = recipes.held_out_set
    monkeypatch.setattr(recipes, "held_out_set", lambda maps: small_thesis(maps, n=2, box=32))
    small_realistic = recipes.realistic_held_out_set
    monkeypatch.setattr(recipes, "realistic_held_out_set", lambda maps: small_realistic(maps, n=1, shape=(32, 48, 48)))


class _Clock:
    """A perf_counter that advances one second per call: a time budget ends after a fixed number of steps."""

    def __init__(self):
        self.t = 0.0

    def perf_counter(self):
        self.t += 1.0
        return self.t


def test_a_recipe_runs_in_time_boxed_windows_and_resumes(maps_dir, tmp_path, monkeypatch):
    import napari_cryoden.training.loop as loop

    name = "upsampleunet48-gan"
    _small_recipe(monkeypatch, name)
    work, out = tmp_path / "work", tmp_path / "out"
    quiet = {"log": lambda *a, **k: None}
    monkeypatch.setattr(loop, "time", _Clock())
    # 0.04 min = 2.4 fake seconds: the budget ends the window after a few steps, with a checkpoint
    assert run_recipe(name, maps_dir, out, steps=5, minutes=0.04, workdir=work, **quiet) is None
    ckpt = work / "checkpoint.safetensors"
    state = json.loads((work / "checkpoint.json").read_text())
    first = state["step"]
    assert 0 < first < 5 and state["recipe"] == name and state["steps"] == 5
    assert ckpt.stat().st_size < 16 * 2**20 and not (out / f"{name}.json").exists()
    with pytest.raises(ValueError, match="holds the checkpoint"):
        run_recipe(name, maps_dir, out, steps=5, workdir=work, **quiet)
    with pytest.raises(ValueError, match="not upsampleunet48-gan for 6"):
        run_recipe(name, maps_dir, out, steps=6, workdir=work, resume=True, **quiet)
    monkeypatch.undo()
    _small_recipe(monkeypatch, name)
    card_path = run_recipe(name, maps_dir, out, steps=5, workdir=work, resume=True, **quiet)
    t = json.loads(card_path.read_text())["training"]
    assert t["steps"] == 5 and [w["steps"] for w in t["windows"]] == [[0, first], [first, 5]]
    assert t["gpu_seconds"] == 0 and t["hardware"] and t["seconds"] >= sum(w["seconds"] for w in t["windows"]) - 0.2
    assert json.loads((work / "checkpoint.json").read_text())["step"] == 5


def test_window_seeds_keep_the_first_window_as_shipped():
    assert recipes.window_seed(0, 0) == 0
    assert recipes.window_seed(0, 500) == recipes.window_seed(0, 500) != recipes.window_seed(0, 1000)


def test_recipe_command_line_refuses_windows_without_a_work_folder(capsys):
    with pytest.raises(SystemExit):
        recipes.main(["upsampleunet48-gan", "--minutes", "9"])
    assert "--workdir" in capsys.readouterr().err


def test_a_recipe_trains_on_the_device_stream_and_says_so(maps_dir, tmp_path, monkeypatch):
    """data="device": the batches come from simulate.batched.BatchedStream (the recipe's own
    distributions, on the training device); the card's command and windows name it."""
    from napari_cryoden.simulate.batched import BatchedStream

    name = "unet48-ae"
    _small_recipe(monkeypatch, name)
    made = []
    real_from_recipe = BatchedStream.from_recipe.__func__

    def spy(cls, *a, **kw):
        made.append(real_from_recipe(cls, *a, **kw))
        return made[-1]

    monkeypatch.setattr(BatchedStream, "from_recipe", classmethod(spy))
    card_path = run_recipe(name, maps_dir, tmp_path / "out", steps=2, log=lambda *a, **k: None, data="device")
    (stream,) = made
    assert stream.device.type == "cpu" and stream.patch == RECIPES[name]["patch"] and stream.batch_size == 2
    assert sorted(stream.bank.names) == list(TRAIN) and stream.mix == RECIPES[name]["realistic"]["weight"]
    t = json.loads(card_path.read_text())["training"]
    assert t["command"].endswith("--steps 2 --data device") and t["steps"] == 2
    assert "simulated in torch on the training device" in t["data"]
    prec = resolve_precision("auto", torch.device("cpu"))  # the card names the precision the run used
    assert t["precision"] == ("fp32" if prec == "fp32" else f"{prec} autocast")  # unet48-ae: no discriminator


@pytest.mark.parametrize("kw, match", [
    ({"data": "gpu"}, "data must be one of host, device"),
    ({"data": "device", "workers": 2}, "device stream .* takes none"),
])
def test_bad_data_sources_are_refused_before_training(maps_dir, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        run_recipe("unet48-ae", maps_dir, tmp_path / "out", steps=1, **kw)
    with pytest.raises(ValueError, match="3D recipes only"):
        run_recipe("n2n-unet-2d", maps_dir, tmp_path / "out", data="device")
    assert not (tmp_path / "out").exists()


def test_the_command_line_passes_the_data_source(monkeypatch, capsys, tmp_path):
    calls = []
    monkeypatch.setattr(recipes, "run_recipe", lambda *a, **kw: calls.append(kw) or "card.json")
    assert recipes.main(["upsampleunet48-gan", "--data", "device"]) == 0
    assert recipes.main(["upsampleunet48-gan"]) == 0
    assert [c["data"] for c in calls] == ["device", "host"]
    assert recipes.main(["upsampleunet48-gan", "--realistic", "low-dose", "--patch", "64", "--batch-size", "16"]) == 0
    assert recipes.main(["n2n-unet-2d", "--patch", "256", "--skip-bm3d", "--maps", str(tmp_path)]) == 0  # no maps
    assert [(c.get("realistic"), c["patch"], c["batch_size"]) for c in calls[2:]] == [
        ("low-dose", 64, 16), (None, 256, None)]
    assert calls[0]["realistic"] == "standard" and calls[0]["patch"] is None
    for argv in (["n2n-unet-2d", "--data", "device"], ["unet48-ae", "--data", "device", "--workers", "2"]):
        with pytest.raises(SystemExit):
            recipes.main(argv)
    assert "--data device" in capsys.readouterr().err


def test_low_dose_ranges_widen_the_realistic_stream(monkeypatch):
    """--realistic low-dose merges REALISTIC_RANGES["low-dose"] into the recipe's realistic
    entry (nothing else changes); both streams (numpy and batched) take the new ranges, and
    the numpy stream's draws follow them: doses log-uniform in 15-160 e-/Å² (median near the
    geometric mean 49), thicknesses and detector correlations inside their ranges."""
    import numpy as np

    from napari_cryoden.simulate import blob_particle
    from napari_cryoden.simulate.batched import BatchedStream

    name = "upsampleunet48-gan"
    assert recipes.recipe(name) is RECIPES[name]
    r = recipes.recipe(name, "low-dose")
    low = recipes.REALISTIC_RANGES["low-dose"]
    assert {k: r["realistic"][k] for k in low} == low and r["realistic"]["weight"] == RECIPES[name]["realistic"]["weight"]
    assert {k: v for k, v in r.items() if k != "realistic"} == {k: v for k, v in RECIPES[name].items() if k != "realistic"}
    assert "dose_log" not in RECIPES[name]["realistic"]  # the shipped recipe is untouched
    maps = {n: blob_particle(np.random.default_rng(i), radius=4) for i, n in enumerate(TRAIN)}
    stream = recipes.recipe_stream(r, maps, list(TRAIN), np.random.default_rng(0))
    realistic = stream.streams[0]
    draws = [realistic.parameters() for _ in range(400)]
    doses = np.array([d["dose_total"] for d in draws])
    assert doses.min() >= 15 and doses.max() <= 160 and 40 < np.median(doses) < 60
    assert all(640 <= d["ice_thickness"] <= 3000 and 0 <= d["detector_correlation"] <= 0.5 for d in draws)
    batched = BatchedStream.from_recipe(r, maps, list(TRAIN))
    assert batched.realistic["dose_log"] is True and batched.realistic["ice_thickness"] == (640.0, 3000.0)
    assert batched.parameters()["realistic"]["detector_correlation"] == [0.0, 0.5]
    text = recipes._realistic_text(r)
    assert "log-uniform" in text and "thick" in text and "neighbour correlation" in text
    options = recipes._run_options("low-dose", 64, 16)
    assert recipes._train_command(name, RECIPES[name]["steps"], 0, "device", options).endswith(
        "--out models --data device --realistic low-dose --patch 64 --batch-size 16")
    big = recipes.recipe(name, **options)
    assert big["patch"] == 64 and big["batch_size"] == 16 and big["realistic"]["dose_log"] is True
    assert recipes.recipe("n2n-unet-2d", patch=256)["patch"] == 256
    for kw, match in (({"patch": 40}, "multiple of 16"), ({"patch": True}, "multiple of 16"),
                      ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=match):
            recipes.recipe(name, **kw)
    with pytest.raises(ValueError, match="does not fit"):
        recipes.recipe("n2n-unet-2d", patch=1024)
    with pytest.raises(ValueError, match="realistic must be one of"):
        recipes.recipe(name, "ultra")
    with pytest.raises(ValueError, match="no realistic tomograms"):
        recipes.recipe("n2n-unet-2d", "low-dose")


def test_a_resume_keeps_the_run_options(maps_dir, tmp_path, monkeypatch):
    """A checkpoint records its options (--realistic, --patch, --batch-size); resuming with
    others is refused; the finished run's card names them in its command and trains at that
    patch size; the command line refuses --realistic for the 2D recipe."""
    import napari_cryoden.training.loop as loop

    name = "unet48-ae"
    _small_recipe(monkeypatch, name)
    work, out = tmp_path / "work", tmp_path / "out"
    monkeypatch.setattr(loop, "time", _Clock())
    quiet = {"log": lambda *a, **k: None}
    assert run_recipe(name, maps_dir, out, steps=5, minutes=0.04, workdir=work, realistic="low-dose", patch=16,
                      **quiet) is None
    state = json.loads((work / "checkpoint.json").read_text())
    assert state["options"] == {"realistic": "low-dose", "patch": 16}
    with pytest.raises(ValueError, match=r"options \[--realistic low-dose --patch 16\], not \[--patch 16\]"):
        run_recipe(name, maps_dir, out, steps=5, workdir=work, resume=True, patch=16, **quiet)
    monkeypatch.setattr(recipes, "held_out_set", lambda maps: [])
    monkeypatch.setattr(recipes, "realistic_held_out_set", lambda maps: [])
    monkeypatch.setattr(recipes, "evaluate_held_out", lambda lm, sims, precision: {"n_volumes": len(sims)})
    card = json.loads(run_recipe(name, maps_dir, out, steps=5, workdir=work, resume=True, realistic="low-dose",
                                 patch=16, **quiet).read_text())
    assert card["training"]["command"].endswith("--steps 5 --realistic low-dose --patch 16")
    assert card["training"]["patch"] == 16 and "log-uniform" in card["training"]["data"]
    with pytest.raises(SystemExit):
        recipes.main(["n2n-unet-2d", "--realistic", "low-dose"])
