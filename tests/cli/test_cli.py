"""The ``cryoden`` command line: exit statuses, messages, and no output left behind on failure.

Most tests call :func:`napari_cryoden.cli.main` in-process; two run a subprocess (``--help`` must
not import torch, and ``python -m napari_cryoden.cli`` end to end). No napari import here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.cli import main

from conftest import cli_imports, shared_file  # tests/conftest.py (tests/ is on sys.path, no __init__.py)

# Small, anisotropic, with an anisotropic voxel size so (Z, Y, X) order mistakes show.
SHAPE = (16, 40, 40)
VOXEL_ZYX = (12.0, 10.0, 10.0)
FAST = ["--model", "tiny-test", "--tile", "32", "--overlap", "4", "--device", "cpu", "--precision", "fp32"]


def _write_mrc(path: Path, data: np.ndarray, voxel_zyx=VOXEL_ZYX) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.voxel_size = (voxel_zyx[2], voxel_zyx[1], voxel_zyx[0])  # mrcfile order: x, y, z
    return path


@pytest.fixture
def tomo(tmp_path, rng) -> Path:
    """A non-constant (16, 40, 40) float32 tomogram with voxel size (12, 10, 10) Å."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    data = np.sin(z / 3.0) + np.cos(y / 5.0) * x / 40.0 + 0.2 * rng.normal(size=SHAPE)
    return _write_mrc(tmp_path / "tomo.mrc", data)


def _listing(folder: Path) -> set[str]:
    return set(os.listdir(folder))


def _assert_clean_failure(capsys, folder: Path, before: set[str], *, progress: bool = False) -> str:
    """One `cryoden: error:` line on stderr, no traceback, nothing new in `folder`.

    With `progress`, progress-bar lines may come before the error line.
    """
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    if progress:
        assert all(ln.startswith("denoising ") for ln in lines[:-1]), err
        lines = lines[-1:]
    assert len(lines) == 1, err
    assert lines[0].startswith("cryoden: error: "), err
    assert "Traceback" not in err
    after = _listing(folder)
    assert after == before, f"left behind: {sorted(after - before)}"
    assert not [n for n in after if ".part" in n]
    return lines[0]


def _read(path: Path):
    with mrcfile.open(path, permissive=False) as mrc:
        vs = mrc.voxel_size
        return np.array(mrc.data), (float(vs.z), float(vs.y), float(vs.x))


# --------------------------------------------------------------------------------------------
# Success


def test_denoise_small_tomogram(tomo, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "tomo_denoised.mrc"
    assert main(["denoise", str(tomo), str(out), *FAST]) == 0
    data, voxel = _read(out)
    assert data.shape == SHAPE
    assert data.dtype == np.float32
    assert np.isfinite(data).all()
    assert voxel == pytest.approx(VOXEL_ZYX, abs=1e-3)
    captured = capsys.readouterr()
    summary = captured.out.strip().splitlines()
    assert len(summary) == 1
    assert "(16, 40, 40)" in summary[0] and "tiny-test" in summary[0] and " s" in summary[0]
    assert "12, 10, 10" in summary[0]
    assert "100%" in captured.err  # the progress bar reached the end
    assert not [n for n in _listing(tmp_path) if ".part" in n]
    with mrcfile.open(out) as mrc:
        labels = [bytes(lab).decode("ascii", "replace") for lab in mrc.header.label[: int(mrc.header.nlabl)]]
    assert any("cryoden tiny-test" in lab for lab in labels)


def test_denoise_overwrite_replaces_existing_output(tomo, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out.mrc"
    out.write_bytes(b"old")
    assert main(["denoise", str(tomo), str(out), *FAST, "--overwrite", "--quiet"]) == 0
    assert _read(out)[0].shape == SHAPE
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_denoise_real_microtubule_tomogram(tmp_path, tiny_model_dir, capsys):
    src = shared_file("real", "microtubule_tomogram_crop_13pf.mrc")
    out = tmp_path / "mt_denoised.mrc"
    args = ["denoise", str(src), str(out), "--model", "tiny-test", "--tile", "64", "--overlap", "8",
            "--device", "cpu", "--precision", "fp32"]
    assert main(args) == 0, capsys.readouterr().err
    data, voxel = _read(out)
    assert data.shape == (36, 206, 94)
    assert voxel == pytest.approx((10.52, 10.52, 10.52), abs=1e-3)
    assert np.isfinite(data).all()


# --------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, nothing left behind


def test_missing_input(tmp_path, capsys):
    before = _listing(tmp_path)
    assert main(["denoise", str(tmp_path / "nope.mrc"), str(tmp_path / "out.mrc")]) == 2
    line = _assert_clean_failure(capsys, tmp_path, before)
    assert "nope.mrc" in line


def test_input_not_mrc(tmp_path, capsys):
    fake = tmp_path / "notes.mrc"
    fake.write_text("this is a text file, not a tomogram\n" * 50)
    before = _listing(tmp_path)
    assert main(["denoise", str(fake), str(tmp_path / "out.mrc")]) == 2
    line = _assert_clean_failure(capsys, tmp_path, before)
    assert "notes.mrc" in line and "not an MRC" in line


def test_truncated_mrc(tomo, tmp_path, capsys):
    size = tomo.stat().st_size
    with open(tomo, "r+b") as fh:
        fh.truncate(1024 + (size - 1024) // 2)
    before = _listing(tmp_path)
    assert main(["denoise", str(tomo), str(tmp_path / "out.mrc")]) == 2
    line = _assert_clean_failure(capsys, tmp_path, before)
    assert "tomo.mrc" in line and "truncated" in line


def test_unknown_model(tomo, tmp_path, tiny_model_dir, capsys):
    before = _listing(tmp_path)
    assert main(["denoise", str(tomo), str(tmp_path / "out.mrc"), "--model", "no-such-model"]) == 2
    line = _assert_clean_failure(capsys, tmp_path, before)
    assert "no-such-model" in line and "tiny-test" in line  # names the ones that exist


@pytest.mark.parametrize("option, value, expected", [
    ("--tile", "0", "--tile"),
    ("--tile", "big", "--tile"),
    ("--overlap", "-1", "--overlap"),
    ("--device", "gpu", "--device"),
    ("--precision", "fp8", "--precision"),
    ("--overlap", "3", "overlap"),  # 2 * 3 is not a multiple of the stride 8: found by the core
    ("--tile", "36", "tile"),       # not a multiple of the stride 8: found by the core
])
def test_bad_option_values(option, value, expected, tomo, tmp_path, tiny_model_dir, capsys):
    args = ["denoise", str(tomo), str(tmp_path / "out.mrc"), *FAST]
    i = args.index(option)
    args[i + 1] = value
    before = _listing(tmp_path)
    assert main(args) == 2
    line = _assert_clean_failure(capsys, tmp_path, before)
    assert expected in line


def test_fp16_on_cpu_refused(tomo, tmp_path, tiny_model_dir, capsys):
    before = _listing(tmp_path)
    args = ["denoise", str(tomo), str(tmp_path / "out.mrc"), *FAST[:-2], "--precision", "fp16"]
    assert main(args) == 2
    assert "fp16" in _assert_clean_failure(capsys, tmp_path, before)


def test_cuda_without_gpu_refused(tomo, tmp_path, tiny_model_dir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    before = _listing(tmp_path)
    args = ["denoise", str(tomo), str(tmp_path / "out.mrc"), *FAST]
    args[args.index("--device") + 1] = "cuda"
    assert main(args) == 2
    assert "cuda" in _assert_clean_failure(capsys, tmp_path, before)


def test_2d_input_refused_by_3d_model(tmp_path, tiny_model_dir, rng, capsys):
    image = _write_mrc(tmp_path / "micrograph.mrc", rng.normal(size=(40, 48)), voxel_zyx=(10.0, 10.0, 10.0))
    before = _listing(tmp_path)
    assert main(["denoise", str(image), str(tmp_path / "out.mrc"), *FAST]) == 2
    assert "2D" in _assert_clean_failure(capsys, tmp_path, before)


def test_existing_output_needs_overwrite(tomo, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out.mrc"
    out.write_bytes(b"keep me")
    before = _listing(tmp_path)
    assert main(["denoise", str(tomo), str(out), *FAST]) == 2
    assert "--overwrite" in _assert_clean_failure(capsys, tmp_path, before)
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
def test_output_is_input_refused(spelling, overwrite, tomo, tmp_path, tiny_model_dir, capsys, monkeypatch):
    original = tomo.read_bytes()
    monkeypatch.chdir(tmp_path)
    if spelling == "same":
        out = str(tomo)
    elif spelling == "dotted":
        out = os.path.join(".", "sub", "..", tomo.name)
        (tmp_path / "sub").mkdir()
    elif spelling == "symlink":
        out = str(tmp_path / "link.mrc")
        os.symlink(tomo, out)
    else:
        out = str(tmp_path / "hard.mrc")
        os.link(tomo, out)
    before = _listing(tmp_path)
    args = ["denoise", str(tomo), out, *FAST] + (["--overwrite"] if overwrite else [])
    assert main(args) == 2
    assert "is the input" in _assert_clean_failure(capsys, tmp_path, before)
    assert tomo.read_bytes() == original


def test_output_folder_missing(tomo, tmp_path, capsys):
    before = _listing(tmp_path)
    assert main(["denoise", str(tomo), str(tmp_path / "no" / "such" / "out.mrc")]) == 2
    assert "does not exist" in _assert_clean_failure(capsys, tmp_path, before)


def test_no_command_and_unknown_command(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("cryoden: error: choose a command")
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cryoden: error: ") and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Ctrl-C: exit 130, no partial output


def test_interrupt_during_denoising(tomo, tmp_path, tiny_model_dir, capsys, monkeypatch):
    import napari_cryoden.inference as inference

    def interrupted(volume, model, **kwargs):
        yield 0, 4
        yield 1, 4
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "iter_denoise", interrupted)
    before = _listing(tmp_path)
    assert main(["denoise", str(tomo), str(tmp_path / "out.mrc"), *FAST]) == 130
    line = _assert_clean_failure(capsys, tmp_path, before, progress=True)
    assert "interrupted" in line


def test_interrupt_while_writing(tomo, tmp_path, tiny_model_dir, capsys, monkeypatch):
    real_new = mrcfile.new

    def new_then_interrupt(path, *args, **kwargs):
        handle = real_new(path, *args, **kwargs)  # the temporary file now exists
        handle.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(mrcfile, "new", new_then_interrupt)
    before = _listing(tmp_path)
    assert main(["denoise", str(tomo), str(tmp_path / "out.mrc"), *FAST, "--quiet"]) == 130
    _assert_clean_failure(capsys, tmp_path, before)


# --------------------------------------------------------------------------------------------
# cryoden models, --help, python -m


def test_models_lists_tiny_test(tiny_model_dir, capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    (line,) = [ln for ln in lines if ln.split()[0] == "tiny-test"]
    assert "untrained test network" in line


def test_models_long_prints_whole_descriptions(tiny_model_dir, capsys):
    from napari_cryoden.models import available_models

    assert main(["models"]) == 0
    short = {ln.split()[0]: ln for ln in capsys.readouterr().out.strip().splitlines()}
    assert main(["models", "--long"]) == 0
    long = {ln.split()[0]: ln for ln in capsys.readouterr().out.strip().splitlines()}
    for name, card in available_models().items():
        whole = " ".join(str(card.get("description") or card.get("architecture")).split())
        assert whole in long[name]
        if len(whole) > 100:
            assert whole not in short[name] and "…" in short[name]
    assert "2D default]" in long.get("n2n-unet-2d", "2D default]")


def test_help_default_model_matches_registry(capsys):
    from napari_cryoden.cli.denoise import DEFAULT_MODEL, DEFAULT_MODEL_2D
    from napari_cryoden.inference.engine import DEFAULT_TILE
    from napari_cryoden.models import DEFAULT_MODEL as registry_default
    from napari_cryoden.models import DEFAULT_MODEL_2D as registry_default_2d

    assert (DEFAULT_MODEL, DEFAULT_MODEL_2D) == (registry_default, registry_default_2d)
    assert main(["denoise", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{registry_default} for tomograms, {registry_default_2d} for micrographs" in out
    assert "(default: auto)" in out
    assert f"{DEFAULT_TILE['cpu']} on the CPU, {DEFAULT_TILE['cuda']} on CUDA" in out


def test_help_does_not_import_torch():
    argvs = [["--help"], ["denoise", "--help"], ["models", "--help"], ["--version"]]
    assert cli_imports(argvs, ("torch", "napari", "qtpy", "safetensors"), "cryoden") == []


def test_python_m_end_to_end(tomo, tmp_path, tiny_model_dir):
    out = tmp_path / "denoised.mrc"
    env = {**os.environ, "CRYODEN_USER_MODELS": str(tiny_model_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "napari_cryoden.cli", "denoise", str(tomo), str(out), *FAST],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith("cryoden: wrote ")
    assert _read(out)[0].shape == SHAPE
    # and a failure through the same path: one line, exit 2
    proc = subprocess.run(
        [sys.executable, "-m", "napari_cryoden.cli", "denoise", str(tomo), str(out), *FAST],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("cryoden: error: ") and "--overwrite" in proc.stderr
