"""``cryoden train``: fine-tune a denoising model on your own data, or train one from scratch.

Imports only the standard library at import time (it is imported by :mod:`.main`); torch and the
trainer are imported when the command runs. Bad settings raise :class:`ValueError` before any
training (exit status 2). Training iterates
:func:`~napari_cryoden.training.finetune.iter_fine_tune` in the main thread, the progress bar
following its reports; Ctrl-C asks it (through its ``cancel`` poll) to stop at the next step,
which keeps the checkpoint, and the command exits with 130.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from ._common import EXIT_INTERRUPTED, EXIT_OK, PROG, ProgressBar
from ._common import float_where, int_at_least, positive_float
from ._common import format_seconds as _format_seconds
from ._common import note as _note

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "OPTION_DEFAULTS", "add_arguments", "run"]


HELP = "fine-tune a denoising model on your data (Noise2Noise, supervised, Noise2Void) and save it"

DESCRIPTION = """\
Fine-tune a model of the registry (or train an architecture from scratch) on
your own tomogram or micrograph, and save it as a user model that
'cryoden denoise --model NAME' and the napari plugin can use.

  --mode n2n         Noise2Noise on the even/odd halves (--even, --odd) of a
                     tilt series or movie (Lehtinen et al. 2018; cryoCARE).
  --mode supervised  noisy -> clean pairs (--noisy, --clean), L1/L2 loss,
                     optionally adversarial (--adversarial gan | wgangp).
  --mode n2v         Noise2Void on a single volume (--input): blind-spot
                     masking (Krull et al. 2019).

A slab across the longest in-plane axis (Y or X, never the thin Z of a
tomogram) is held out for validation (--val-slab, default the last
max(patch, 10 %) voxels); the weights with the lowest validation loss are
saved. The patch adapts to small data (the largest multiple of the network
stride that fits). Checkpoints go to --workdir every
--val-every steps; after Ctrl-C or a crash, run the same command with
--resume to go on from the last checkpoint.

--config FILE.toml reads options from a TOML file: keys are the long option
names (e.g. mode = "n2n", even = "tomo_even.mrc", val-slab = "0:40",
arch-kwargs = {ch = 16}); relative paths are relative to the file's folder.
Options on the command line override the file.
"""

EPILOG = """\
examples:
  cryoden train --mode n2n --even tomo_even.mrc --odd tomo_odd.mrc --name my-n2n
  cryoden train --mode supervised --noisy sim.mrc --clean sim_clean.mrc \\
      --adversarial gan --patch 32 --name my-gan
  cryoden train --mode n2v --input mic.mrc --architecture N2NUNet2D --patch 64 --name mic-n2v
  cryoden train --config train.toml --steps 400 --resume

exit status: 0 success, 1 run failed, 2 bad input or option, 130 interrupted
(the checkpoint is kept; add --resume to continue).
"""

#: Defaults of the training options, as in :class:`napari_cryoden.training.FineTuneConfig`
#: (a test keeps them equal); shown in --help without importing torch.
OPTION_DEFAULTS = {"loss": "l2", "adversarial": "none", "patch": None, "batch": 4, "steps": 200, "lr": 1e-4,
                   "val_every": 20, "n2v_fraction": 0.005, "n2v_mask": "auto", "seed": 0, "device": "auto",
                   "precision": "auto", "rampdown": 0.0, "max_grad_norm": None}
_MODES = ("n2n", "supervised", "n2v")
#: Data options each mode takes.
_DATA = {"n2n": ("even", "odd"), "supervised": ("noisy", "clean"), "n2v": ("input",)}
_PATH_OPTIONS = ("even", "odd", "noisy", "clean", "input", "workdir")


# --------------------------------------------------------------------------------------------
# Value parsers: used by argparse (strings) and for --config values (TOML types)

_fraction = float_where(lambda x: 0.0 <= x <= 1.0, "a number from 0 to 1")


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _slab(value) -> tuple[int, int]:
    """``"START:STOP"`` (or a [start, stop] list in a TOML file) -> (start, stop)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        parts = list(value)
    elif isinstance(value, str) and value.count(":") == 1:
        parts = value.split(":")
    else:
        raise ValueError(f"expected START:STOP (slices along the first axis), got {value!r}")
    try:
        start, stop = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"expected START:STOP with integers, got {value!r}") from None
    if not 0 <= start < stop:
        raise ValueError(f"expected 0 <= START < STOP, got {value!r}")
    return start, stop


def _arch_kwargs(value) -> dict:
    """A JSON object (or a TOML table), e.g. '{"ch": 16}'."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON object such as '{{\"ch\": 16}}', got {value!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object such as '{{\"ch\": 16}}', got {value!r}")
    return value


def _text(value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _flag(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _argparse_type(parse: Callable[[Any], Any]) -> Callable[[str], Any]:
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


#: dest -> (option, parser, metavar or None for flags, help). The one table behind both the
#: command line and --config.
_OPTIONS: dict[str, tuple[str, Callable[[Any], Any], str | None, str]] = {
    "mode": ("--mode", _choice(_MODES), "{n2n,supervised,n2v}", "how to learn (see above); required"),
    "even": ("--even", _text, "E.mrc", "even half (n2n)"),
    "odd": ("--odd", _text, "O.mrc", "odd half (n2n)"),
    "noisy": ("--noisy", _text, "N.mrc", "noisy volume (supervised)"),
    "clean": ("--clean", _text, "C.mrc", "clean volume of the same shape (supervised)"),
    "input": ("--input", _text, "X.mrc", "the volume to learn from (n2v)"),
    "name": ("--name", _text, "NAME",
             "name of the model to save (letters, digits, '.', '_', '-'); required"),
    "model": ("--model", _text, "MODEL",
              "registry model to fine-tune (default: the default model for the data, 3D or 2D; see "
              "'cryoden models')"),
    "architecture": ("--architecture", _text, "ARCH",
                     "train this architecture from scratch instead (UpsampleUnet48, Unet48, FastUNet3D, "
                     "N2NUNet2D for micrographs, ...)"),
    "arch_kwargs": ("--arch-kwargs", _arch_kwargs, "JSON",
                    "keyword arguments of --architecture as a JSON object, e.g. '{\"ch\": 16}'"),
    "loss": ("--loss", _choice(("l1", "l2", "graylevel")), "{l1,l2,graylevel}", "content loss (default: l2)"),
    "adversarial": ("--adversarial", _choice(("none", "gan", "wgangp")), "{none,gan,wgangp}",
                    "supervised only: add a GAN or WGAN-GP loss (default: none)"),
    "patch": ("--patch", int_at_least(1), "N", "edge of the cubic (square for 2D) training patches, a multiple of the "
                                       "network stride (default: 48 for 3D, 64 for 2D, less for smaller data)"),
    "batch": ("--batch", int_at_least(1), "N", "patches per step (default: 4)"),
    "steps": ("--steps", int_at_least(1), "N", "training steps in all, resumed ones included (default: 200)"),
    "lr": ("--lr", positive_float, "X", "Adam learning rate (default: 0.0001)"),
    "rampdown": ("--rampdown", _fraction, "X",
                 "fraction of the steps, at the end, over which the learning rate falls to zero along a half "
                 "cosine, as in Noise2Noise (0.3 there) (default: 0, a constant rate)"),
    "max_grad_norm": ("--max-grad-norm", positive_float, "X",
                      "clip the gradient to this L2 norm before each update, against divergence "
                      "(default: no clipping)"),
    "val_slab": ("--val-slab", _slab, "START:STOP",
                 "voxels along the longest in-plane axis (Y or X) held out for validation (default: the "
                 "last max(patch, 10 %%))"),
    "val_every": ("--val-every", int_at_least(1), "N", "steps between validations and checkpoints (default: 20)"),
    "n2v_fraction": ("--n2v-fraction", positive_float, "X", "n2v: fraction of blind-spot voxels (default: 0.005)"),
    "n2v_mask": ("--n2v-mask", _choice(("auto", "voxel")), "{auto,voxel}",
                 "n2v: blind spots also hide the neighbours whose noise is correlated, estimated from the "
                 "data (auto, for tomograms), or one voxel each (voxel) (default: auto)"),
    "seed": ("--seed", int_at_least(0), "N", "random seed (default: 0)"),
    "workdir": ("--workdir", _text, "DIR",
                "folder for checkpoints (default: a folder per model name in the user cache; it is "
                "removed after a successful run)"),
    "resume": ("--resume", _flag, None, "continue the run checkpointed in --workdir"),
    "overwrite": ("--overwrite", _flag, None,
                  "replace a user model of the same name and start afresh over an old checkpoint"),
    "device": ("--device", _choice(("auto", "cpu", "cuda")), "{auto,cpu,cuda}",
               "where to train; auto takes CUDA when available (default: auto)"),
    "precision": ("--precision", _choice(("auto", "fp32", "bf16", "fp16")), "{auto,fp32,bf16,fp16}",
                  "autocast dtype (default: auto: bf16 on CPUs with native bf16 and recent GPUs)"),
    "quiet": ("--quiet", _flag, None, "no progress bar"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options of ``cryoden train`` (all default to None: unset)."""
    p.add_argument("--config", metavar="FILE.toml", default=None,
                   help="read options from a TOML file (command-line options override it)")
    groups = {
        "data": p.add_argument_group("data"),
        "model": p.add_argument_group("model"),
        "training": p.add_argument_group("training"),
        "run": p.add_argument_group("run"),
    }
    where = {"mode": "data", "even": "data", "odd": "data", "noisy": "data", "clean": "data", "input": "data",
             "name": "model", "model": "model", "architecture": "model", "arch_kwargs": "model",
             "workdir": "run", "resume": "run", "overwrite": "run", "device": "run", "precision": "run",
             "quiet": "run"}
    for dest, (option, parse, metavar, text) in _OPTIONS.items():
        group = groups[where.get(dest, "training")]
        names = (option, "-q") if dest == "quiet" else (option,)
        if metavar is None:
            group.add_argument(*names, dest=dest, action="store_const", const=True, default=None, help=text)
        else:
            group.add_argument(*names, dest=dest, type=_argparse_type(parse), metavar=metavar, default=None,
                               help=text)


# --------------------------------------------------------------------------------------------
# Settings: command line over config file


def _read_config(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise ValueError("--config needs Python 3.11 or the 'tomli' package") from None
    try:
        if path.is_dir():
            raise ValueError(f"--config {path}: is a folder, not a TOML file")
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--config {path}: not valid TOML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise ValueError(f"--config {path}: not valid TOML (nested too deeply)") from None
    values = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest not in _OPTIONS:
            known = ", ".join(opt[0][2:] for opt in _OPTIONS.values())
            raise ValueError(f"--config {path}: unknown key {key!r} (known: {known})")
        try:
            value = _OPTIONS[dest][1](value)
        except ValueError as exc:
            raise ValueError(f"--config {path}: {key}: {exc}") from None
        if dest in _PATH_OPTIONS and not Path(value).is_absolute():
            value = str(path.parent / value)
        values[dest] = value
    return values


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    values = {dest: getattr(args, dest, None) for dest in _OPTIONS}
    if args.config is not None:
        for dest, value in _read_config(Path(args.config)).items():
            if values[dest] is None:
                values[dest] = value
    if values["mode"] is None:
        raise ValueError("choose --mode n2n, supervised or n2v (or set mode in --config)")
    if values["name"] is None:
        raise ValueError("give --name NAME, the name to save the trained model under")
    mode = values["mode"]
    for dest in ("even", "odd", "noisy", "clean", "input"):
        if dest in _DATA[mode] and values[dest] is None:
            need = " and ".join(f"--{d}" for d in _DATA[mode])
            raise ValueError(f"--mode {mode} needs {need}")
        if dest not in _DATA[mode] and values[dest] is not None:
            raise ValueError(f"--{dest} is not used with --mode {mode} (it takes "
                             f"{' and '.join(f'--{d}' for d in _DATA[mode])})")
    if values["model"] is not None and values["architecture"] is not None:
        raise ValueError("give --model (fine-tune) or --architecture (from scratch), not both")
    if values["arch_kwargs"] is not None and values["architecture"] is None:
        raise ValueError("--arch-kwargs goes with --architecture")
    if values["resume"] and values["overwrite"]:
        raise ValueError("--resume continues the checkpoint that --overwrite would replace; give one of them")
    return values


# --------------------------------------------------------------------------------------------
# Progress


class _TrainBar(ProgressBar):
    """Training progress on stderr: redrawn in place on a terminal, one line per validation otherwise."""

    def __init__(self, label: str, stream=None):
        super().__init__(label, stream, width=24, unit="steps")

    def text(self, ev) -> str:
        text = f"{self.bar(ev.step, ev.steps)}  loss {ev.train_loss:.4g}"
        if ev.val_loss is not None:
            text += f"  val {ev.val_loss:.4g}"
        if ev.best_val is not None:
            text += f" (best {ev.best_val:.4g})"
        return text + self.times(ev.seconds, ev.step, ev.steps)

    def update(self, ev) -> None:  # a training event, not (done, total)
        validated = ev.val_loss is not None
        self.show(lambda: self.text(ev), now=validated or ev.step >= ev.steps, line=validated)


class _Interrupt:
    """First Ctrl-C: ask training to stop at the next step. Second: stop at once (KeyboardInterrupt)."""

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{PROG}: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
        return False


# --------------------------------------------------------------------------------------------
# The command


def _same_data(a, b, chunk: int = 16) -> bool:
    """True when arrays `a` and `b` have the same shape and voxels (compared `chunk` slices at a
    time, stopping at the first difference; NaN equals NaN)."""
    import numpy as np

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return all(np.array_equal(a[i : i + chunk], b[i : i + chunk], equal_nan=np.issubdtype(a.dtype, np.inexact))
               for i in range(0, a.shape[0], chunk))


def _train(bar: _TrainBar | None, events: Iterator) -> Any:
    """Run the training generator `events` (:func:`~napari_cryoden.training.finetune.iter_fine_tune`)
    to its end in this thread, drawing each progress report
    (:class:`~napari_cryoden.training.finetune.TrainEvent`) on `bar`; return its FineTuneResult."""
    from ..training.finetune import TrainEvent
    from ..training.loop import drive

    def handle(event) -> None:
        if bar is not None and isinstance(event, TrainEvent):
            bar.update(event)

    return drive(events, handle)


def _resume_hint(values: dict, workdir: Path) -> str:
    return (f"the checkpoint is kept in {workdir}; to continue, run the same command with --resume"
            + ("" if values.get("workdir") else f" (it uses --workdir {workdir} by default)"))


def run(args: argparse.Namespace) -> int:
    """Run ``cryoden train``; see :data:`DESCRIPTION`."""
    values = _settings(args)
    mode, name = values["mode"], values["name"]

    from ..training.export import check_model_name, save_finetuned
    from ..training.finetune import FineTuneConfig, card_voxel_size, check_settings, iter_fine_tune

    resume, overwrite = bool(values["resume"]), bool(values["overwrite"])
    check_model_name(name, overwrite=overwrite)
    if values["workdir"] is not None:
        workdir, default_workdir = Path(values["workdir"]), False
    else:
        from platformdirs import user_cache_dir

        workdir, default_workdir = Path(user_cache_dir("napari-cryoden", appauthor=False)) / "train" / name, True

    if not resume and not overwrite and (workdir / "checkpoint.safetensors").is_file():
        raise ValueError(f"{workdir} holds the checkpoint of an earlier run: add --resume to continue it, or "
                         "--overwrite to start afresh" + ("" if values["workdir"] else " (or give another --workdir)"))
    if not resume and not overwrite and (workdir / "checkpoint.json").exists():
        raise ValueError(f"{workdir} holds a checkpoint.json that training would replace: give another --workdir, "
                         "or --overwrite to replace it")

    from ..io import read_mrc, same_file

    files = {d: Path(values[d]) for d in _DATA[mode]}
    if len(files) == 2 and same_file(*files.values()):
        first, second = _DATA[mode]
        raise ValueError(f"--{first} and --{second} are the same file ({files[first]}); "
                         f"{'Noise2Noise needs two independent halves' if mode == 'n2n' else 'give the clean version'}")
    volumes = {d: read_mrc(path) for d, path in files.items()}
    if len(volumes) == 2 and _same_data(*(v.data for v in volumes.values())):
        first, second = _DATA[mode]
        raise ValueError(f"--{first} {files[first].name} and --{second} {files[second].name} hold the same data; "
                         f"{'Noise2Noise needs two independent halves' if mode == 'n2n' else 'give the clean version'}")
    source = volumes[_DATA[mode][0]]
    target = volumes[_DATA[mode][1]] if len(_DATA[mode]) > 1 else None
    if target is not None and source.metadata.get("voxel_size_known", True) and target.metadata.get(
            "voxel_size_known", True):
        if any(abs(a - b) > 1e-3 * max(abs(a), abs(b), 1e-12) for a, b in zip(source.voxel_size, target.voxel_size)):
            _note(f"voxel sizes differ: {files[_DATA[mode][0]].name} {tuple(source.voxel_size)} Å, "
                  f"{files[_DATA[mode][1]].name} {tuple(target.voxel_size)} Å")

    model, architecture = values["model"], values["architecture"]
    if model is None and architecture is None:
        from ..models import default_model_for

        model = default_model_for(source.data.ndim)  # n2n-unet-2d for a micrograph
    quiet = bool(values["quiet"])
    config = FineTuneConfig(mode=mode, val_slab=values["val_slab"], log_every=0 if quiet else 1,
                            **{k: values[k] for k in OPTION_DEFAULTS if values[k] is not None})
    check_settings(config, source.data, target.data if target is not None else None, model=model,
                   architecture=architecture, arch_kwargs=values["arch_kwargs"], workdir=workdir, resume=resume,
                   overwrite=overwrite)

    label = f"training {name}"
    bar = None if quiet else _TrainBar(label)
    interrupt = _Interrupt()
    try:
        with interrupt:
            result = _train(bar, iter_fine_tune(
                source.data, target.data if target is not None else None, config, model=model,
                architecture=architecture, arch_kwargs=values["arch_kwargs"], workdir=workdir, resume=resume,
                overwrite=overwrite, preview_every=0, cancel=lambda: interrupt.requested,
            ))
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        stopped = "interrupted"
        if (workdir / "checkpoint.safetensors").is_file():
            print(f"{PROG}: {stopped}; {_resume_hint(values, workdir)}", file=sys.stderr, flush=True)
        else:
            print(f"{PROG}: {stopped} before the first checkpoint; nothing was saved", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        if bar is not None:
            bar.close()
    if result.cancelled:
        print(f"{PROG}: interrupted at step {result.steps_done}/{config.steps}; no model saved; "
              f"{_resume_hint(values, workdir)}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if result.skipped_steps:
        _note(f"{result.skipped_steps} updates were skipped because their gradients were not finite")

    voxel = card_voxel_size(source.voxel_size, known=source.metadata.get("voxel_size_known", True))
    card_extra = {
        "voxel_size_A": voxel,
        "data": {k: str(v) for k, v in files.items()},
    }
    path = save_finetuned(result, name, card_extra=card_extra, overwrite=overwrite)
    if default_workdir:  # the checkpoint served its purpose
        for suffix in (".safetensors", ".json"):
            try:
                (workdir / f"checkpoint{suffix}").unlink()
            except FileNotFoundError:
                pass
        try:
            workdir.rmdir()
        except OSError:
            pass
    where = "the starting weights" if result.best_step == 0 else f"step {result.best_step}"
    print(f"{PROG}: saved model {name!r} to {path}; best validation loss {result.best_val:.4g} at {where} "
          f"(starting weights {result.initial_val:.4g}), {result.steps_done} steps, "
          f"{_format_seconds(result.seconds)}", flush=True)
    if not quiet:
        print(f"{PROG}: use it with: {PROG} denoise INPUT OUTPUT --model {name}", flush=True)
    return EXIT_OK
