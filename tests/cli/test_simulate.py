"""``cryoden simulate``: files, voxel sizes, refusal of existing outputs, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.cli import main

from conftest import cli_imports  # tests/conftest.py (tests/ is on sys.path)

TOMO = ["--shape", "24,32,40", "--tilt-step", "6", "--seed", "2", "--quiet"]


def _read(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    with mrcfile.open(path, permissive=False) as mrc:
        vs = mrc.voxel_size
        return mrc.data.copy(), (float(vs.z), float(vs.y), float(vs.x))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryoden: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_tomogram_files_and_voxel_size(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "tomogram", str(out), *TOMO, "--voxel-size", "8"]) == 0
    assert sorted(os.listdir(out)) == ["clean.mrc", "even.mrc", "noisy.mrc", "odd.mrc", "params.json"]
    data = {}
    for name in ("noisy", "even", "odd", "clean"):
        data[name], vs = _read(out / f"{name}.mrc")
        assert data[name].shape == (24, 32, 40) and data[name].dtype == np.float32
        assert vs == (8.0, 8.0, 8.0)
    np.testing.assert_allclose(data["noisy"], (data["even"] + data["odd"]) / 2, atol=1e-5)
    params = json.loads((out / "params.json").read_text())
    assert params["voxel_size"] == 8.0 and params["seed"] == 2 and params["tilt_step"] == 6.0


def test_thick_low_dose_tomogram_with_correlated_detector_noise(tmp_path):
    """--thickness and --detector-correlation reach the simulator and its params.json; the
    clean target is the one of the default imaging, the noise is stronger."""
    base, low = tmp_path / "base", tmp_path / "low"
    assert main(["simulate", "tomogram", str(base), *TOMO]) == 0
    assert main(["simulate", "tomogram", str(low), *TOMO, "--thickness", "2000", "--detector-correlation", "0.4"]) == 0
    params = json.loads((low / "params.json").read_text())
    assert params["ice_thickness"] == 2000.0 and params["detector_correlation"] == 0.4
    np.testing.assert_array_equal(_read(low / "clean.mrc")[0], _read(base / "clean.mrc")[0])
    noise = {d: _read(d / "noisy.mrc")[0] - _read(d / "clean.mrc")[0] for d in (base, low)}
    assert noise[low].std() > 1.1 * noise[base].std()


def test_existing_outputs_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "tomogram", str(out), *TOMO]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["simulate", "tomogram", str(out), *TOMO, "--seed", "3"]) == 2
    line = _one_error_line(capsys)
    assert "exists" in line and "--overwrite" in line
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before  # untouched, no temp files
    noisy_before, _ = _read(out / "noisy.mrc")
    assert main(["simulate", "tomogram", str(out), *TOMO[:-3], "--seed", "3", "--quiet", "--overwrite"]) == 0
    assert not np.array_equal(_read(out / "noisy.mrc")[0], noisy_before)
    assert sorted(os.listdir(out)) == ["clean.mrc", "even.mrc", "noisy.mrc", "odd.mrc", "params.json"]


def test_failure_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    import napari_cryoden.io as io

    real, calls = io.write_mrc, []

    def flaky(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io, "write_mrc", flaky)
    out = tmp_path / "sim"
    assert main(["simulate", "tomogram", str(out), *TOMO]) == 1
    assert "No space left on device" in _one_error_line(capsys)
    assert not out.exists()  # the two files written and the new folder are removed


def test_micrograph_2d_with_pixel_size(tmp_path, capsys):
    out = tmp_path / "mic"
    assert main(["simulate", "micrograph", str(out), "--shape", "48,64", "--voxel-size", "6",
                 "--frames", "6", "--dose", "30"]) == 0
    assert "wrote 5 files" in capsys.readouterr().out
    for name in ("noisy", "even", "odd", "clean"):
        data, vs = _read(out / f"{name}.mrc")
        assert data.shape == (48, 64) and vs[1:] == (6.0, 6.0)
    params = json.loads((out / "params.json").read_text())
    assert params["n_frames"] == 6 and params["dose_total"] == 30.0 and params["pixel_size"] == 6.0


def test_thesis_pairs(tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["simulate", "thesis", str(out), "--count", "2", "--variant", "saltpepper", "--shape", "32",
                 "--quiet"]) == 0
    assert sorted(os.listdir(out)) == ["clean_000.mrc", "clean_001.mrc", "noisy_000.mrc", "noisy_001.mrc"]
    noisy, vs = _read(out / "noisy_000.mrc")
    clean, _ = _read(out / "clean_000.mrc")
    assert noisy.shape == (32, 32, 32) and vs == (10.0, 10.0, 10.0)
    hit = noisy != clean
    assert 0.05 < hit.mean() < 0.15  # 10 % salt and pepper


def test_maps_set_the_voxel_size_and_must_match_it(tmp_path, capsys):
    maps = tmp_path / "maps"
    maps.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        m = np.zeros((9, 9, 9), np.float32)
        m[2:7, 2:7, 2:7] = rng.uniform(0.5, 1.0, (5, 5, 5))
        with mrcfile.new(maps / f"{name}.mrc") as mrc:
            mrc.set_data(m)
            mrc.voxel_size = 7.0
    out = tmp_path / "pairs"
    assert main(["simulate", "thesis", str(out), "--maps", str(maps), "--shape", "24", "--quiet"]) == 0
    assert _read(out / "noisy_000.mrc")[1] == (7.0, 7.0, 7.0)
    assert main(["simulate", "thesis", str(tmp_path / "p2"), "--maps", str(maps), "--voxel-size", "10"]) == 2
    assert "7 Å/voxel" in _one_error_line(capsys)
    assert not (tmp_path / "p2").exists()
    assert main(["simulate", "tomogram", str(tmp_path / "p3"), "--maps", str(tmp_path / "none")]) == 2
    assert "not a folder" in _one_error_line(capsys)


@pytest.mark.parametrize("argv, expected", [
    (["tomogram", "{out}", "--shape", "24,32"], "1 or 3 numbers"),
    (["micrograph", "{out}", "--shape", "a,b"], "integers"),
    (["tomogram", "{out}", "--shape", "4,32,32"], "shape"),
    (["tomogram", "{out}", "--tilt-range", "95"], "tilt_range"),
    (["tomogram", "{out}", "--density", "1.5"], "fraction"),
    (["micrograph", "{out}", "--frames", "1"], "frames"),
    (["thesis", "{out}", "--variant", "nope"], "variant"),
    (["tomogram", "{missing}"], "does not exist"),
    (["tomogram", "{out}", "--shape", "24,32,32", "--thickness", "100"], "ice_thickness (100 Å) must be at least"),
    (["tomogram", "{out}", "--shape", "24,32,32", "--detector-correlation", "0.9"], "detector_correlation"),
])
def test_bad_input_exits_2_with_one_line(argv, expected, tmp_path, capsys):
    argv = [a.format(out=tmp_path / "out", missing=tmp_path / "no" / "such") for a in argv]
    assert main(["simulate", *argv]) == 2
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_simulate_cli_module_is_stdlib_only():
    assert cli_imports([["simulate", "--help"]], ("numpy", "torch", "scipy", "napari"), "OUT_DIR") == []
