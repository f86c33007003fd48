"""A full disk while a streamed (memory-mapped) output is written: exit 1, one line, nothing left.

A store into a memory-mapped sparse file on a full file system is a ``SIGBUS``: the process used
to die with "Bus error" (exit 135), no message and a full-size ``.part.mrc`` left behind. The
output's blocks are now reserved before it is mapped. The runs are subprocesses (a bus error
would kill pytest) with the streaming threshold set to 0, so a small volume is streamed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mrcfile
import numpy as np
import pytest

FAST = ["--model", "tiny-test", "--tile", "32", "--overlap", "4", "--device", "cpu", "--precision", "fp32"]
SHAPE = (32, 64, 64)  # 512 KiB of float32 output
#: A ``cryoden`` whose outputs are always streamed into a memory-mapped file; resource limits
#: given as JSON in CRYODEN_TEST_RLIMIT_FSIZE.
STREAMING_CLI = textwrap.dedent("""
    import os, resource, sys
    import napari_cryoden.inference.stream as stream
    from napari_cryoden.cli import main
    stream.iter_denoise_file.__kwdefaults__["mmap_threshold"] = 0
    limit = os.environ.get("CRYODEN_TEST_RLIMIT_FSIZE")
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    sys.exit(main(sys.argv[1:]))
""")


def _input(folder: Path) -> Path:
    path = folder / "tomo.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
        mrc.voxel_size = 10.0
    return path


def _run(args, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", STREAMING_CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount permission; skipped otherwise), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _assert_one_line_failure(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryoden: error: ") and what in lines[0], proc.stderr


def test_disk_full_on_streamed_output_is_one_line_and_leaves_nothing(tmp_path, small_fs, tiny_model_dir):
    src = _input(tmp_path)
    (small_fs / "filler").write_bytes(b"\0" * (768 * 1024))  # 256 KiB left, the output needs 512 KiB
    out = small_fs / "out.mrc"
    proc = _run(["denoise", src, out, *FAST, "--quiet"])
    _assert_one_line_failure(proc, "No space left on device")
    assert str(out) in proc.stderr
    assert sorted(os.listdir(small_fs)) == ["filler"]  # no output, no temporary file


def test_file_size_limit_on_streamed_output_is_one_line_and_leaves_nothing(tmp_path, tiny_model_dir):
    src = _input(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _run(["denoise", src, out_dir / "out.mrc", *FAST, "--quiet"],
                {"CRYODEN_TEST_RLIMIT_FSIZE": str(256 * 1024)})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryoden: error: "), proc.stderr
    assert os.listdir(out_dir) == []


def test_streamed_output_with_room_is_complete(tmp_path, tiny_model_dir):
    src = _input(tmp_path)
    out = tmp_path / "out.mrc"
    proc = _run(["denoise", src, out, *FAST, "--quiet"])
    assert proc.returncode == 0, proc.stderr
    with mrcfile.open(out) as mrc:
        assert mrc.data.shape == SHAPE and np.isfinite(mrc.data).all()


@pytest.mark.parametrize("failing", [1, 3, 5])
def test_simulate_overwrite_failing_midway_keeps_the_old_set(failing, tmp_path, capsys, monkeypatch):
    """Disk full at the n-th file of ``cryoden simulate tomogram --overwrite``: the old set stays
    whole (the new one is written in a hidden staging folder and renamed into place)."""
    import hashlib

    import napari_cryoden.io as io
    from napari_cryoden.cli import main

    tomo = ["--shape", "24,32,40", "--tilt-step", "6", "--quiet"]
    out = tmp_path / "sim"
    assert main(["simulate", "tomogram", str(out), *tomo, "--seed", "1"]) == 0
    before = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in os.listdir(out)}
    real_mrc, real_path, calls = io.write_mrc, io.atomic_path, []

    def count():
        calls.append(1)
        if len(calls) == failing:
            raise OSError(28, "No space left on device")

    def flaky_mrc(*args, **kwargs):
        count()
        return real_mrc(*args, **kwargs)

    def flaky_path(*args, **kwargs):
        count()
        return real_path(*args, **kwargs)

    monkeypatch.setattr(io, "write_mrc", flaky_mrc)
    monkeypatch.setattr(io, "atomic_path", flaky_path)
    assert main(["simulate", "tomogram", str(out), *tomo, "--seed", "2", "--overwrite"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in os.listdir(out)} == before


#: A streaming ``cryoden`` whose progress bar truncates the input at its first report, as
#: another program rewriting the tomogram would.
TRUNCATING_CLI = STREAMING_CLI.replace("sys.exit(main(sys.argv[1:]))", """
common = sys.modules["napari_cryoden.cli._common"]
real_update = common.ProgressBar.update
def update(self, done, total):
    real_update(self, done, total)
    os.truncate(sys.argv[2], 4096)
common.ProgressBar.update = update
sys.exit(main(sys.argv[1:]))
""")


def test_input_truncated_while_memory_mapped_is_one_line_and_leaves_nothing(tmp_path, tiny_model_dir):
    src = _input(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.run([sys.executable, "-c", TRUNCATING_CLI, "denoise", str(src), str(out_dir / "out.mrc"),
                           "--model", "tiny-test", "--tile", "16", "--overlap", "4", "--batch", "1", "--device", "cpu",
                           "--precision", "fp32"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # not -7 (SIGBUS)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cryoden: ")]
    assert len(errors) == 1 and "truncated by another program" in errors[0], proc.stderr
    assert os.listdir(out_dir) == []
