"""atheris fuzz target for the MRC reader (not run in CI).

Every input is written as an MRC file and read back with :func:`napari_cryoden.io.read_mrc`. The
only allowed failure is :class:`~napari_cryoden.io.MrcError` with a one-line message; anything
else (another exception, a crash, a large allocation caught by ``-rss_limit_mb``) is a finding.

Run::

    pip install atheris
    python fuzz/fuzz_reader.py -rss_limit_mb=512 -max_len=8192 -runs=100000 [corpus_dir]

A corpus of small valid files (e.g. from ``cryoden sample``) makes the fuzzer start inside the
format rather than at its magic numbers.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from napari_cryoden.io import MrcError, read_mrc

_DIR = tempfile.mkdtemp(prefix="cryoden-fuzz-")
_PATHS = {suffix: os.path.join(_DIR, f"input{suffix}") for suffix in (".mrc", ".mrc.gz")}


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    suffix = ".mrc.gz" if fdp.ConsumeBool() else ".mrc"
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    if suffix == ".mrc.gz":
        import gzip

        payload = gzip.compress(payload, compresslevel=1)
    path = _PATHS[suffix]
    with open(path, "wb") as fh:
        fh.write(payload)
    try:
        vol = read_mrc(path)
    except MrcError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"multi-line error: {exc!r}") from None
        return
    if vol.data.size == 0 or min(vol.data.shape) < 1:
        raise AssertionError(f"empty data returned: shape {vol.data.shape}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
