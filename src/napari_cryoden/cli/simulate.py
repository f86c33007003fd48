"""``cryoden simulate``: write simulated tomograms, micrographs or thesis pairs as MRC files.

Imports only the standard library at import time (it is imported by :mod:`.main`); the simulators
are imported when the command runs. Bad input raises :class:`ValueError` or
:class:`FileExistsError` (exit status 2), other failures :class:`OSError` (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

from ._common import PROG, float_where, int_at_least

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "add_arguments", "run"]


HELP = "simulate a tomogram, a micrograph or thesis training pairs, with clean and even/odd versions"

DESCRIPTION = """\
Simulate data with ground truth and write it to OUT_DIR as float32 MRC files
with the voxel size set.

  tomogram    a crowded specimen imaged as a tilt series (CTF, radiation damage,
              Poisson shot noise at --dose) and reconstructed by weighted
              back-projection: noisy.mrc (full dose), even.mrc and odd.mrc
              (independent half-dose reconstructions; noisy = (even + odd) / 2)
              and clean.mrc (noiseless reconstruction with the same missing
              wedge and CTF). Protein is dark unless --invert.
  micrograph  particle projections with CTF and shot noise: noisy.mrc (sum of
              all frames), even.mrc and odd.mrc (sums of the even and of the odd
              frames) and clean.mrc (noiseless).
  thesis      --count pairs of the van Gijn (2019) thesis dataset:
              noisy_000.mrc, clean_000.mrc, ... (missing wedge and Gaussian
              noise at --snr; --variant saltpepper: 10 % salt and pepper
              instead; --variant multi: several particles per box).

Tomograms and micrographs also get params.json (every parameter and derived
quantity). Particles come from --maps (a folder of positive-density MRC maps,
e.g. the SHREC maps; their voxel size is the default --voxel-size) or are
procedural pseudo-proteins. Existing files are replaced only with --overwrite;
each file is written to a temporary name and renamed when complete.
"""

EPILOG = """\
examples:
  cryoden simulate tomogram sim/ --shape 64,128,128 --dose 100 --seed 1
  cryoden simulate tomogram sim/ --maps shared/data/maps_10A --membranes 2
  cryoden simulate micrograph mic/ --shape 1024,1024 --voxel-size 5 --dose 40
  cryoden simulate thesis pairs/ --count 100 --variant control --maps shared/data/maps_10A

exit status: 0 success, 1 run failed, 2 bad input or option, 130 interrupted.
"""

_DEFAULT_SHAPE = {"tomogram": (64, 128, 128), "micrograph": (512, 512), "thesis": (64, 64, 64)}
_DEFAULT_VOXEL = {"tomogram": 10.0, "micrograph": 5.0, "thesis": 10.0}
_DEFAULT_DEFOCUS = {"tomogram": 3.0, "micrograph": 1.5}
_DEFAULT_DOSE = {"tomogram": 100.0, "micrograph": 40.0}
#: Particles per box of the thesis "multi" variant (section 4.4) unless --density gives a count.
_MULTI_PARTICLES = 8


def _shape(text: str) -> tuple[int, ...]:
    parts = [p for p in text.replace("x", ",").replace("X", ",").split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not 1 <= len(values) <= 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected 1 to 3 positive integers, got {text!r}")
    return values


_positive_float = float_where(lambda v: v > 0, "a positive number", not_float="a number")
_non_negative_float = float_where(lambda v: v >= 0, "a number >= 0", not_float="a number")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    return int_at_least(minimum, not_int="an integer")


def _density(text: str) -> float | int:
    """A fraction in [0, 1) (with a decimal point) or a particle count (an integer)."""
    try:
        value: float | int = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a fraction like 0.15 or a count like 40, got {text!r}") from None
        if not 0 <= value < 1:
            raise argparse.ArgumentTypeError(f"a fraction must be in [0, 1), got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"a count must be >= 0, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``cryoden simulate``."""
    p.add_argument("kind", choices=("tomogram", "micrograph", "thesis"), help="what to simulate")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write into (created if its parent exists)")
    p.add_argument("--shape", type=_shape, default=None, metavar="Z,Y,X",
                   help="size in voxels: Z,Y,X for tomograms (default 64,128,128), Y,X for micrographs "
                        "(default 512,512), one edge or Z,Y,X for thesis boxes (default 64); one number "
                        "means a cube/square")
    p.add_argument("--voxel-size", type=_positive_float, default=None, metavar="Å",
                   help="voxel (pixel) size in Å (default: that of the --maps, else 10 for tomograms and "
                        "thesis pairs, 5 for micrographs)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default: 0)")
    p.add_argument("--maps", metavar="FOLDER", default=None,
                   help="folder of particle maps (*.mrc) at the voxel size (default: procedural particles)")
    p.add_argument("--density", type=_density, default=None, metavar="F|N",
                   help="particle volume (area) fraction like 0.15, or a count like 40 (default: 0.15 for "
                        "tomograms, 0.2 for micrographs; thesis multi: 8 particles)")
    p.add_argument("--membranes", type=_int_at_least(0), default=0, metavar="N",
                   help="tomogram: number of lipid vesicles (default: 0)")
    p.add_argument("--no-ice", dest="ice", action="store_false", help="no low-frequency ice background")
    p.add_argument("--defocus", type=_non_negative_float, default=None, metavar="µm",
                   help="defocus in µm, positive underfocus (default: 3 for tomograms, 1.5 for micrographs)")
    p.add_argument("--dose", type=_positive_float, default=None, metavar="e/Å²",
                   help="total electron dose in e-/Å² (default: 100 over a tilt series, 40 per micrograph)")
    p.add_argument("--tilt-range", type=_positive_float, default=60.0, metavar="DEG",
                   help="tomogram and thesis: maximum |tilt| in degrees, below 90 (default: 60)")
    p.add_argument("--tilt-step", type=_positive_float, default=3.0, metavar="DEG",
                   help="tomogram: degrees between tilts (default: 3)")
    p.add_argument("--thickness", type=_positive_float, default=None, metavar="Å",
                   help="tomogram: specimen thickness the beam crosses at 0° tilt, ice included (at least the "
                        "slab's, Z × voxel size; default: the slab's); thicker ice attenuates the beam")
    p.add_argument("--detector-correlation", type=_non_negative_float, default=0.0, metavar="RHO",
                   help="tomogram: correlation of the shot noise between neighbouring detector pixels, "
                        "0 to 0.7 (default: 0, white noise)")
    p.add_argument("--frames", type=_int_at_least(2), default=40, metavar="N",
                   help="micrograph: movie frames, split into even and odd sums (default: 40)")
    p.add_argument("--invert", action="store_true", help="protein bright instead of dark")
    p.add_argument("--count", type=_int_at_least(1), default=1, metavar="N",
                   help="thesis: number of (noisy, clean) pairs (default: 1)")
    p.add_argument("--variant", choices=("control", "saltpepper", "multi"), default="control",
                   help="thesis: control (one centred particle, missing wedge, Gaussian noise), "
                        "saltpepper (10 %% salt-and-pepper noise) or multi (several particles) "
                        "(default: control)")
    p.add_argument("--snr", type=_positive_float, default=0.5,
                   help="thesis: signal-to-noise ratio of the Gaussian noise (default: 0.5)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")


def _resolve_shape(kind: str, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if shape is None:
        return _DEFAULT_SHAPE[kind]
    ndim = 2 if kind == "micrograph" else 3
    if len(shape) == 1:
        return shape * ndim
    if len(shape) != ndim:
        raise ValueError(f"--shape for a {kind} needs 1 or {ndim} numbers, got {len(shape)}")
    return shape


def _load_maps(folder: str | None, voxel_size: float | None) -> tuple[dict | None, float | None]:
    """The maps of `folder` and their voxel size; a one-line ValueError on bad input."""
    if folder is None:
        return None, None
    from ..io import read_mrc
    from ..simulate import load_particle_maps

    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"--maps {folder}: not a folder")
    try:
        maps = load_particle_maps(path)
    except FileNotFoundError:
        raise ValueError(f"--maps {folder}: no *.mrc particle maps in it") from None
    first = sorted(path.glob("*.mrc"))[0]
    header = read_mrc(first)
    known = header.metadata.get("voxel_size_known", True)
    map_voxel = float(sum(header.voxel_size) / len(header.voxel_size)) if known else None
    if voxel_size is not None and map_voxel is not None and abs(map_voxel - voxel_size) > 0.01 * voxel_size:
        raise ValueError(f"the maps in {folder} are at {map_voxel:g} Å/voxel but --voxel-size is {voxel_size:g}; "
                         "particles would have the wrong size")
    return maps, map_voxel


def _prepare_dir(out_dir: Path, names: list[str], overwrite: bool) -> list[Path]:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUT_DIR {out_dir} exists and is not a folder")
    if not out_dir.exists() and not out_dir.resolve().parent.is_dir():
        raise ValueError(f"folder of OUT_DIR {out_dir} does not exist")
    paths = [out_dir / n for n in names]
    if not overwrite:
        existing = [p.name for p in paths if p.exists() or p.is_symlink()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise FileExistsError(f"{out_dir / existing[0]} exists{more}; pass --overwrite to replace")
    return paths


class _Writer:
    """Writes the set into a hidden staging folder inside OUT_DIR, then renames every file into
    place: a failure while writing (a full disk, Ctrl-C) leaves OUT_DIR as it was, never a mix of
    new and old files. Renames within a folder need no space."""

    def __init__(self, out_dir: Path, overwrite: bool):
        import tempfile

        self.overwrite = overwrite
        self.stage = Path(tempfile.mkdtemp(prefix=".cryoden-simulate.", dir=out_dir))
        self.staged: list[tuple[Path, Path]] = []

    def mrc(self, path: Path, data, voxel_size: float, label: str) -> None:
        from ..io import write_mrc

        write_mrc(self.stage / path.name, data, voxel_size, label=label)
        self.staged.append((self.stage / path.name, path))

    def json(self, path: Path, obj: dict) -> None:
        from ..io import atomic_path

        with atomic_path(self.stage / path.name, overwrite=False) as tmp:
            tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        self.staged.append((self.stage / path.name, path))

    def commit(self) -> None:
        """Move the staged files into place (FileExistsError, before any move, for a file that
        appeared meanwhile without `overwrite`)."""
        import os

        if not self.overwrite:
            existing = [final for _, final in self.staged if final.exists() or final.is_symlink()]
            if existing:
                raise FileExistsError(f"{existing[0]} appeared while writing; pass --overwrite to replace it")
        for staged, final in self.staged:
            os.replace(staged, final)
        self.stage.rmdir()

    def undo(self) -> None:
        import shutil

        shutil.rmtree(self.stage, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """Run ``cryoden simulate`` and return the exit status (0)."""
    start = time.perf_counter()
    kind = args.kind
    shape = _resolve_shape(kind, args.shape)
    out_dir = Path(args.out_dir)
    if kind == "thesis":
        names = [f"{stem}_{i:03d}.mrc" for i in range(args.count) for stem in ("noisy", "clean")]
    else:
        names = ["noisy.mrc", "even.mrc", "odd.mrc", "clean.mrc", "params.json"]
    paths = _prepare_dir(out_dir, names, args.overwrite)
    if args.maps is not None and out_dir.exists() and Path(args.maps).exists() \
            and out_dir.resolve() == Path(args.maps).resolve():
        raise ValueError(f"OUT_DIR {out_dir} is the --maps folder; choose another folder")
    maps, map_voxel = _load_maps(args.maps, args.voxel_size)
    voxel_size = args.voxel_size or map_voxel or _DEFAULT_VOXEL[kind]

    if kind == "thesis":
        outputs = _simulate_thesis(args, shape, voxel_size, maps)
    elif kind == "tomogram":
        from ..simulate import simulate_tomogram

        sim = simulate_tomogram(
            shape, voxel_size=voxel_size, particles=maps,
            density=0.15 if args.density is None else args.density, membranes=args.membranes,
            ice=args.ice, tilt_range=args.tilt_range, tilt_step=args.tilt_step,
            defocus_um=_DEFAULT_DEFOCUS[kind] if args.defocus is None else args.defocus,
            dose_total=args.dose or _DEFAULT_DOSE[kind], ice_thickness=args.thickness,
            detector_correlation=args.detector_correlation, invert=args.invert, seed=args.seed,
        )
        outputs = [sim.noisy, sim.even, sim.odd, sim.clean, sim.params]
    else:
        from ..simulate import simulate_micrograph

        sim = simulate_micrograph(
            shape, pixel_size=voxel_size, particles=maps,
            density=0.2 if args.density is None else args.density, ice=args.ice,
            defocus_um=_DEFAULT_DEFOCUS[kind] if args.defocus is None else args.defocus,
            dose_total=args.dose or _DEFAULT_DOSE[kind], n_frames=args.frames, invert=args.invert,
            seed=args.seed,
        )
        outputs = [sim.noisy, sim.even, sim.odd, sim.clean, sim.params]

    new_dir = not out_dir.exists()
    out_dir.mkdir(exist_ok=True)
    writer = None
    try:
        writer = _Writer(out_dir, args.overwrite)
        for path, data in zip(paths, outputs):
            if isinstance(data, dict):
                writer.json(path, data)
            else:
                writer.mrc(path, data, voxel_size, label=f"cryoden simulate {kind} ({path.stem})")
        writer.commit()
    except BaseException:
        if writer is not None:
            writer.undo()
        if new_dir:
            try:
                out_dir.rmdir()  # only if empty
            except OSError:
                pass
        raise
    if not args.quiet:
        what = (f"{args.count} thesis pair{'s' if args.count > 1 else ''} ({args.variant})" if kind == "thesis"
                else f"simulated {kind} {tuple(shape)}")
        extra = ""
        if kind != "thesis":
            p = outputs[-1]
            extra = f", {p['n_particles']} particles, dose {p['dose_total']:g} e-/Å²"
        print(f"{PROG}: wrote {len(paths)} files to {out_dir}: {what}, {voxel_size:g} Å/voxel{extra}, "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    return 0


def _simulate_thesis(args: argparse.Namespace, shape: tuple[int, ...], voxel_size: float, maps: dict | None) -> list:
    import numpy as np

    from ..simulate import thesis_pair
    from ..simulate.specimen import procedural_particles

    rng = np.random.default_rng(args.seed)
    particles = list(maps.values()) if maps is not None else procedural_particles(rng, voxel_size)
    if args.variant == "multi":
        if isinstance(args.density, float):
            raise ValueError("--density for thesis multi is a particle count (an integer)")
        n_particles = _MULTI_PARTICLES if args.density is None else args.density
    else:
        n_particles = 1
    noise = "salt-and-pepper" if args.variant == "saltpepper" else "gaussian"
    outputs = []
    for _ in range(args.count):
        noisy, clean = thesis_pair(particles, rng, box=shape, n_particles=max(1, n_particles),
                                   snr=args.snr, tilt_max_deg=args.tilt_range, noise=noise)
        outputs += [noisy, clean]
    return outputs
