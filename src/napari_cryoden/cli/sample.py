"""``cryoden sample``: write the simulated sample tomogram.

Imports only the standard library at import time (it is imported by :mod:`.main`); the
simulator is imported when the command runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from ._common import EXIT_OK, PROG, CliError, non_negative_int

HELP = "write the simulated sample tomogram (and its clean version) as MRC files"
DESCRIPTION = ("Write a small simulated crowded tomogram (48 x 96 x 96 voxels, 10 Å/voxel) with a "
               "missing wedge and Gaussian noise, made on the fly (no download), and optionally its "
               "clean version. The same data is napari's sample 'Simulated tomogram'.")
EPILOG = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", metavar="OUTPUT", help="noisy simulated tomogram to write (MRC)")
    p.add_argument("--clean", metavar="CLEAN", help="also write the clean (noiseless) version here")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")


def _check_distinct_outputs(outputs: Sequence[Path], *, overwrite: bool) -> None:
    """Check every output of a command before anything is written.

    Raises :class:`CliError` when two of `outputs` are the same file (by name, link or an
    existing file's identity), when one exists and `overwrite` is False, is a folder, or has
    no folder.
    """
    from ..io import same_file

    for i, dst in enumerate(outputs):
        for other in outputs[:i]:
            if Path(os.path.abspath(dst)) == Path(os.path.abspath(other)) or (
                    dst.exists() and other.exists() and same_file(dst, other)):
                raise CliError(f"{dst} is given twice as an output; give each output its own name")
        if dst.is_dir():
            raise CliError(f"OUTPUT {dst} is a folder; give a file name")
        if (dst.exists() or dst.is_symlink()) and not overwrite:
            raise CliError(f"OUTPUT {dst} exists; pass --overwrite to replace it")
        if not dst.resolve().parent.is_dir():
            raise CliError(f"folder of {dst} does not exist")


def run(args: argparse.Namespace) -> int:
    from ..io import write_mrc
    from ..simulate import sample_tomogram

    outputs = [Path(args.output)] + ([Path(args.clean)] if args.clean else [])
    _check_distinct_outputs(outputs, overwrite=args.overwrite)
    noisy, clean, voxel_size = sample_tomogram(seed=args.seed)
    write_mrc(outputs[0], noisy, voxel_size, overwrite=args.overwrite, label="cryoden sample (noisy)")
    if args.clean:
        write_mrc(outputs[1], clean, voxel_size, overwrite=args.overwrite, label="cryoden sample (clean)")
    print(f"{PROG}: wrote {', '.join(map(str, outputs))}: simulated tomogram {noisy.shape}, "
          f"{voxel_size:g} Å/voxel", flush=True)
    return EXIT_OK
