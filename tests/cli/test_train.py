"""``cryoden train``: end to end on tiny MRC files, settings checked before training, Ctrl-C and resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.cli import main

SHAPE = (40, 32, 32)
VOXEL_ZYX = (12.0, 10.0, 10.0)


def _write_mrc(path: Path, data: np.ndarray, voxel_zyx=VOXEL_ZYX) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.voxel_size = tuple(reversed(voxel_zyx))  # mrcfile order: x, y, z
    return path


@pytest.fixture
def files(tmp_path, monkeypatch):
    """even.mrc, odd.mrc, clean.mrc (40, 32, 32) at (12, 10, 10) Å; user models in tmp_path/models."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    clean = np.sin(z / 3.0) + np.cos(y / 4.0) + np.sin(x / 5.0)
    out = {"clean": _write_mrc(tmp_path / "clean.mrc", clean)}
    for half in ("even", "odd"):
        out[half] = _write_mrc(tmp_path / f"{half}.mrc", clean + rng.normal(0, 1, SHAPE))
    models = tmp_path / "models"
    monkeypatch.setenv("CRYODEN_USER_MODELS", str(models))
    out["models"] = models
    out["work"] = tmp_path / "work"
    return out


def fast(files, steps=4) -> list[str]:
    return ["--architecture", "UpsampleUnet48", "--arch-kwargs", '{"ch": 4}', "--patch", "16", "--batch", "2",
            "--steps", str(steps), "--val-every", "2", "--device", "cpu", "--precision", "fp32",
            "--workdir", str(files["work"])]


def n2n(files) -> list[str]:
    return ["train", "--mode", "n2n", "--even", str(files["even"]), "--odd", str(files["odd"])]


def _card(files, name) -> dict:
    return json.loads((files["models"] / f"{name}.json").read_text())


# --------------------------------------------------------------------------------------------
# Success


def test_n2n_end_to_end_then_denoise_with_the_new_model(files, tmp_path, capsys):
    assert main([*n2n(files), "--name", "cli-n2n", *fast(files)]) == 0
    out, err = capsys.readouterr()
    weights = files["models"] / "cli-n2n.safetensors"
    assert f"saved model 'cli-n2n' to {weights}; best validation loss " in out
    assert "training cli-n2n [" in err and "4/4 steps" in err  # progress bar (not a terminal: per validation)
    card = _card(files, "cli-n2n")
    assert card["voxel_size_A"] == 10.0 and card["architecture"] == "UpsampleUnet48" and card["parent"] is None
    assert card["training"]["mode"] == "n2n" and card["training"]["steps"] == 4
    assert card["data"] == {"even": str(files["even"]), "odd": str(files["odd"])}
    assert (files["work"] / "checkpoint.safetensors").is_file()  # an explicit --workdir is kept

    assert main(["models"]) == 0
    assert "cli-n2n" in capsys.readouterr().out
    denoised = tmp_path / "den.mrc"
    assert main(["denoise", str(files["even"]), str(denoised), "--model", "cli-n2n", "--device", "cpu",
                 "--precision", "fp32", "-q"]) == 0
    with mrcfile.open(denoised) as mrc:
        assert mrc.data.shape == SHAPE and np.isfinite(mrc.data).all()


def test_fine_tune_a_registry_model_with_n2v(files, tiny_model_dir, capsys):
    work = files["work"]
    rc = main(["train", "--mode", "n2v", "--input", str(files["even"]), "--model", "tiny-test", "--name", "ft",
               "--patch", "16", "--batch", "2", "--steps", "2", "--device", "cpu", "--precision", "fp32",
               "--workdir", str(work), "-q"])
    assert rc == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert err == "" and out.count("\n") == 1 and "saved model 'ft'" in out
    card = json.loads((tiny_model_dir / "ft.json").read_text())
    assert card["parent"] == "tiny-test" and card["training"]["mode"] == "n2v"


def test_config_file_with_command_line_override(files, tmp_path, capsys):
    config = tmp_path / "train.toml"
    config.write_text(
        'mode = "supervised"\nnoisy = "even.mrc"\nclean = "clean.mrc"\nname = "from-toml"\n'
        'architecture = "UpsampleUnet48"\narch-kwargs = {ch = 4}\npatch = 16\nbatch = 2\nsteps = 50\n'
        'val-slab = "0:16"\nval_every = 2\nloss = "l1"\ndevice = "cpu"\nprecision = "fp32"\nquiet = true\n'
        f'workdir = "{files["work"].name}"\n'
    )
    assert main(["train", "--config", str(config), "--steps", "2"]) == 0, capsys.readouterr().err
    t = _card(files, "from-toml")["training"]
    assert (t["mode"], t["loss"], t["steps"], t["val_slab"]) == ("supervised", "l1", 2, [0, 16])
    assert (tmp_path / "work" / "checkpoint.json").is_file()  # relative to the config file


def test_rampdown_and_gradient_clipping_reach_the_card(files, tmp_path, capsys):
    config = tmp_path / "ramp.toml"
    config.write_text("rampdown = 0.3\nmax-grad-norm = 2\n")
    assert main([*n2n(files), "--name", "ramp", *fast(files), "--config", str(config), "--rampdown", "0.5",
                 "-q"]) == 0, capsys.readouterr().err
    t = _card(files, "ramp")["training"]
    assert (t["rampdown"], t["max_grad_norm"]) == (0.5, 2.0)  # the command line overrides the file


def test_defaults_in_help_match_the_trainer():
    from napari_cryoden.cli.train import OPTION_DEFAULTS
    from napari_cryoden.training import FineTuneConfig

    defaults = {f.name: f.default for f in dataclasses.fields(FineTuneConfig)}
    assert OPTION_DEFAULTS == {k: defaults[k] for k in OPTION_DEFAULTS}


def test_module_imports_only_the_standard_library():
    code = "import sys, napari_cryoden.cli.train; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------------------------
# Bad settings: one line, exit 2, before training, nothing written


@pytest.mark.parametrize(
    "argv, message",
    [
        (lambda f: ["train", "--mode", "n2n", "--even", str(f["even"]), "--odd", str(f["odd"])],
         "give --name NAME"),
        (lambda f: ["train", "--mode", "n2n", "--even", str(f["even"]), "--name", "x"], "--mode n2n needs --even and --odd"),
        (lambda f: [*n2n(f), "--clean", str(f["clean"]), "--name", "x"], "--clean is not used with --mode n2n"),
        (lambda f: [*n2n(f), "--name", "a b"], "model name must be"),
        (lambda f: [*n2n(f), "--name", "upsampleunet48-gan"], "built-in model"),
        (lambda f: [*n2n(f), "--name", "x", "--patch", "64"], "patch 64 is larger than the data along axis 0"),
        (lambda f: [*n2n(f), "--name", "x", "--patch", "24"], "no room for a training patch of 24; use a patch of at most 8"),
        (lambda f: [*n2n(f), "--name", "x", "--architecture", "N2NUNet2D", "--patch", "32"],
         r"N2NUNet2D is a 2D \(micrograph\) network and the data is 3D"),
        (lambda f: [*n2n(f), "--name", "x", "--model", "nope"], "no model named 'nope'"),
        (lambda f: [*n2n(f), "--name", "x", "--model", "m", "--architecture", "Unet48"], "not both"),
        (lambda f: [*n2n(f), "--name", "x", "--val-slab", "5"], "expected START:STOP"),
        (lambda f: [*n2n(f), "--name", "x", "--steps", "0"], "expected an integer >= 1"),
        (lambda f: [*n2n(f), "--name", "x", "--rampdown", "1.5"], "expected a number from 0 to 1"),
        (lambda f: [*n2n(f), "--name", "x", "--max-grad-norm", "0"], "expected a positive number"),
        (lambda f: [*n2n(f), "--name", "x", "--adversarial", "gan"], "needs clean targets"),
        (lambda f: ["train", "--mode", "n2n", "--even", str(f["even"]), "--odd", str(f["short"]), "--name", "x"],
         r"even half and the odd half differ in shape: \(40, 32, 32\) vs \(40, 32, 24\)"),
        (lambda f: ["train", "--config", str(f["bad_toml"]), "--name", "x"], "unknown key 'stepz'"),
    ],
)
def test_bad_settings_exit_2_before_training(files, tmp_path, capsys, argv, message):
    import re

    files["short"] = _write_mrc(tmp_path / "short.mrc", np.random.default_rng(1).normal(size=(40, 32, 24)))
    files["bad_toml"] = tmp_path / "bad.toml"
    files["bad_toml"].write_text('mode = "n2n"\nstepz = 3\n')
    before = set(os.listdir(tmp_path))
    rc = main([*argv(files), "--workdir", str(files["work"]), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryoden: error: ") and re.search(message, lines[0]), err
    assert set(os.listdir(tmp_path)) == before  # no work folder, no model


def test_existing_checkpoint_needs_resume_or_overwrite(files, capsys):
    assert main([*n2n(files), "--name", "a", *fast(files), "-q"]) == 0
    capsys.readouterr()
    assert main([*n2n(files), "--name", "b", *fast(files)]) == 2
    assert "add --resume to continue it, or --overwrite to start afresh" in capsys.readouterr().err
    assert main([*n2n(files), "--name", "a", *fast(files), "--overwrite", "-q"]) == 0


# --------------------------------------------------------------------------------------------
# Ctrl-C keeps the checkpoint; --resume continues


def _interrupt_when(path: Path) -> threading.Thread:
    """Send SIGINT to this process once `path` exists (gives up after 60 s without sending)."""

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists():
                signal.raise_signal(signal.SIGINT)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_keeps_the_checkpoint_and_resume_finishes(files, capsys):
    ckpt = files["work"] / "checkpoint.json"
    handler = signal.getsignal(signal.SIGINT)
    watcher = _interrupt_when(ckpt)
    rc = main([*n2n(files), "--name", "stopped", *fast(files, steps=100000)])
    watcher.join(5)
    err = capsys.readouterr().err
    assert rc == 130, err
    assert "stopping after this step" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cryoden: interrupted at step ") and "run the same command with --resume" in last
    assert not (files["models"] / "stopped.json").exists()
    step = json.loads(ckpt.read_text())["step"]
    assert step >= 2 and signal.getsignal(signal.SIGINT) is handler  # the handler is put back

    assert main([*n2n(files), "--name", "stopped", *fast(files, steps=step + 2), "--resume"]) == 0
    card = _card(files, "stopped")
    assert card["training"]["steps"] == step + 2


# ------------------------------------------------------------------ defaults that fit the data (issue 21)
def test_thin_real_tomogram_trains_with_no_options(files, capsys):
    from conftest import shared_file

    src = shared_file("real", "microtubule_tomogram_crop_13pf.mrc")
    rc = main(["train", "--mode", "n2v", "--input", str(src), "--name", "mt", "--steps", "2", "--val-every", "2",
               "--batch", "1", "--workdir", str(files["work"]), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    card = _card(files, "mt")
    assert card["parent"] == "upsampleunet48-gan"
    assert card["training"]["patch"] == 32 and card["training"]["val_slab"][1] == 206  # across Y, not Z


def test_micrograph_fine_tunes_the_2d_default(files, tmp_path, capsys):
    rng = np.random.default_rng(4)
    halves = [_write_mrc(tmp_path / f"{h}.mrc", rng.normal(size=(160, 128))) for h in ("e", "o")]
    rc = main(["train", "--mode", "n2n", "--even", str(halves[0]), "--odd", str(halves[1]), "--name", "mic",
               "--steps", "1", "--val-every", "1", "--batch", "1", "--workdir", str(files["work"]), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "from scratch" not in err
    card = _card(files, "mic")
    assert card["parent"] == "n2n-unet-2d" and card["training"]["patch"] == 64
