"""Checkpoints of training runs: safetensors with the state as JSON, written atomically.

A checkpoint is a folder with ``checkpoint.safetensors`` (weights, optimizer moments, random
generator states; the run's state as JSON in the file's metadata, under a format tag) and
``checkpoint.json``, a readable copy of that state which is never read back. Both are written
through :func:`~napari_cryoden.io.atomic.atomic_path`, so a crash or a full disk leaves the
previous checkpoint whole. Fine-tuning (:mod:`~napari_cryoden.training.finetune`) and the
recipes' time-boxed runs (``--minutes``) keep their state this way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ..io.atomic import atomic_path

__all__ = ["CHECKPOINT_NAME", "CheckpointMismatch", "stepper_tensors", "check_finite_weights", "check_workdir", "cpu_state",
           "load_checkpoint", "optimizer_tensors", "restore_optimizer", "save_checkpoint", "sub_state"]

#: Checkpoint files in the work folder: ``checkpoint.safetensors`` (tensors, and the state as
#: JSON in its metadata) and ``checkpoint.json`` (a readable copy of the state).
CHECKPOINT_NAME = "checkpoint"
#: Format tag of fine-tuning checkpoints.
FINE_TUNE_FORMAT = "napari-cryoden fine-tune checkpoint 1"


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def optimizer_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    tensors, extra = {}, {}
    for idx, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{idx}.{k}"] = v.detach().to("cpu").contiguous().clone()
            else:
                extra[f"{idx}.{k}"] = v
    return tensors, extra


def restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, extra: dict) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith(prefix + "."):
            _, idx, k = name.split(".", 2)
            state.setdefault(int(idx), {})[k] = t
    for key, v in extra.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], state: dict, *, fmt: str = FINE_TUNE_FORMAT) -> Path:
    """Write ``checkpoint.safetensors`` (the tensors, and `state` as JSON in its metadata under the
    format tag `fmt`) and a readable ``checkpoint.json`` into `folder`, each atomically; return the
    first."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(state, allow_nan=True)
    path = folder / f"{CHECKPOINT_NAME}.safetensors"
    with atomic_path(path) as tmp:
        # written into the locked temporary file itself (save_file would replace it with another)
        tmp.write_bytes(save(tensors, metadata={"format": fmt, "state": text}))
    with atomic_path(folder / f"{CHECKPOINT_NAME}.json") as tmp:  # a readable copy; not read back
        Path(tmp).write_text(json.dumps(state, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    return path


def load_checkpoint(folder: Path, *, fmt: str = FINE_TUNE_FORMAT) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the state of ``folder/checkpoint.safetensors``.

    Raises
    ------
    ValueError
        One line, if the file is unreadable or not a checkpoint of format `fmt`.
    """
    from safetensors import SafetensorError, safe_open

    path = folder / f"{CHECKPOINT_NAME}.safetensors"
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        if meta.get("format") != fmt:
            raise ValueError(f"not a checkpoint of this kind (format {meta.get('format')!r}, expected {fmt!r})")
        state = json.loads(meta["state"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise ValueError(f"checkpoint {path} is unreadable ({' '.join(str(exc).split())}); start afresh") from None
    return tensors, state


def sub_state(tensors: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}



class CheckpointMismatch(ValueError):
    """A readable checkpoint of another run (other data, network or settings)."""


def finite_number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return float(value)


def check_finite_weights(weights: dict[str, torch.Tensor], what: str) -> None:
    """Raise ValueError when a floating-point tensor of `weights` holds NaN or Inf."""
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{what} hold NaN or Inf ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")




def check_workdir(workdir, resume: bool, overwrite: bool) -> Path | None:
    if workdir is None:
        if resume:
            raise ValueError("resuming needs the work folder of the interrupted run (workdir)")
        return None
    folder = Path(workdir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"workdir {folder} is a file, not a folder")
    ckpt = folder / f"{CHECKPOINT_NAME}.safetensors"
    if resume and not ckpt.is_file():
        raise ValueError(f"no checkpoint to resume in {folder} (expected {ckpt.name})")
    if not resume and not overwrite and (ckpt.is_file() or ckpt.with_suffix(".json").exists()):
        raise ValueError(f"{folder} holds the checkpoint of an earlier run (or a {ckpt.with_suffix('.json').name} "
                         "of its own); resume it, or choose another work folder (or overwrite it)")
    return folder


def stepper_tensors(stepper) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a :class:`~napari_cryoden.training.supervised.SupervisedStep` for a checkpoint.

    Returns
    -------
    tensors : dict
        ``model.*`` (the generator), ``opt_g.*`` and, with a discriminator, ``disc.*`` and
        ``opt_d.*``, as CPU copies.
    extra : dict
        ``{"opt_g_extra": ..., "opt_d_extra": ...}``: the optimizers' non-tensor state, for the JSON state.
    """
    tensors = {f"model.{k}": v for k, v in cpu_state(stepper.generator).items()}
    t_g, extra_g = optimizer_tensors("opt_g", stepper.opt_g)
    tensors.update(t_g)
    extra_d = {}
    if stepper.discriminator is not None:
        tensors.update({f"disc.{k}": v for k, v in cpu_state(stepper.discriminator).items()})
        t_d, extra_d = optimizer_tensors("opt_d", stepper.opt_d)
        tensors.update(t_d)
    return tensors, {"opt_g_extra": extra_g, "opt_d_extra": extra_d}
