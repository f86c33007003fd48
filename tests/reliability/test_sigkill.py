"""SIGKILL at random points of ``cryoden denoise``: the output is whole or absent, the input intact.

A killed process cannot clean up, so its hidden temporary file
(``.out.mrc.<host>-<pid>.<random>.part.mrc``, in the output's folder) may remain until the next
write of the same output, which removes it; it is never the output name and never mistaken for a
result. SIGTERM (a scheduler's time limit) cleans up at once, like Ctrl-C.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.io import read_mrc

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

SHAPE = (16, 48, 48)
FAST = ["--model", "tiny-test", "--tile", "16", "--overlap", "4", "--device", "cpu", "--precision", "fp32", "-q"]
#: Random kill points per run of this test (plus one kill while the output is being written).
RANDOM_KILLS = 3

#: Runs the CLI, but announces the write on stdout and sleeps inside it, so it can be killed there.
SLOW_WRITE = """
import sys, time
from mrcfile.mrcobject import MrcObject
real = MrcObject.set_data
def slow(self, data):
    real(self, data)
    print("WRITING", flush=True)
    time.sleep(60)
MrcObject.set_data = slow
from napari_cryoden.cli import main
sys.exit(main(sys.argv[1:]))
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def job(tmp_path, tiny_model_dir):
    data = np.random.default_rng(7).normal(size=SHAPE).astype(np.float32)
    src = tmp_path / "tomo.mrc"
    with mrcfile.new(src) as mrc:
        mrc.set_data(data)
    env = {**os.environ, "CRYODEN_USER_MODELS": str(tiny_model_dir)}
    return src, env


def _assert_whole_or_absent(folder: Path, out: Path, src: Path, digest: str) -> None:
    assert sha256(src) == digest
    if out.exists():
        assert read_mrc(out).data.shape == SHAPE  # a complete, readable result
    mine = {n for n in os.listdir(folder) if out.name in n} - {out.name}
    assert all(n.startswith(f".{out.name}.") and ".part" in n for n in mine), mine


def test_sigkill_at_random_points_leaves_whole_output_or_none(job, tmp_path):
    src, env = job
    digest = sha256(src)
    cmd = [sys.executable, "-m", "napari_cryoden.cli", "denoise", str(src)]

    start = time.perf_counter()
    full = subprocess.run([*cmd, str(tmp_path / "full.mrc"), *FAST], env=env, capture_output=True, text=True)
    duration = time.perf_counter() - start
    assert full.returncode == 0, full.stderr

    rng = np.random.default_rng(int(time.time()))  # new points each run; printed for a rerun
    delays = rng.uniform(0.05, duration, size=RANDOM_KILLS)
    print(f"full run {duration:.2f} s; SIGKILL after {np.round(delays, 2).tolist()} s")
    for i, delay in enumerate(delays):
        out = tmp_path / f"out{i}.mrc"
        proc = subprocess.Popen([*cmd, str(out), *FAST], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        _assert_whole_or_absent(tmp_path, out, src, digest)


def _slow_write(src: Path, out: Path, env: dict) -> subprocess.Popen:
    """``cryoden denoise src out`` that prints WRITING and sleeps once the data is being written."""
    return subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "denoise", str(src), str(out), *FAST],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_while_writing_leaves_no_output(job, tmp_path):
    src, env = job
    digest = sha256(src)
    out = tmp_path / "out.mrc"
    proc = _slow_write(src, out, env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", proc.stderr.read()
        partial = [n for n in os.listdir(tmp_path) if ".part" in n]
        assert partial and not out.exists()  # the data is in the hidden temporary file only
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    assert not out.exists()
    _assert_whole_or_absent(tmp_path, out, src, digest)

    # The next run of the same job removes the dead writer's leftover and succeeds.
    again = subprocess.run([sys.executable, "-m", "napari_cryoden.cli", "denoise", str(src), str(out), *FAST],
                           env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert [n for n in os.listdir(tmp_path) if ".part" in n] == []
    assert read_mrc(out).data.shape == SHAPE


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_while_writing_cleans_up(sig, job, tmp_path):
    """SIGTERM (a scheduler's time limit) and SIGHUP (a closed terminal) clean up like Ctrl-C."""
    src, env = job
    digest = sha256(src)
    out = tmp_path / "out.mrc"
    proc = _slow_write(src, out, env)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        proc.send_signal(sig)
        rc = proc.wait(30)
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert rc == 130, err
    assert err.strip().splitlines() == ["cryoden: error: interrupted; nothing was written"]
    assert not out.exists()
    assert [n for n in os.listdir(tmp_path) if ".part" in n] == []
    assert sha256(src) == digest
