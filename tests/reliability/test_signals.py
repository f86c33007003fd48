"""Signals at awkward moments: one line, exit 130, nothing left behind.

A Ctrl-C in the first 0.05 s of ``cryoden`` (while it imports or parses its arguments) printed a
Python traceback; SIGHUP (a closed terminal or SSH session) while writing left a 0-byte hidden
temporary file. The interrupts are raised deterministically from inside the process (an import
hook, a patched function), in subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mrcfile
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

FAST = ["--model", "tiny-test", "--tile", "16", "--overlap", "4", "--device", "cpu", "--precision", "fp32", "-q"]

#: SIGINT to itself while ``napari_cryoden.cli.main`` imports its subcommand modules.
INTERRUPT_DURING_IMPORT = textwrap.dedent("""
    import importlib.abc, os, signal, sys

    class Trap(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "napari_cryoden.cli.train":
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, Trap())
    from napari_cryoden.cli import main
    sys.exit(main(sys.argv[1:]))
""")

#: SIGINT to itself while the arguments are parsed.
INTERRUPT_DURING_PARSING = textwrap.dedent("""
    import os, signal, sys
    from napari_cryoden.cli import main as cli
    m = sys.modules["napari_cryoden.cli.main"]
    real = m.build_parser
    def build():
        parser = real()
        os.kill(os.getpid(), signal.SIGINT)
        return parser
    m.build_parser = build
    sys.exit(cli(sys.argv[1:]))
""")

#: Announces the write on stdout and sleeps inside it, so a signal arrives while writing.
SLOW_WRITE = textwrap.dedent("""
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
""")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("script", [INTERRUPT_DURING_IMPORT, INTERRUPT_DURING_PARSING], ids=["import", "parsing"])
def test_early_ctrl_c_is_one_line(script, tmp_path):
    proc = subprocess.run([sys.executable, "-c", script, "denoise", "in.mrc", "out.mrc"], capture_output=True,
                          text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "cryoden: error: interrupted; nothing was written\n"
    assert os.listdir(tmp_path) == []


def test_importing_the_cli_leaves_the_sigint_handler_alone():
    code = ("import signal; from napari_cryoden.cli import main; "
            "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler")
    assert subprocess.run([sys.executable, "-c", code], env=_env(), timeout=60).returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_termination_signals_while_writing_clean_up(sig, tmp_path, tiny_model_dir):
    src = tmp_path / "tomo.mrc"
    with mrcfile.new(src) as mrc:
        mrc.set_data(np.random.default_rng(7).normal(size=(16, 48, 48)).astype(np.float32))
    out = tmp_path / "out.mrc"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "denoise", str(src), str(out), *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
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
    assert sorted(os.listdir(tmp_path)) == ["tomo.mrc", "user_models"]  # no output, no temporary file
