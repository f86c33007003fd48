"""``cryoden denoise``: one file, a batch into ``--output-dir``, or either on a dask cluster.

Imports only the standard library at import time (it is imported by :mod:`.main`); the core
is imported when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Sequence

from ._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, PROG, CliError, ProgressBar
from ._common import error as _error
from ._common import format_voxel_size, non_negative_int
from ._common import note as _note
from ._common import one_line, positive_float, positive_int

HELP = "denoise tomograms, micrographs or stacks (MRC files) with a pretrained network"

#: Shown in ``--help`` without importing torch; a test keeps them equal to
#: :data:`napari_cryoden.models.DEFAULT_MODEL` and :data:`~napari_cryoden.models.DEFAULT_MODEL_2D`.
DEFAULT_MODEL = "upsampleunet48-gan"
DEFAULT_MODEL_2D = "n2n-unet-2d"
#: The model choice that picks the default model for the data's dimensionality.
AUTO_MODEL = "auto"


DESCRIPTION = """\
Denoise cryo-ET tomograms (MRC files) with a pretrained network, tile by
tile, and write the results as float32 MRC files with the inputs' voxel size,
intensity scale and header (origin, start indices, labels, extended header).
3D models take tomograms; 2D models take micrographs and stacks of 2D images
(.mrcs), slice by slice (a tomogram given to a 2D model is denoised slice by
slice along Z, with a note). With --model auto (the default) tomograms go to
the 3D default and micrographs and .mrcs stacks to the 2D default. A 3D model
refuses 2D images and .mrcs stacks.

A network only knows the pixel size it was trained at. When the input's
differs from the model's by more than 20 %, the input is Fourier-cropped to
the model's pixel size (binned, as IMOD's newstack -ftreduce), denoised, and
Fourier-padded back to the input's grid (--resample auto, the default), or
written at the model's pixel size (--resample binned). A header without a
usable pixel size (0, negative, NaN or the 1 Å placeholder) is noted, the
data is denoised as is, and the output keeps the header's value;
--voxel-size sets it.

Two forms:
  cryoden denoise INPUT OUTPUT [options]
  cryoden denoise INPUT [INPUT ...] --output-dir DIR [options]

The second form takes many files or glob patterns (quote them) and writes
DIR/<stem>_denoised.mrc for each (<stem>_denoised.mrcs for .mrcs stacks; the
stem is the name without .gz/.bz2 and the MRC extension). Outputs that exist
are skipped with a note unless --overwrite; a file that fails is reported in
one line and the others go on; the exit status is then non-zero.

An output is never an input (not even with --overwrite). Results are written to
a hidden temporary file in the output's folder and renamed when complete, so a
failed or interrupted run leaves nothing behind. Large files (256 MiB or more)
are read and written tile by tile through memory maps: memory use stays at
the model and a few tiles whatever the volume's size.

With --scheduler the work goes to a dask.distributed cluster (pip install
"napari-cryoden[cluster]"): a local cluster of worker processes ('local', the
default) or a running scheduler (tcp://host:8786) whose workers see the same
files. With --output-dir each input is one task; with INPUT OUTPUT the
tomogram's tiles are spread over the workers and stitched here, with the
same result as on one machine for the same tile, overlap, batch, device and
precision. On a machine with several GPUs, --scheduler local starts one
worker per GPU, each seeing only its own (CUDA_VISIBLE_DEVICES).
"""

EPILOG = """\
examples:
  cryoden denoise tomo.mrc tomo_denoised.mrc
  cryoden denoise tomo.rec out.mrc --device cpu --tile 96 --overlap 16
  cryoden denoise 'tomos/*.rec' extra.mrc --output-dir denoised/
  cryoden denoise micrograph.mrc denoised.mrc --resample binned
  cryoden denoise particles.mrcs --output-dir out/ --voxel-size 1.34
  cryoden denoise 'tomos/*.rec' -o denoised/ --scheduler tcp://head:8786

exit status: 0 success, 1 run failed, 2 bad input or option, 130 interrupted;
with --output-dir: 0 if every input was denoised or skipped, else 2 if only
bad inputs failed, 1 if any run failed.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = (f"{PROG} denoise INPUT OUTPUT [options]\n"
               f"       {PROG} denoise INPUT [INPUT ...] --output-dir DIR [options]")
    p.add_argument("paths", metavar="INPUT", nargs="+",
                   help="tomogram, micrograph or stack to denoise (.mrc .mrcs .rec .map .st .ali, optionally "
                        ".gz/.bz2), then OUTPUT, the float32 MRC file to write; with --output-dir, any "
                        "number of inputs or glob patterns")
    p.add_argument("-o", "--output-dir", metavar="DIR", default=None,
                   help="denoise every INPUT into DIR/<stem>_denoised.mrc (.mrcs for stacks); DIR is "
                        "created if needed")
    p.add_argument("--model", metavar="NAME", default=AUTO_MODEL,
                   help=f"registry name or card path of the network, or 'auto': {DEFAULT_MODEL} for "
                        f"tomograms, {DEFAULT_MODEL_2D} for micrographs and .mrcs stacks (default: auto); "
                        "see 'cryoden models'")
    p.add_argument("--resample", choices=("auto", "off", "binned"), default="auto",
                   help="when the input's pixel size is more than 20%% from the model's: Fourier-bin the "
                        "input to the model's pixel size and pad the result back (auto), write the result "
                        "at the model's pixel size (binned), or leave the data alone (off) (default: auto)")
    p.add_argument("--voxel-size", metavar="Å", type=positive_float, default=None,
                   help="pixel size of the input in Å, overriding its header (and written to the output's)")
    p.add_argument("--tile", metavar="N", type=positive_int, default=None,
                   help="edge of the output block each tile produces, in voxels, a multiple of the "
                        "network stride (default: automatic, the tiles that waste least on context "
                        "and fit in free memory, with cores of at most N^3 voxels, N = "
                        "256 on the CPU, 512 on CUDA)")
    p.add_argument("--overlap", metavar="N", type=non_negative_int, default=None,
                   help="voxels of context read on each side of every tile and discarded; 2*N must be a "
                        "multiple of the network stride (default: from the model card, else the "
                        "measured receptive field of the network)")
    p.add_argument("--batch", metavar="N", type=positive_int, default=None,
                   help="tiles per forward pass (default: automatic, from free memory)")
    p.add_argument("--max-memory", metavar="GIB", type=positive_float, default=None,
                   help="memory one forward pass may use when the tile size is automatic, in GiB "
                        "(default: a quarter of the available RAM on the CPU, 70%% of the free GPU "
                        "memory on CUDA)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the network runs; auto takes CUDA when available (default: auto)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast dtype of the forward pass; the output is float32 either way "
                        "(default: auto)")
    p.add_argument("--nonfinite", choices=("replace", "refuse"), default="replace",
                   help="NaN/Inf voxels in the input: replace them by the median (with a note giving "
                        "their number) or refuse the input (default: replace)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    p.add_argument("--scheduler", metavar="ADDRESS", nargs="?", const="local", default=None,
                   help="run on a dask.distributed cluster: 'local' (the default when ADDRESS is left out) "
                        "starts worker processes on this machine, tcp://host:8786 uses a running "
                        "scheduler; needs the 'distributed' package")
    p.add_argument("--workers", metavar="N", type=positive_int, default=None,
                   help="worker processes of --scheduler local (default: one per CPU core, at most 4)")


def _check_output(src: Path, dst: Path, *, overwrite: bool) -> None:
    """Refuse an output whose name is too long for its folder, that is the input, exists without
    `overwrite`, or has no folder."""
    from ..io import same_file

    folder = dst.parent
    try:
        limit = os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    size = len(os.fsencode(dst.name))
    if size > limit:
        raise CliError(f"OUTPUT name {dst.name[:40]}... is {size} bytes long, more than the {limit} bytes a file "
                       f"name may have in {folder}; choose a shorter name")
    if same_file(src, dst):
        raise CliError(f"OUTPUT {dst} is the input file; choose another output name")
    if dst.is_dir():
        raise CliError(f"OUTPUT {dst} is a folder; give a file name")
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise CliError(f"OUTPUT {dst} exists; pass --overwrite to replace it")
    if not folder.is_dir():
        raise CliError(f"OUTPUT folder {folder} does not exist")


def _model_for(src: Path, args: argparse.Namespace, cache: dict):
    """The model for input `src`: ``--model``, or with ``auto`` the default for its dimensionality
    (read from the header alone); loaded once per name into `cache`."""
    from ..inference.stream import is_image_stack_path
    from ..io.mrc import header_shape
    from ..models import default_model_for, load_model

    name = args.model or AUTO_MODEL
    if name == AUTO_MODEL:
        name = default_model_for(len(header_shape(src)), image_stack=is_image_stack_path(src))
    if name not in cache:
        cache[name] = load_model(name)
    return cache[name]


def _input_notes(src: Path, info: dict, model) -> list[str]:
    """What the user is told about an input before its progress bar: what the reader tolerated,
    the pixel size (resampled, unknown, mismatched), a tomogram given to a 2D model."""
    from ..inference.stream import is_image_stack_path

    notes = [str(n) for n in info.get("read_notes", ())]
    plan = info.get("resample_plan")
    if plan is not None:
        notes += [f"{src.name}: {n}" for n in plan.notes]
        if plan.resampled:
            model_shape = " x ".join(str(plan.model_shape[a]) for a in plan.axes)
            back = ("written at the model's pixel size" if plan.mode == "binned"
                    else "Fourier-padded back to the input's grid")
            notes.append(f"{src.name}: {plan.describe().replace(' (output kept at the model' + chr(39) + 's voxel size)', '')}"
                         f" for model {model.name!r} ({model_shape} on the model's grid), {back}")
    if info.get("mode") == "stack" and not is_image_stack_path(src):
        notes.append(f"model {model.name!r} is a 2D model: {src.name} is denoised slice by slice along Z")
    return notes


def _say_notes(src: Path, info: dict, model, *, quiet: bool) -> None:
    """Write the notes on input `src`: the replaced NaN/Inf voxels always, the others
    (:func:`_input_notes`) unless `quiet`."""
    if info.get("nonfinite"):
        _note(f"replaced {info['nonfinite']} NaN/Inf voxels of {src.name} by the median "
              f"{info['nonfinite_value']:g} (use --nonfinite refuse to stop instead)")
    if not quiet:
        for note in _input_notes(src, info, model):
            _note(note)


_GLOB_CHARS = set("*?[")


def _expand_inputs(patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Input paths from names and glob patterns (sorted matches), without repeats; and the
    patterns that matched nothing."""
    import glob

    found: list[Path] = []
    seen: set[str] = set()
    unmatched = []
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern) and not Path(pattern).exists():
            matches = sorted(glob.glob(pattern))
            if not matches:
                unmatched.append(pattern)
                continue
        else:
            matches = [pattern]
        for m in matches:
            key = str(Path(m).resolve())
            if key not in seen:
                seen.add(key)
                found.append(Path(m))
    return found, unmatched


def _denoise_one(src: Path, dst: Path, model, device, precision: str, args: argparse.Namespace,
                 label: str, client=None) -> tuple[object, int]:
    """Denoise one file with a progress bar and the notes; returns the result and the tile count.

    With a dask `client`, the file's tiles are spread over the cluster's workers."""
    from .. import inference

    # The core logs replaced NaN/Inf voxels; the CLI says it once itself, as a note.
    logging.getLogger("napari_cryoden").addHandler(logging.NullHandler())
    info: dict = {}
    run = inference.iter_denoise_file if client is None else partial(inference.cluster.iter_split_denoise_file, client)
    steps = run(
        src, dst, model, tile=args.tile, overlap=args.overlap, batch_size=args.batch, device=str(device),
        precision=precision, nonfinite=args.nonfinite, overwrite=args.overwrite, info=info,
        memory_bytes=int(args.max_memory * 2**30) if args.max_memory else None,
        resample=args.resample, voxel_size=args.voxel_size,
    )
    bar = None if args.quiet else ProgressBar(label)
    try:
        # Arguments are checked before the first report, so a bad value ends here with one line.
        done, total = next(steps)
        _say_notes(src, info, model, quiet=args.quiet)
        while True:
            if bar is not None:
                bar.update(done, total)
            try:
                done, total = next(steps)
            except StopIteration as stop:
                return stop.value, total
    finally:
        if bar is not None:
            bar.close()
        steps.close()


def _summary(result, device, precision: str, total: int, seconds: float) -> str:
    known = result.info.get("voxel_size_known", True) if isinstance(getattr(result, "info", None), dict) else True
    size = format_voxel_size(result.voxel_size) if known else "unknown (the header's kept)"
    return (f"{PROG}: wrote {result.output}: shape {tuple(result.shape)}, voxel size "
            f"{size}, model {result.model} "
            f"({getattr(device, 'type', device)}, {precision}), "
            f"{total} tiles, {seconds:.1f} s")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.output_dir is None and len(args.paths) != 2:
        raise CliError(f"give INPUT OUTPUT, or inputs with --output-dir DIR (got {len(args.paths)} "
                       f"path{'s' if len(args.paths) != 1 else ''})")
    if args.scheduler is not None or args.workers is not None:
        _check_cluster_options(args)
    if args.output_dir is not None:
        return _run_denoise_batch(args)
    src, dst = (Path(p) for p in args.paths)
    _check_output(src, dst, overwrite=args.overwrite)

    from ..inference import resolve_device, resolve_precision

    if args.scheduler is not None:  # the tomogram's tiles on the cluster; device and precision decided there
        from ..inference.cluster import connect

        model = _model_for(src, args, {})
        with connect(args.scheduler, args.workers, device=args.device) as client:
            result, total = _denoise_one(src, dst, model, args.device, args.precision, args,
                                         f"denoising {src.name}", client=client)
        if not args.quiet:
            print(_summary(result, result.info["device"], result.info["precision"], total,
                           time.perf_counter() - start), flush=True)
        return EXIT_OK

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    model = _model_for(src, args, {})
    result, total = _denoise_one(src, dst, model, device, precision, args, f"denoising {src.name}")
    if not args.quiet:
        print(_summary(result, device, precision, total, time.perf_counter() - start), flush=True)
    return EXIT_OK


def _run_denoise_batch(args: argparse.Namespace) -> int:
    """``--output-dir``: every input in turn; skips existing outputs, goes on after a failure."""
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--output-dir {out_dir} is a file, not a folder")
    inputs, unmatched = _expand_inputs(args.paths)
    failed: list[int] = []
    for pattern in unmatched:
        _error(f"{pattern}: no file matches this pattern")
        failed.append(EXIT_USAGE)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create --output-dir {out_dir}: {one_line(exc)}") from None

    from ..inference import resolve_device, resolve_precision
    from ..inference.stream import prefetch

    models: dict = {}
    if args.model != AUTO_MODEL:
        from ..models import load_model

        models[args.model] = load_model(args.model)  # a bad name ends the run before the first file
    if args.scheduler is not None:
        return _run_denoise_batch_cluster(args, inputs, len(unmatched), failed, models)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    written = skipped = 0
    claimed: dict[Path, Path] = {}
    input_ids = _file_ids(inputs)
    for i, src in enumerate(inputs, 1):
        start = time.perf_counter()
        try:
            dst = _claim_output(src, out_dir, claimed, args, input_ids)
            if dst is None:
                skipped += 1
                continue
            label = f"denoising {src.name}" + (f" ({i}/{len(inputs)})" if len(inputs) > 1 else "")
            if i < len(inputs):  # the disk reads the next input while this one is denoised
                prefetch(inputs[i])
            result, total = _denoise_one(src, dst, _model_for(src, args, models), device, precision, args, label)
        except Exception as exc:  # one line, and the next file
            failed.append(_file_failure(src, exc))
            continue
        written += 1
        if not args.quiet:
            print(_summary(result, device, precision, total, time.perf_counter() - start), flush=True)
    return _batch_summary(args, written, len(inputs) + len(unmatched), skipped, failed)


def _file_ids(paths: Sequence[Path]) -> dict[tuple[int, int], Path]:
    """(device, inode) -> path of each existing file of `paths` (symlinks followed)."""
    ids = {}
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        ids.setdefault((st.st_dev, st.st_ino), path)
    return ids


def _claim_output(src: Path, out_dir: Path, claimed: dict[Path, Path], args: argparse.Namespace,
                  inputs: dict[tuple[int, int], Path]) -> Path | None:
    """The output of batch input `src` in `out_dir`, or None when it exists and is skipped (said in
    a note). Raises :class:`CliError` when another input claimed the same output, when the output
    is another of the batch's `inputs` (from :func:`_file_ids`) and ``--overwrite`` is given (an
    input is never replaced), and what :func:`_check_output` raises."""
    from ..inference.stream import denoised_name

    dst = out_dir / denoised_name(src)
    if dst in claimed:
        raise CliError(f"its output {dst} is also the output of {claimed[dst]}; rename one")
    claimed[dst] = src
    if (dst.exists() or dst.is_symlink()) and not args.overwrite and not _is_input(src, dst):
        _note(f"skipping {src}: {dst} exists (pass --overwrite to replace it)")
        return None
    other = inputs.get(next(iter(_file_ids([dst])), None))
    if other is not None and not _is_input(src, dst):  # the input itself: _check_output says so
        raise CliError(f"its output {dst} is another input of this run ({other}); an input is never "
                       "replaced, not even with --overwrite: choose another --output-dir")
    _check_output(src, dst, overwrite=args.overwrite)
    return dst


def _file_failure(src: Path, exc: BaseException) -> int:
    """Report a failed input of a batch in one line; its exit status (2 bad input, 1 failure)."""
    if isinstance(exc, (CliError, FileExistsError, ValueError, OSError, MemoryError, RuntimeError)):
        message = one_line(exc)
        _error(message if str(src) in message else f"{src}: {message}")
        return EXIT_USAGE if isinstance(exc, (CliError, FileExistsError, ValueError)) else EXIT_FAILURE
    # an unforeseen failure (a cluster's own errors, such as a worker that died, are not ours)
    kind = "" if type(exc).__module__.split(".")[0] == "distributed" else "internal error: "
    _error(f"{src}: {kind}{type(exc).__name__}: {one_line(exc)}")
    return EXIT_FAILURE


def _batch_summary(args: argparse.Namespace, written: int, n_inputs: int, skipped: int, failed: list[int]) -> int:
    """Print the batch's last line (unless quiet and all went well); the batch's exit status."""
    if not args.quiet or failed:
        parts = [f"denoised {written} of {n_inputs}"]
        if skipped:
            parts.append(f"skipped {skipped} (output exists)")
        if failed:
            parts.append(f"{len(failed)} failed")
        print(f"{PROG}: {', '.join(parts)}", file=sys.stderr if failed else sys.stdout, flush=True)
    if not failed:
        return EXIT_OK
    return EXIT_FAILURE if EXIT_FAILURE in failed else EXIT_USAGE


def _check_cluster_options(args: argparse.Namespace) -> None:
    """--scheduler and --workers make sense together, and dask.distributed is installed."""
    from ..inference import cluster

    if args.scheduler is None:
        raise CliError("--workers sizes the local cluster of --scheduler local; add --scheduler")
    if cluster.parse_scheduler(args.scheduler) != "local" and args.workers is not None:
        raise CliError("--workers is for --scheduler local; a running scheduler has its own workers")
    try:
        cluster.require_distributed()
    except ImportError as exc:
        raise CliError(f"--scheduler: {one_line(exc)}") from None


def _run_denoise_batch_cluster(args: argparse.Namespace, inputs: list[Path], n_unmatched: int, failed: list[int],
                               models: dict) -> int:
    """``--output-dir`` with ``--scheduler``: one task per input on the cluster's workers, reported
    as they complete (one group of tasks per model, with ``--model auto``); skips and failures as
    :func:`_run_denoise_batch`."""
    from ..inference.cluster import connect, map_denoise_files

    out_dir = Path(args.output_dir)
    written = skipped = 0
    claimed: dict[Path, Path] = {}
    input_ids = _file_ids(inputs)
    groups: dict[str, list] = {}
    for src in inputs:
        try:
            dst = _claim_output(src, out_dir, claimed, args, input_ids)
            if dst is None:
                skipped += 1
                continue
            model = _model_for(src, args, models)
        except Exception as exc:  # one line, and the next file
            failed.append(_file_failure(src, exc))
            continue
        groups.setdefault(model.name, []).append((src, dst))
    by_name = {m.name: m for m in models.values()}
    if groups:
        # The core logs replaced NaN/Inf voxels; the CLI says it once itself, as a note.
        logging.getLogger("napari_cryoden").addHandler(logging.NullHandler())

        with connect(args.scheduler, args.workers, device=args.device) as client:
            for name, jobs in groups.items():
                model = by_name[name]
                outcomes = map_denoise_files(
                    client, jobs, model, tile=args.tile, overlap=args.overlap, batch_size=args.batch,
                    device=args.device, precision=args.precision, nonfinite=args.nonfinite, overwrite=args.overwrite,
                    memory_bytes=int(args.max_memory * 2**30) if args.max_memory else None,
                    resample=args.resample, voxel_size=args.voxel_size,
                )
                try:
                    for outcome in outcomes:
                        src, result = outcome.input, outcome.result
                        if outcome.error is not None:
                            failed.append(_file_failure(src, outcome.error))
                            continue
                        written += 1
                        info = result.info
                        _say_notes(src, info, model, quiet=args.quiet)
                        if args.quiet:
                            continue
                        print(_summary(result, info["device"], info["precision"], result.tiles, result.seconds),
                              flush=True)
                finally:
                    outcomes.close()  # on an interrupt: stops the running tasks, cancels the others
    return _batch_summary(args, written, len(inputs) + n_unmatched, skipped, failed)


def _is_input(a: Path, b: Path) -> bool:
    """True when `b` is the file `a` itself (the output would be the input: an error, not a skip)."""
    from ..io import same_file

    return b.exists() and same_file(a, b)
