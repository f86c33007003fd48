"""Decompression bombs: a small valid map followed by a flood of compressed zeros.

mrcfile reads a whole ``.gz``/``.bz2`` stream into memory to measure it: 2 GiB of trailing zeros
in a 2 MB file took 4.4 GB of memory and the run then succeeded. ``read_mrc`` now stops
decompressing at the size the header describes plus :data:`TRAILING_SLACK_BYTES` and refuses
the file in one line. The CLI runs are subprocesses with their address space bounded at 256 MiB
above what they have mapped once their imports are done.
"""

from __future__ import annotations

import bz2
import gzip
import os
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.io import MrcError, read_mrc
from napari_cryoden.io.mrc import TRAILING_SLACK_BYTES

FAST = ["--model", "tiny-test", "--tile", "32", "--overlap", "4", "--device", "cpu", "--precision", "fp32"]
ZEROS_MIB = 512  # of trailing zeros, twice the address-space budget
BOUNDED_CLI = textwrap.dedent("""
    import resource, sys
    import numpy, scipy.fft, skimage.metrics, torch  # what the commands import before reading
    import napari_cryoden.models, napari_cryoden.metrics
    from napari_cryoden.cli import main
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.RLIM_INFINITY))
    sys.exit(main(sys.argv[1:]))
""")


def _map_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "small.mrc"
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=(8, 32, 32)).astype(np.float32))
        mrc.voxel_size = 10.0
    return path.read_bytes()


def _bomb(tmp_path: Path, kind: str, trailing_mib: int = ZEROS_MIB) -> Path:
    """The map, then `trailing_mib` MiB of zeros, as concatenated gzip members / bzip2 streams."""
    head = _map_bytes(tmp_path)
    if kind == "gz":
        member = gzip.compress(b"\0" * 2**26, compresslevel=9)  # 64 MiB of zeros, about 64 kB
        first = gzip.compress(head)
    else:
        member = bz2.compress(b"\0" * 2**26, compresslevel=9)
        first = bz2.compress(head)
    path = tmp_path / f"bomb.mrc.{kind}"
    path.write_bytes(first + member * (trailing_mib // 64))
    return path


@pytest.mark.parametrize("kind", ["gz", "bz2"])
def test_reader_stops_at_the_described_size_and_refuses(kind, tmp_path):
    bomb = _bomb(tmp_path, kind)
    start = time.perf_counter()
    with pytest.raises(MrcError, match="trailing data") as err:
        read_mrc(bomb)
    assert time.perf_counter() - start < 10  # not decompressing 512 MiB of zeros (bz2 is slow)
    assert str(bomb) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["gz", "bz2"])
def test_trailing_bytes_within_the_slack_are_read(kind, tmp_path):
    head = _map_bytes(tmp_path)
    path = tmp_path / f"padded.mrc.{kind}"
    compress = gzip.compress if kind == "gz" else bz2.compress
    path.write_bytes(compress(head + b"\0" * (TRAILING_SLACK_BYTES // 2)))
    assert read_mrc(path).data.shape == (8, 32, 32)
    path.write_bytes(compress(head + b"\0" * (TRAILING_SLACK_BYTES + 1)))
    with pytest.raises(MrcError, match="trailing data"):
        read_mrc(path)


def test_large_claim_with_trailing_flood_is_refused(tmp_path):
    """A header describing more than the uncounted 8 MiB, followed by a flood: counted, not read."""
    data = np.zeros((16, 512, 512), np.float32)  # 16 MiB
    path = tmp_path / "big.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    blob = comp.compress(path.read_bytes()) + comp.compress(b"\0" * 2**26) + comp.flush()
    bomb = tmp_path / "big.mrc.gz"
    bomb.write_bytes(blob)
    with pytest.raises(MrcError, match="trailing data"):
        read_mrc(bomb)


@pytest.mark.parametrize("kind", ["gz", "bz2"])
@pytest.mark.parametrize("command", ["metrics", "denoise"])
def test_cli_refuses_bomb_within_bounded_memory(command, kind, tmp_path, tiny_model_dir):
    bomb = _bomb(tmp_path, kind)
    out = tmp_path / "out.mrc"
    args = [bomb, bomb] if command == "metrics" else [bomb, out, *FAST]
    proc = subprocess.run([sys.executable, "-c", BOUNDED_CLI, command, *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryoden: error: ") and "trailing data" in lines[0], proc.stderr
    assert not out.exists() and sorted(os.listdir(tmp_path)) == sorted(["small.mrc", bomb.name, "user_models"])
