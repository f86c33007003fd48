"""Export a trained network as a registry model: the name check and the model card.

:func:`save_finetuned` writes ``<name>.safetensors`` and its model card ``<name>.json`` into the
user model folder, where the Denoise widget and ``cryoden denoise --model NAME`` find it;
:func:`check_model_name` refuses a bad or taken name before any training starts.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..models.registry import ARCHITECTURES, NORMALIZATION, builtin_model_dir, save_model, user_model_dir
from .checkpoint import check_finite_weights

if TYPE_CHECKING:
    from .finetune import FineTuneResult

__all__ = ["check_model_name", "save_finetuned"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_model_name(name: str, *, folder: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Check a name for :func:`save_finetuned` before training; return the card path it would get.

    Raises
    ------
    ValueError
        If `name` is not 1-100 characters of letters, digits, ``.``, ``_`` and ``-`` starting with
        a letter or digit, is the name of a built-in model, or names an existing model in
        `folder` (default: :func:`~napari_cryoden.models.user_model_dir`) and `overwrite` is
        False.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"model name must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                         f"or digit; got {name!r}")
    if (builtin_model_dir() / f"{name}.json").exists():
        raise ValueError(f"{name!r} is the name of a built-in model; choose another name")
    folder = Path(folder) if folder is not None else user_model_dir()
    card = folder / f"{name}.json"
    if not overwrite and (card.exists() or card.with_suffix(".safetensors").exists()):
        raise ValueError(f"a model named {name!r} exists in {folder}; choose another name or overwrite it")
    return card


_RESERVED_CARD_KEYS = {"name", "architecture", "arch_kwargs", "sha256", "weights", "normalization", "ndim", "training"}



def _default_overlap(architecture: str) -> int | None:
    """The per-side overlap written into the card of a model trained from scratch: at least the
    one-sided receptive field of one output voxel (the registry's ``default_overlap``)."""
    spec = ARCHITECTURES.get(architecture)
    return spec.default_overlap if spec is not None else None


def save_finetuned(
    result: FineTuneResult,
    name: str,
    *,
    folder: str | os.PathLike | None = None,
    card_extra: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a fine-tuned network as a registry model ``<name>.safetensors`` + ``<name>.json``.

    The card records the architecture, the parent model, the normalisation (that of inference,
    :data:`~napari_cryoden.models.NORMALIZATION`), the voxel size (from `card_extra`, else the
    parent's), the per-side tile overlap (the parent's, else the architecture's
    :attr:`~napari_cryoden.models.registry.ArchSpec.default_overlap`, else none:
    the engine measures the receptive field), and under
    ``training`` the mode, losses, steps, patch, batch, learning rate, seed, validation slab,
    initial/best/final validation loss, seconds, data shape, torch version and date.

    Parameters
    ----------
    result : FineTuneResult
    name : str
        See :func:`check_model_name`.
    folder : str or Path, optional
        Default: :func:`~napari_cryoden.models.user_model_dir` (``$CRYODEN_USER_MODELS`` if set),
        where :func:`~napari_cryoden.models.available_models` finds it.
    card_extra : dict, optional
        JSON-serialisable entries added to the card, e.g. ``voxel_size_A`` (a number, Å/voxel of
        the training data in Y/X), ``description``, ``data`` (file names). May not replace
        name, architecture, arch_kwargs, sha256, weights, normalization, ndim or training.
    overwrite : bool, default=False
        Replace an existing user model of that name (never a built-in one).

    Returns
    -------
    Path
        The ``.safetensors`` file.

    Raises
    ------
    ValueError
        For a bad or taken name, reserved or non-serialisable `card_extra` entries, a voxel
        size that is not a positive number, or weights holding NaN or Inf.
    """
    card_path = check_model_name(name, folder=folder, overwrite=overwrite)
    check_finite_weights(result.module.state_dict(), f"the weights of {name!r}")
    extra = dict(card_extra or {})
    reserved = sorted(set(extra) & _RESERVED_CARD_KEYS)
    if reserved:
        raise ValueError(f"card_extra may not set {', '.join(reserved)}")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"card_extra must be JSON-serialisable: {exc}") from None
    parent_card = result.parent_card or {}
    voxel = extra.pop("voxel_size_A", parent_card.get("voxel_size_A"))
    if voxel is not None and (isinstance(voxel, bool) or not isinstance(voxel, (int, float)) or not voxel > 0):
        raise ValueError(f"voxel_size_A must be a positive number (Å/voxel), got {voxel!r}")
    cfg = result.config
    mode = cfg.mode if cfg else None
    how = {"n2n": "Noise2Noise on even/odd halves", "n2v": "Noise2Void", "supervised": "supervised noisy->clean"}.get(
        mode, "fine-tuning")
    if cfg and cfg.adversarial != "none":
        how += f" with {cfg.adversarial.upper() if cfg.adversarial == 'gan' else 'WGAN-GP'}"
    origin = f"fine-tuned from {result.parent}" if result.parent else "trained from scratch"
    training = {
        "mode": mode,
        "loss": cfg.loss if cfg else None,
        "adversarial": cfg.adversarial if cfg else None,
        "steps": result.steps_done,
        "steps_planned": cfg.steps if cfg else None,
        "cancelled": result.cancelled,
        "patch": cfg.patch if cfg else None,
        "batch": cfg.batch if cfg else None,
        "lr": cfg.lr if cfg else None,
        "rampdown": cfg.rampdown if cfg else None,
        "max_grad_norm": cfg.max_grad_norm if cfg else None,
        "seed": cfg.seed if cfg else None,
        "augment": cfg.augment if cfg else None,
        "val_slab": list(cfg.val_slab) if cfg and cfg.val_slab else None,
        "val_axis": cfg.val_axis if cfg else None,
        "val_loss_initial": result.initial_val,
        "val_loss_best": result.best_val,
        "val_loss_final": result.final_val,
        "best_step": result.best_step,
        "seconds": round(float(result.seconds), 1),
        "data_shape": list(result.data_shape),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if mode == "n2v" and cfg:
        training["n2v_fraction"], training["n2v_radius"] = cfg.n2v_fraction, cfg.n2v_radius
        training["n2v_blind"], training["n2v_mask"] = cfg.n2v_blind, cfg.n2v_mask
    card = {
        "description": extra.pop("description", f"{result.architecture} {origin} ({how})"),
        "architecture": result.architecture,
        "arch_kwargs": dict(result.arch_kwargs),
        "ndim": result.ndim,
        "voxel_size_A": voxel,
        "normalization": NORMALIZATION,
        "overlap": extra.pop("overlap", parent_card.get("overlap", _default_overlap(result.architecture))),
        "parent": result.parent,
        "training": training,
        **extra,
    }
    if card["overlap"] is None:  # the engine then measures the receptive field itself
        del card["overlap"]
    folder_path = card_path.parent
    save_model(result.module, folder_path, name, card)
    return card_path.with_suffix(".safetensors")
