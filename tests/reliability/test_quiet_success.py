"""A successful run prints nothing but its own lines, and writes a header mrcfile accepts.

Values near 1e38 gave an output header whose mean and rms were ``inf`` (``mrcfile.validate``
refused it) and numpy overflow warnings on stderr; ``mx = my = mz = 0`` or a bad FEI1 extended
header printed library warnings; a voxel size of 0, negative, NaN or Inf silently became 1 Å.
The runs are subprocesses, so stderr is what a user sees (default warning filters).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.inference.stream import header_stats
from napari_cryoden.io import write_mrc

FAST = ["--model", "tiny-test", "--tile", "32", "--overlap", "4", "--device", "cpu", "--precision", "fp32", "-q"]
SHAPE = (8, 24, 24)


def _cryoden(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_cryoden.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _only_own_lines(err: str) -> list[str]:
    """The ``cryoden:`` lines of `err`, which holds nothing else but progress-bar lines."""
    lines = err.strip().splitlines()
    assert all(line.startswith(("cryoden: ", "denoising ")) for line in lines), err
    return [line for line in lines if line.startswith("cryoden: ")]


def _valid(path: Path) -> bool:
    return mrcfile.validate(str(path), print_file=io.StringIO())


def _write(path: Path, data, edit=None) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        with np.errstate(over="ignore", invalid="ignore"):
            mrc.set_data(np.asarray(data, np.float32))
        mrc.voxel_size = 10.0
        if edit:
            edit(mrc)
    return path


def test_values_near_float32_max_give_true_header_stats_and_no_warning(tmp_path, tiny_model_dir):
    data = np.random.default_rng(0).choice([-3e38, 3e38], size=SHAPE)
    src = _write(tmp_path / "big.mrc", data)
    out = tmp_path / "out.mrc"
    proc = _cryoden("denoise", src, out, *FAST)
    assert proc.returncode in (0, 2), proc.stderr
    lines = _only_own_lines(proc.stderr)
    if proc.returncode == 2:
        assert len(lines) == 1 and not out.exists()
    else:
        _assert_header_stats(out)


def _assert_header_stats(path: Path) -> None:
    """The header's statistics are finite and those of the data, computed in float64.

    (``mrcfile.validate`` cannot be the judge here: it computes the rms in float32 itself, which
    overflows to NaN for such data, and then reports any header value as inaccurate.)"""
    with mrcfile.open(path) as mrc:
        h, data = mrc.header, np.asarray(mrc.data, np.float64)
        assert np.isfinite([h.dmin, h.dmax, h.dmean, h.rms]).all()
        assert (float(h.dmin), float(h.dmax)) == (data.min(), data.max())
        assert float(h.dmean) == pytest.approx(data.mean(), rel=1e-5, abs=1e-30)
        assert float(h.rms) == pytest.approx(data.std(), rel=1e-5, abs=1e-30)


def test_write_mrc_header_stats_of_values_near_float32_max(tmp_path):
    data = np.full(SHAPE, 3e38, np.float32)
    data[0] = -3e38
    _assert_header_stats(write_mrc(tmp_path / "out.mrc", data))


def test_streamed_header_stats_of_values_near_float32_max_are_finite():
    data = np.full(SHAPE, 3e38, np.float32)
    data[:, :, ::2] = -3e38  # both signs in every slab: float32 deviations overflow
    lo, hi, mean, std = header_stats(data, chunk_bytes=4096)
    assert np.isfinite([lo, hi, mean, std]).all()
    assert std == pytest.approx(float(np.std(data, dtype=np.float64)), rel=1e-6)


def _zero_sampling(mrc):
    mrc.header.mx = mrc.header.my = mrc.header.mz = 0


def _bad_fei1(mrc):
    mrc.set_extended_header(np.zeros(100, dtype=np.uint8))  # not a whole FEI1 record
    mrc.header.exttyp = b"FEI1"


def _voxel(value):
    def edit(mrc):
        mrc.voxel_size = value
    return edit


ODD_HEADERS = {
    "mx-my-mz-0": (_zero_sampling, True),
    "bad-FEI1": (_bad_fei1, False),
    "voxel-0": (_voxel(0.0), True),
    "voxel-negative": (_voxel(-5.0), True),
    "voxel-nan": (_voxel(float("nan")), True),
    "voxel-inf": (_voxel(float("inf")), True),
}


@pytest.mark.parametrize("case", list(ODD_HEADERS))
def test_odd_headers_print_only_our_lines_and_never_a_silent_voxel_size(case, tmp_path, tiny_model_dir):
    edit, unknown_voxel = ODD_HEADERS[case]
    src = _write(tmp_path / "odd.mrc", np.random.default_rng(1).normal(size=SHAPE), edit)
    out = tmp_path / "out.mrc"
    proc = _cryoden("denoise", src, out, *FAST[:-1])  # not --quiet, which leaves out the notes
    lines = _only_own_lines(proc.stderr)
    if proc.returncode == 2:  # refused in one line, nothing written
        assert len(lines) == 1 and not out.exists()
        return
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in lines if "no usable pixel size" in line]
    assert len(notes) == (1 if unknown_voxel else 0), proc.stderr
    assert _valid(out)
