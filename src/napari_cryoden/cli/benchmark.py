"""``cryoden benchmark``: score every model and the classical baselines on held-out test sets.

Imports only the standard library at import time (it is imported by :mod:`.main`); the
evaluation core (:mod:`napari_cryoden.evaluation`) is imported when the command runs. Bad input
raises :class:`ValueError` or :class:`FileExistsError` (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from ._common import format_seconds, int_at_least

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "add_arguments", "run"]

HELP = "reproduce the thesis evaluation (tables 2-5) plus realistic tomograms and micrographs"

DESCRIPTION = """\
Score the noisy input, an oracle best-sigma Gaussian filter, BM4D (tomograms) or
BM3D (micrographs) and every model on test sets with ground truth, made only
from particles no shipped model was trained on (1u6g, 3h84):

  control      single particles, missing wedge + Gaussian noise (thesis Table 2)
  saltpepper   single particles, 10 % salt and pepper (thesis Table 3)
  unseen       one protein, fixed degradation (thesis Table 4)
  multiple     10-40 particles per 64^3 box (thesis Table 5)
  realistic    12 crowded tomograms: tilt series, CTF, dose, shot noise, WBP,
               in three dose bands (15-30, 40-80, 100-160 e-/Å² total)
  micrographs  2D micrographs with CTF and shot noise (2D models, BM3D)

Writes a Markdown report with the 5th/50th/95th percentiles of SSIM, PSNR,
MSE and NRMSE per method in the layout of the thesis tables, the project's
targets, the medians per dose band of the realistic tomograms, a JSON file
with every per-item score (same name, .json) and PNG panels of one example
slice per experiment (img/ next to the report). BM4D runs on the first --bm-n
tomogram items only (realistic: the first --bm-n of each dose band): it is
slow (about 30 s per 64^3 volume on one core). BM3D runs on every micrograph (about 8 s per
512 x 512 image), or on the first --bm3d-n. Needs: pip install "napari-cryoden[benchmark]".
"""

EPILOG = """\
examples:
  cryoden benchmark --maps shared/data/maps_10A --maps-2d shared/data/maps_5A --out docs/benchmarks.md
  cryoden benchmark --experiments control,multiple --models upsampleunet48-gan --n 5 --bm-n 0 \\
      --maps shared/data/maps_10A --out /tmp/quick.md

exit status: 0 success, 1 run failed, 2 bad input or option, 130 interrupted.
"""


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="REPORT.md", required=True,
                   help="Markdown report to write; REPORT.json and img/benchmark_<experiment>.png go beside it")
    p.add_argument("--experiments", metavar="LIST", type=_names, default=None,
                   help="comma-separated experiments (default: all; see above)")
    p.add_argument("--models", metavar="LIST", type=_names, default=None,
                   help="comma-separated model names or card paths (default: every model of 'cryoden models')")
    p.add_argument("--maps", metavar="DIR", default=None,
                   help="particle maps at 10 Å/voxel for the tomogram experiments (e.g. shared/data/maps_10A)")
    p.add_argument("--maps-2d", metavar="DIR", default=None,
                   help="particle maps at 5 Å/voxel for the micrograph experiment (e.g. shared/data/maps_5A)")
    p.add_argument("--n", metavar="N", type=int_at_least(1, "a positive integer"), default=None,
                   help="items per experiment (default: 12 per thesis experiment, 12 realistic tomograms "
                        "cycled through 3 dose bands, 8 micrographs)")
    p.add_argument("--bm-n", metavar="K", type=int_at_least(0, "a non-negative integer"), default=2,
                   help="items per tomogram experiment that BM4D denoises, the first K (realistic: the first K of "
                        "each dose band; default: 2; 0 leaves it out)")
    p.add_argument("--bm3d-n", metavar="K", type=int_at_least(0, "a non-negative integer"), default=None,
                   help="micrographs that BM3D denoises, the first K (default: all; 0 leaves it out)")
    p.add_argument("--seed", metavar="S", type=int_at_least(0, "a non-negative integer"), default=0,
                   help="offset added to every test set's seed (default: 0, the published tables)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="inference precision of the models (default: auto, bf16 where the CPU has it)")
    p.add_argument("--no-panels", action="store_true", help="do not write the PNG panels")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    """Run ``cryoden benchmark`` and return the exit status (0)."""
    from ..evaluation import EXPERIMENTS, report_markdown, run_benchmark, write_panels
    from ..io.atomic import atomic_path

    start = time.perf_counter()
    out = Path(args.out)
    if out.suffix.lower() != ".md":
        raise ValueError(f"--out must end in .md, got {out}")
    json_path = out.with_suffix(".json")
    for path in (out, json_path):
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise ValueError(f"folder {out.parent} does not exist")
    experiments = args.experiments or list(EXPERIMENTS)
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment {unknown[0]!r}; choose from {', '.join(EXPERIMENTS)}")
    maps = {}
    for voxel, folder, option in ((10.0, args.maps, "--maps"), (5.0, args.maps_2d, "--maps-2d")):
        needed = [e for e in experiments if EXPERIMENTS[e].voxel_size == voxel]
        if needed and folder is None:
            raise ValueError(f"{option} is needed for {', '.join(needed)}")
        if needed:
            if not Path(folder).is_dir():
                raise ValueError(f"{option} {folder} is not a folder")
            maps[voxel] = folder
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = run_benchmark(experiments, args.models, maps=maps, n=args.n, bm_n=args.bm_n, bm_n_2d=args.bm3d_n,
                           seed=args.seed, precision=args.precision, log=log)
    panels = {}
    if not args.no_panels:
        written = write_panels(result, out.parent / "img")
        panels = {k: str(p.relative_to(out.parent)) for k, p in written.items()}
    command = "cryoden benchmark " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "benchmark" else "cryoden benchmark"
    seconds = time.perf_counter() - start
    text = report_markdown(result, command=command, panels=panels, seconds=seconds)
    plain = {**result, "experiments": {k: {kk: vv for kk, vv in e.items() if kk != "_panels"}
                                       for k, e in result["experiments"].items()}}
    with atomic_path(json_path, overwrite=args.overwrite) as tmp:
        tmp.write_text(json.dumps(plain, indent=1, allow_nan=True))
    with atomic_path(out, overwrite=args.overwrite) as tmp:
        tmp.write_text(text)
    if not args.quiet:
        print(f"wrote {out} and {json_path} in {format_seconds(seconds)}", file=sys.stderr)
    return 0
