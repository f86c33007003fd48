"""The ``cryoden`` command: parse arguments, call the core, turn the outcome into an exit status.

The CLI is a thin layer over the core (:mod:`napari_cryoden.io`, :mod:`~napari_cryoden.models`,
:mod:`~napari_cryoden.inference`). This module imports only the standard library at import time;
each subcommand imports what it needs when it runs, so ``cryoden --help`` never imports torch.

Subcommands live in :data:`SUBCOMMANDS`, a table keyed by name: adding ``simulate``, ``train``,
``metrics`` or ``benchmark`` means writing an ``_add_<name>(parser)`` and a ``_run_<name>(args)``
and adding one entry.

Exit statuses
-------------
0
    Success.
1
    The run failed for a reason outside the arguments (disk full, permission denied, out of
    memory, an unforeseen internal error); one line ``cryoden: error: ...`` on stderr.
2
    Bad input: a missing, non-MRC, corrupt or truncated file, a bad option value, an unknown
    model, an output that exists or is the input. One line ``cryoden: error: ...`` on stderr, no
    traceback, and no output file (nor temporary file) is left behind.
130
    Interrupted (Ctrl-C or SIGTERM); no partial output is left behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence, TextIO

from . import benchmark as _benchmark_cmd  # stdlib-only at import time
from . import simulate as _simulate_cmd  # stdlib-only at import time
from . import train as _train_cmd  # stdlib-only at import time
from ._common import format_seconds as _format_seconds
from ._common import int_at_least, printable

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "SUBCOMMANDS", "main"]

PROG = "cryoden"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Shown in ``--help`` without importing torch; a test keeps them equal to
#: :data:`napari_cryoden.models.DEFAULT_MODEL` and :data:`~napari_cryoden.models.DEFAULT_MODEL_2D`.
DEFAULT_MODEL = "upsampleunet48-gan"
DEFAULT_MODEL_2D = "n2n-unet-2d"
#: The model choice that picks the default model for the data's dimensionality.
AUTO_MODEL = "auto"


class CliError(Exception):
    """A problem with the user's input, found by the CLI itself: exit status 2."""


class _UsageError(Exception):
    """Raised by :class:`_Parser` instead of printing argparse's multi-line usage and exiting."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``cryoden: error: ...``."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        raise _UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------------------------
# Small helpers


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (name of the exception type when it has none).

    Bad-input messages (ours, naming paths) keep their newlines as ``\\n``, so a path with a
    newline stays recognisable; others (multi-line library messages) are joined with spaces.
    """
    if isinstance(exc, (CliError, ValueError, FileExistsError)):
        text = printable(str(exc).strip())
    else:
        text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        name = printable(exc.filename) if exc.filename is not None else ""
        text = f"{name}: {exc.strerror}" if name else exc.strerror
    return text or type(exc).__name__


def _error(message: str, stream: TextIO | None = None) -> None:
    print(f"{PROG}: error: {printable(message)}", file=stream or sys.stderr, flush=True)


def _note(message: str) -> None:
    print(f"{PROG}: note: {printable(message)}", file=sys.stderr, flush=True)


_positive_int = int_at_least(1, "a positive integer")
_non_negative_int = int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _format_voxel_size(voxel_size: Sequence[float]) -> str:
    """``'10.52 Å'`` when isotropic, else ``'(12, 10, 10) Å (Z, Y, X)'``."""
    values = [float(v) for v in voxel_size]
    if len(set(values)) == 1:
        return f"{values[0]:g} Å"
    axes = "ZYX"[-len(values):] if len(values) <= 3 else None
    joined = ", ".join(f"{v:g}" for v in values)
    return f"({joined}) Å" + (f" ({', '.join(axes)})" if axes else "")


class ProgressBar:
    """A small textual progress bar for ``(done, total)`` reports, written to a stream.

    On a terminal the bar is redrawn in place (at most ten times a second); otherwise a line is
    written each time another tenth of the work is done, so log files stay short.

    Parameters
    ----------
    label : str
        Written before the bar.
    stream : text stream, optional
        Default: ``sys.stderr``.
    width : int, default=30
        Characters of the bar itself.
    """

    def __init__(self, label: str, stream: TextIO | None = None, *, width: int = 30):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self._start = time.perf_counter()
        self._last_draw = -1.0
        self._last_tenth = 0
        self._open = False  # a line without its newline is on a terminal
        self._drawn = 0  # length of the text on that line

    def _text(self, done: int, total: int) -> str:
        frac = done / total if total else 1.0
        filled = int(round(self.width * frac))
        elapsed = time.perf_counter() - self._start
        text = (f"{self.label} [{'#' * filled}{'-' * (self.width - filled)}] "
                f"{done}/{total} tiles {100 * frac:3.0f}%  {_format_seconds(elapsed)}")
        if 0 < done < total:
            text += f" (~{_format_seconds(elapsed * (total - done) / done)} left)"
        return text

    def update(self, done: int, total: int) -> None:
        """Report that `done` of `total` tiles are finished."""
        if self.tty:
            now = time.perf_counter()
            if done < total and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            text = self._text(done, total)
            self.stream.write("\r" + text.ljust(self._drawn))  # blank what a longer line left
            self._drawn = len(text)
            self._open = True
            if done >= total:
                self.close()
        else:
            tenth = 10 * done // total if total else 10
            if tenth > self._last_tenth:
                self._last_tenth = tenth
                self.stream.write(self._text(done, total) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line (call it before printing anything else to the stream)."""
        if self._open:
            self.stream.write("\n")
            self._drawn = 0
            self.stream.flush()
            self._open = False


# --------------------------------------------------------------------------------------------
# cryoden denoise

_DENOISE_DESCRIPTION = """\
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

_DENOISE_EPILOG = """\
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


def _add_denoise(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--voxel-size", metavar="Å", type=_positive_float, default=None,
                   help="pixel size of the input in Å, overriding its header (and written to the output's)")
    p.add_argument("--tile", metavar="N", type=_positive_int, default=None,
                   help="edge of the output block each tile produces, in voxels, a multiple of the "
                        "network stride (default: automatic, the tiles that waste least on context "
                        "and fit in free memory, with cores of at most N^3 voxels, N = "
                        "256 on the CPU, 512 on CUDA)")
    p.add_argument("--overlap", metavar="N", type=_non_negative_int, default=None,
                   help="voxels of context read on each side of every tile and discarded; 2*N must be a "
                        "multiple of the network stride (default: from the model card, else the "
                        "measured receptive field of the network)")
    p.add_argument("--batch", metavar="N", type=_positive_int, default=None,
                   help="tiles per forward pass (default: automatic, from free memory)")
    p.add_argument("--max-memory", metavar="GIB", type=_positive_float, default=None,
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
    p.add_argument("--workers", metavar="N", type=_positive_int, default=None,
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


def _batch_output_name(src: Path) -> str:
    """``<stem>_denoised.mrc`` (``.mrcs`` for stacks), the stem without .gz/.bz2 and the MRC extension."""
    name = src.name
    for comp in (".gz", ".bz2"):
        if name.lower().endswith(comp):
            name = name[: -len(comp)]
    stem, ext = Path(name).stem, Path(name).suffix.lower()
    if ext not in (".mrc", ".mrcs", ".rec", ".map", ".st", ".ali"):
        stem = name
    return f"{stem}_denoised{'.mrcs' if ext == '.mrcs' else '.mrc'}"


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
        if info.get("nonfinite"):
            _note(f"replaced {info['nonfinite']} NaN/Inf voxels of {src.name} by the median "
                  f"{info['nonfinite_value']:g} (use --nonfinite refuse to stop instead)")
        if not args.quiet:
            for note in _input_notes(src, info, model):
                _note(note)
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
    size = _format_voxel_size(result.voxel_size) if known else "unknown (the header's kept)"
    return (f"{PROG}: wrote {result.output}: shape {tuple(result.shape)}, voxel size "
            f"{size}, model {result.model} "
            f"({getattr(device, 'type', device)}, {precision}), "
            f"{total} tiles, {seconds:.1f} s")


def _run_denoise(args: argparse.Namespace) -> int:
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
        raise CliError(f"cannot create --output-dir {out_dir}: {_one_line(exc)}") from None

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
    dst = out_dir / _batch_output_name(src)
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
        message = _one_line(exc)
        _error(message if str(src) in message else f"{src}: {message}")
        return EXIT_USAGE if isinstance(exc, (CliError, FileExistsError, ValueError)) else EXIT_FAILURE
    # an unforeseen failure (a cluster's own errors, such as a worker that died, are not ours)
    kind = "" if type(exc).__module__.split(".")[0] == "distributed" else "internal error: "
    _error(f"{src}: {kind}{type(exc).__name__}: {_one_line(exc)}")
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
        raise CliError(f"--scheduler: {_one_line(exc)}") from None


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
                        if info.get("nonfinite"):
                            _note(f"replaced {info['nonfinite']} NaN/Inf voxels of {src.name} by the median "
                                  f"{info['nonfinite_value']:g} (use --nonfinite refuse to stop instead)")
                        if args.quiet:
                            continue
                        for note in _input_notes(src, info, model):
                            _note(note)
                        print(_summary(result, info["device"], info["precision"], result.tiles, result.seconds),
                              flush=True)
                finally:
                    outcomes.close()  # on an interrupt: stops the running tasks, cancels the others
    return _batch_summary(args, written, len(inputs) + n_unmatched, skipped, failed)


def _is_input(a: Path, b: Path) -> bool:
    """True when `b` is the file `a` itself (the output would be the input: an error, not a skip)."""
    from ..io import same_file

    return b.exists() and same_file(a, b)


# --------------------------------------------------------------------------------------------
# cryoden models


def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--long", action="store_true",
                   help="print each description whole (default: its first line, cut at 100 characters)")


def _short_description(card: dict, limit: int | None = 100) -> str:
    text = str(card.get("description") or card.get("architecture") or "").strip()
    if limit is None:
        return " ".join(text.split()) or "(no description)"
    text = text.splitlines()[0] if text else "(no description)"
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _run_models(args: argparse.Namespace) -> int:
    from ..models import DEFAULT_MODEL as default, DEFAULT_MODEL_2D as default_2d, available_models, builtin_model_dir
    from ..models import user_model_dir

    skipped: list[str] = []
    models = available_models(skipped)
    for reason in skipped:
        _note(f"skipped a malformed model card: {reason}")
    if not models:
        _note(f"no models found in {builtin_model_dir()} or {user_model_dir()}")
        return EXIT_OK
    width = max(len(name) for name in models)
    for name, card in models.items():
        extra = []
        if isinstance(card.get("voxel_size_A"), (int, float)):
            extra.append(f"{card['voxel_size_A']:g} Å/voxel")
        if name == default:
            extra.append("default")
        elif name == default_2d:
            extra.append("2D default")
        tail = f" [{', '.join(extra)}]" if extra else ""
        print(printable(f"{name:<{width}}  {_short_description(card, None if getattr(args, 'long', False) else 100)}"
                        f"{tail}"))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# cryoden sample


def _add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", metavar="OUTPUT", help="noisy simulated tomogram to write (MRC)")
    p.add_argument("--clean", metavar="CLEAN", help="also write the clean (noiseless) version here")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")


def _run_sample(args: argparse.Namespace) -> int:
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


# --------------------------------------------------------------------------------------------
# cryoden metrics

_METRICS_DESCRIPTION = """\
Compare IMAGE (e.g. a denoised tomogram) with REFERENCE (e.g. its clean
version), voxel by voxel: SSIM, PSNR, MSE and NRMSE (data range from the
reference), and the Fourier shell correlation (FSC; FRC for 2D images, the
median of the per-image FRCs for .mrcs stacks) with the resolutions in Å
where it falls below 0.5 and 0.143. The resolution axis
uses the reference's voxel size. Both files must have the same shape.

With --json one JSON object is printed with the keys ssim, psnr, mse, nrmse,
fsc (a list of [resolution_A, value] pairs, shell 0 left out),
res_fsc_0.5_A and res_fsc_0.143_A. JSON has no infinity: an infinite PSNR
(identical data) and a threshold the FSC never falls below are null, and a
note on stderr says why.
"""

_METRICS_EPILOG = """\
examples:
  cryoden metrics denoised.mrc clean.mrc
  cryoden metrics denoised.mrc clean.mrc --json --roi 0:48,100:300,100:300
  cryoden metrics even.mrc odd.mrc --half-maps

exit status: 0 success, 1 run failed, 2 bad input or option (e.g. shapes differ).
"""


def _add_metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="volume or image to score (MRC)")
    p.add_argument("reference", metavar="REFERENCE", help="reference of the same shape (MRC)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--roi", metavar="Z0:Z1,Y0:Y1,X0:X1", default=None,
                   help="compare only this box, one start:stop per axis, NumPy style "
                        "(empty bounds mean the whole axis)")
    p.add_argument("--half-maps", action="store_true",
                   help="IMAGE and REFERENCE are independent half maps (even/odd): only the FSC is "
                        "computed; the image scores are null")


def _format_resolution(value: float | None, threshold: float, nyquist: float) -> str:
    if value is None:
        return f"not reached (stays above {threshold:g} up to {nyquist:.3g} Å)"
    return f"{value:.3g} Å"


def _run_metrics(args: argparse.Namespace) -> int:
    import json

    from ..io import read_mrc
    from ..metrics import compare, describe_roi, parse_roi

    image, reference = read_mrc(Path(args.image)), read_mrc(Path(args.reference))
    if image.data.shape != reference.data.shape:
        raise CliError(f"IMAGE shape {tuple(image.data.shape)} differs from REFERENCE shape "
                       f"{tuple(reference.data.shape)}; both must have the same shape")
    roi = parse_roi(args.roi, reference.data.shape) if args.roi else None
    voxel_size = tuple(reference.voxel_size)
    notes = []
    if not reference.metadata.get("voxel_size_known", True):
        notes.append("REFERENCE has no voxel size in its header; resolutions assume 1 Å/voxel")
    elif (image.metadata.get("voxel_size_known", True)
          and any(abs(a - b) > 1e-3 * b for a, b in zip(image.voxel_size, voxel_size))):
        notes.append(f"voxel sizes differ (IMAGE {_format_voxel_size(image.voxel_size)}, REFERENCE "
                     f"{_format_voxel_size(voxel_size)}); resolutions use the reference's")

    from ..inference.stream import is_image_stack_path

    stack = reference.data.ndim == 3 and (is_image_stack_path(args.reference) or is_image_stack_path(args.image))
    report = compare(image.data, reference.data, voxel_size=voxel_size, roi=roi, half_maps=args.half_maps,
                     image_stack=stack)
    data = report.to_json()
    nyquist = report.curve.nyquist
    if report.scores is not None and report.scores["psnr"] == float("inf"):
        notes.append("psnr is null: the data are identical (infinite PSNR)")
    for key, threshold in (("res_fsc_0.5_A", 0.5), ("res_fsc_0.143_A", 0.143)):
        if data[key] is None:
            notes.append(f"{key} is null: the FSC stays above {threshold:g} up to the last shell "
                         f"({nyquist:.3g} Å)")
    for note in notes:
        _note(note)

    if args.json:
        print(json.dumps(data, allow_nan=False), flush=True)
        return EXIT_OK
    scores = report.scores or {}
    lines = [
        ("image", str(args.image)),
        ("reference", f"{args.reference}: {tuple(reference.data.shape)} voxels, "
                      f"{_format_voxel_size(voxel_size)}"),
        ("region", describe_roi(roi, "ZYX")),
    ]
    if report.scores is not None:
        psnr = scores["psnr"]
        lines += [
            ("SSIM", f"{scores['ssim']:.4f}"),
            ("PSNR", "inf (identical)" if psnr == float("inf") else f"{psnr:.2f} dB"),
            ("MSE", f"{scores['mse']:.4g}"),
            ("NRMSE", f"{scores['nrmse']:.4f}"),
        ]
    kind = "FRC" if reference.data.ndim == 2 else ("median FRC" if stack else "FSC")
    lines += [
        (f"{kind} 0.5", _format_resolution(report.res_fsc_05, 0.5, nyquist)),
        (f"{kind} 0.143", _format_resolution(report.res_fsc_0143, 0.143, nyquist)),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# The dispatch table and the entry point


@dataclass(frozen=True)
class Subcommand:
    """One ``cryoden`` subcommand.

    Attributes
    ----------
    help : str
        One line for ``cryoden --help``.
    add_arguments : callable(argparse.ArgumentParser)
        Declares the subcommand's arguments.
    run : callable(argparse.Namespace) -> int
        Does the work and returns the exit status. It imports the core lazily and raises
        :class:`ValueError` (bad input, exit 2) or :class:`OSError` (exit 1) on failure.
    description : str, optional
        Text of ``cryoden <name> --help`` (default: `help`).
    epilog : str, optional
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    epilog: str | None = None


#: Subcommand name -> :class:`Subcommand`; later: simulate, train, benchmark.
SUBCOMMANDS: dict[str, Subcommand] = {
    "denoise": Subcommand(
        help="denoise tomograms, micrographs or stacks (MRC files) with a pretrained network",
        add_arguments=_add_denoise, run=_run_denoise,
        description=_DENOISE_DESCRIPTION, epilog=_DENOISE_EPILOG,
    ),
    "models": Subcommand(
        help="list the available models, one per line: name, then description",
        add_arguments=_add_models, run=_run_models,
    ),
    "metrics": Subcommand(
        help="score an image against a reference: SSIM, PSNR, MSE, NRMSE and FSC resolution",
        add_arguments=_add_metrics, run=_run_metrics,
        description=_METRICS_DESCRIPTION, epilog=_METRICS_EPILOG,
    ),
    "sample": Subcommand(
        help="write the simulated sample tomogram (and its clean version) as MRC files",
        add_arguments=_add_sample, run=_run_sample,
        description="Write a small simulated crowded tomogram (48 x 96 x 96 voxels, 10 Å/voxel) with a "
                    "missing wedge and Gaussian noise, made on the fly (no download), and optionally its "
                    "clean version. The same data is napari's sample 'Simulated tomogram'.",
    ),
    "simulate": Subcommand(
        help=_simulate_cmd.HELP, add_arguments=_simulate_cmd.add_arguments, run=_simulate_cmd.run,
        description=_simulate_cmd.DESCRIPTION, epilog=_simulate_cmd.EPILOG,
    ),
    "train": Subcommand(
        help=_train_cmd.HELP, add_arguments=_train_cmd.add_arguments, run=_train_cmd.run,
        description=_train_cmd.DESCRIPTION, epilog=_train_cmd.EPILOG,
    ),
    "benchmark": Subcommand(
        help=_benchmark_cmd.HELP, add_arguments=_benchmark_cmd.add_arguments, run=_benchmark_cmd.run,
        description=_benchmark_cmd.DESCRIPTION, epilog=_benchmark_cmd.EPILOG,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``cryoden`` argument parser, one subparser per entry of :data:`SUBCOMMANDS`."""
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        description="Denoise cryo-electron tomograms with neural networks (napari-cryoden).",
        epilog=f"Run '{PROG} <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    for name, cmd in SUBCOMMANDS.items():
        p = sub.add_parser(
            name, help=cmd.help, description=cmd.description or cmd.help, epilog=cmd.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.add_arguments(p)
    return parser


#: Signals that clean up like Ctrl-C: a batch scheduler's time limit or ``kill`` (SIGTERM), and a
#: closed terminal or SSH session (SIGHUP).
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _interrupt_on_sigterm() -> dict | None:
    """Make SIGTERM and SIGHUP clean up like Ctrl-C (:data:`_STOP_SIGNALS`).

    Returns the previous handlers by signal, or None when not in the main thread (signals cannot
    be set there).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryoden`` with `argv` (default: ``sys.argv[1:]``) and return the exit status.

    Parameters
    ----------
    argv : sequence of str, optional

    Returns
    -------
    int
        0 success, 1 failure, 2 bad input or option, 130 interrupted (see the module docstring).
        An interrupt at any point, even while the arguments are parsed, is one line, never a
        traceback.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        _error("interrupted; nothing was written")
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if args.command is None:
        _error(f"choose a command: {', '.join(SUBCOMMANDS)} (see '{PROG} --help')")
        return EXIT_USAGE

    previous = _interrupt_on_sigterm()
    try:
        with warnings.catch_warnings():
            # A run prints its own lines only: library warnings (odd headers, float overflow in
            # statistics) are not the user's to read; what matters is said in notes and errors.
            warnings.simplefilter("ignore")
            return SUBCOMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        _error("interrupted; nothing was written")
        return EXIT_INTERRUPTED
    except (CliError, FileExistsError, ValueError) as exc:  # MrcError and ModelError are ValueErrors
        _error(_one_line(exc))
        return EXIT_USAGE
    except (OSError, MemoryError, RuntimeError) as exc:
        _error(_one_line(exc))
        return EXIT_FAILURE
    except Exception as exc:  # an unforeseen failure still ends with one line, not a traceback
        _error(f"internal error: {type(exc).__name__}: {_one_line(exc)}")
        return EXIT_FAILURE
    finally:
        for sig, handler in (previous or {}).items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
