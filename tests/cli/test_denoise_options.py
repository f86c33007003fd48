"""``cryoden denoise`` options of the automatic tile plan: --max-memory and --batch."""

from __future__ import annotations

import re

import mrcfile
import numpy as np
import pytest

from napari_cryoden.cli import main

CPU = ["--model", "tiny-test", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture
def tomo(tmp_path, rng):
    path = tmp_path / "tomo.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(rng.normal(size=(12, 40, 40)).astype(np.float32))
        mrc.voxel_size = 10.0
    return path


def _tiles(out: str) -> int:
    return int(re.search(r"(\d+) tiles", out).group(1))


def test_max_memory_bounds_the_automatic_tiles(tomo, tmp_path, tiny_model_dir, capsys):
    assert main(["denoise", str(tomo), str(tmp_path / "a.mrc"), *CPU]) == 0
    assert _tiles(capsys.readouterr().out) == 1  # the whole volume fits in one tile
    # 20 MiB: the one-tile plan (64 x 88 x 88 voxels of ~55 bytes of activations) no longer fits
    assert main(["denoise", str(tomo), str(tmp_path / "b.mrc"), *CPU, "--max-memory", "0.02"]) == 0
    assert _tiles(capsys.readouterr().out) > 1
    with mrcfile.open(tmp_path / "a.mrc") as a, mrcfile.open(tmp_path / "b.mrc") as b:
        # the measured overlap covers the receptive field: the plans agree
        np.testing.assert_allclose(a.data, b.data, rtol=0, atol=1e-5)


@pytest.mark.parametrize("option, value", [("--max-memory", "0"), ("--max-memory", "lots"), ("--batch", "0")])
def test_bad_values(option, value, tomo, tmp_path, capsys):
    assert main(["denoise", str(tomo), str(tmp_path / "o.mrc"), option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cryoden: error: ") and option in err and len(err.strip().splitlines()) == 1


def test_batch_changes_nothing_but_speed(tomo, tmp_path, tiny_model_dir, capsys):
    fast = [*CPU, "--tile", "16", "--overlap", "8", "-q"]
    assert main(["denoise", str(tomo), str(tmp_path / "a.mrc"), *fast]) == 0
    assert main(["denoise", str(tomo), str(tmp_path / "b.mrc"), *fast, "--batch", "3"]) == 0
    with mrcfile.open(tmp_path / "a.mrc") as a, mrcfile.open(tmp_path / "b.mrc") as b:
        np.testing.assert_allclose(a.data, b.data, rtol=0, atol=1e-6)
