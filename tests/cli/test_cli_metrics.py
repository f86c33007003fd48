"""``cryoden metrics IMAGE REFERENCE [--json]``: scores, valid JSON, voxel sizes and clean errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.cli import main
from napari_cryoden.simulate import sample_tomogram

from conftest import cli_imports  # tests/conftest.py (tests/ is on sys.path)

SHAPE = (16, 32, 32)
KEYS = ["ssim", "psnr", "mse", "nrmse", "fsc", "res_fsc_0.5_A", "res_fsc_0.143_A"]


def _write(path: Path, data: np.ndarray, voxel_zyx=(10.0, 10.0, 10.0)) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(data, dtype=np.float32))
        mrc.voxel_size = tuple(reversed(voxel_zyx))  # mrcfile order: x, y, z
    return path


@pytest.fixture(scope="module")
def sample():
    noisy, clean, voxel_size = sample_tomogram(seed=3, shape=SHAPE)
    return noisy, clean, voxel_size


@pytest.fixture
def files(tmp_path, sample):
    noisy, clean, voxel_size = sample
    return (_write(tmp_path / "noisy.mrc", noisy, (voxel_size,) * 3),
            _write(tmp_path / "clean.mrc", clean, (voxel_size,) * 3))


def _json(capsys, argv) -> tuple[dict, str]:
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, captured.out
    return json.loads(lines[0]), captured.err


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryoden: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def test_json_of_a_noisy_tomogram_against_its_clean_version(files, capsys):
    noisy, clean = files
    data, err = _json(capsys, ["metrics", str(noisy), str(clean), "--json"])
    assert list(data) == KEYS
    assert 0 < data["ssim"] < 1 and data["psnr"] > 0 and data["mse"] > 0 and data["nrmse"] > 0
    resolutions = [r for r, _ in data["fsc"]]
    # Shells of a 16-voxel axis at 10 Å/voxel: 160 Å down to Nyquist, 20 Å.
    assert resolutions[0] == pytest.approx(160.0) and resolutions[-1] == pytest.approx(20.0)
    assert len(resolutions) == 8
    assert 160.0 >= data["res_fsc_0.5_A"] >= data["res_fsc_0.143_A"] >= 20.0
    assert err == ""


def test_identical_volumes_give_valid_json_with_nulls_and_notes(files, capsys):
    _, clean = files
    data, err = _json(capsys, ["metrics", str(clean), str(clean), "--json"])
    assert data["ssim"] == pytest.approx(1.0) and data["mse"] == 0.0 and data["nrmse"] == 0.0
    assert data["psnr"] is None
    assert data["res_fsc_0.5_A"] is None and data["res_fsc_0.143_A"] is None
    assert all(math.isclose(v, 1.0, abs_tol=1e-6) for _, v in data["fsc"])
    assert "psnr is null" in err and "res_fsc_0.5_A is null" in err
    assert all(line.startswith("cryoden: note: ") for line in err.strip().splitlines())


def test_table_output(files, capsys):
    noisy, clean = files
    assert main(["metrics", str(noisy), str(clean)]) == 0
    out = capsys.readouterr().out
    for word in ("SSIM", "PSNR", "MSE", "NRMSE", "FSC 0.5", "FSC 0.143", " dB", " Å"):
        assert word in out, out
    assert main(["metrics", str(clean), str(clean)]) == 0
    out = capsys.readouterr().out
    assert "inf (identical)" in out and "not reached" in out


def test_resolution_follows_the_header_voxel_size(tmp_path, sample, capsys):
    noisy, clean, _ = sample
    results = {}
    for vs in (5.0, 12.5):
        image = _write(tmp_path / f"noisy_{vs}.mrc", noisy, (vs,) * 3)
        ref = _write(tmp_path / f"clean_{vs}.mrc", clean, (vs,) * 3)
        results[vs], _ = _json(capsys, ["metrics", str(image), str(ref), "--json"])
    assert results[12.5]["res_fsc_0.5_A"] == pytest.approx(results[5.0]["res_fsc_0.5_A"] * 2.5)
    assert results[12.5]["fsc"][0][0] == pytest.approx(16 * 12.5)
    assert results[12.5]["ssim"] == pytest.approx(results[5.0]["ssim"])


def test_roi_and_half_maps(files, tmp_path, sample, capsys):
    noisy, clean = files
    data, _ = _json(capsys, ["metrics", str(noisy), str(clean), "--json", "--roi", "0:16,4:28,:"])
    assert data["fsc"][0][0] == pytest.approx(16 * 10.0)  # the shortest axis of the box is 16
    whole, _ = _json(capsys, ["metrics", str(noisy), str(clean), "--json"])
    assert data["ssim"] != whole["ssim"]

    rng = np.random.default_rng(0)
    _, clean_data, _ = sample
    even = _write(tmp_path / "even.mrc", clean_data + 0.05 * rng.normal(size=SHAPE))
    odd = _write(tmp_path / "odd.mrc", clean_data + 0.05 * rng.normal(size=SHAPE))
    halves, _ = _json(capsys, ["metrics", str(even), str(odd), "--json", "--half-maps"])
    assert halves["ssim"] is None and halves["psnr"] is None
    assert halves["res_fsc_0.143_A"] is None or halves["res_fsc_0.143_A"] >= 20.0


def test_voxel_size_mismatch_gives_a_note(tmp_path, sample, capsys):
    noisy, clean, _ = sample
    image = _write(tmp_path / "a.mrc", noisy, (8.0, 8.0, 8.0))
    ref = _write(tmp_path / "b.mrc", clean, (10.0, 10.0, 10.0))
    data, err = _json(capsys, ["metrics", str(image), str(ref), "--json"])
    assert "voxel sizes differ" in err
    assert data["fsc"][0][0] == pytest.approx(160.0)


def test_different_shapes_are_a_clear_error(tmp_path, sample, capsys):
    noisy, clean, _ = sample
    image = _write(tmp_path / "a.mrc", noisy[:, :, :-2])
    ref = _write(tmp_path / "b.mrc", clean)
    assert main(["metrics", str(image), str(ref), "--json"]) == 2
    line = _one_error_line(capsys)
    assert "IMAGE shape (16, 32, 30) differs from REFERENCE shape (16, 32, 32)" in line


@pytest.mark.parametrize(
    "argv_tail, expected",
    [
        (["--roi", "0:16,4:28"], "one start:stop per axis"),
        (["--roi", "0:16,20:10,:"], "empty along axis 1"),
    ],
)
def test_bad_roi_is_a_clear_error(files, capsys, argv_tail, expected):
    noisy, clean = files
    assert main(["metrics", str(noisy), str(clean), *argv_tail]) == 2
    assert expected in _one_error_line(capsys)


def test_missing_or_non_mrc_file(files, tmp_path, capsys):
    noisy, _ = files
    assert main(["metrics", str(noisy), str(tmp_path / "nope.mrc")]) == 2
    assert "nope.mrc" in _one_error_line(capsys)
    text = tmp_path / "notes.mrc"
    text.write_text("not an MRC file")
    assert main(["metrics", str(text), str(noisy)]) == 2
    _one_error_line(capsys)


def test_metrics_help_does_not_import_torch():
    assert cli_imports([["metrics", "--help"]], ("torch", "napari", "qtpy", "skimage"), "res_fsc_0.143_A") == []


def test_2d_images_get_an_frc(tmp_path, capsys):
    rng = np.random.default_rng(5)
    clean = np.cumsum(np.cumsum(rng.normal(size=(48, 64)), axis=0), axis=1)  # smooth, non-square
    noisy = clean + clean.std() * 0.2 * rng.normal(size=clean.shape)
    image = _write(tmp_path / "noisy2d.mrc", noisy, (1.0, 2.5, 2.5))
    ref = _write(tmp_path / "clean2d.mrc", clean, (1.0, 2.5, 2.5))
    data, _ = _json(capsys, ["metrics", str(image), str(ref), "--json"])
    assert data["fsc"][0][0] == pytest.approx(48 * 2.5) and data["fsc"][-1][0] == pytest.approx(5.0)
    assert 0 < data["ssim"] < 1
    assert main(["metrics", str(image), str(ref)]) == 0
    assert "FRC 0.5" in capsys.readouterr().out


def test_missing_voxel_size_gives_a_note(tmp_path, sample, capsys):
    noisy, clean, _ = sample
    image, ref = tmp_path / "a.mrc", tmp_path / "b.mrc"
    for path, data in ((image, noisy), (ref, clean)):
        with mrcfile.new(path) as mrc:
            mrc.set_data(data)  # voxel size left at 0: unknown
    data, err = _json(capsys, ["metrics", str(image), str(ref), "--json"])
    assert "no voxel size" in err
    assert data["fsc"][-1][0] == pytest.approx(2.0)  # Nyquist at 1 Å/voxel
