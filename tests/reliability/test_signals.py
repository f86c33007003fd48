"""Ctrl-C at the very start of ``cryoden``: one line, exit 130, nothing left behind.

A Ctrl-C in the first 0.05 s (while ``cryoden`` imports or parses its arguments) printed a
Python traceback. The interrupts are raised deterministically from inside the process (an import
hook, a patched function), in subprocesses. SIGTERM and SIGHUP while writing:
``test_sigkill.py::test_sigterm_while_writing_cleans_up``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

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
