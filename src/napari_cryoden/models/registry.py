"""Model registry: architecture names -> constructors, model names -> safetensors + JSON card.

A model is two files side by side: ``<name>.safetensors`` (weights only, no pickle) and
``<name>.json`` (the model card). The card names an architecture from the fixed table
:data:`ARCHITECTURES` and its keyword arguments; nothing in a card can make the program import or
run code. The card's ``sha256`` must match the weights file, and the tensors must fit the
architecture exactly, or the model is refused with a :class:`ModelError`.

Built-in models live in the package's ``zoo`` folder (the repository's ``models/``); user models
(fine-tuned ones) in ``platformdirs.user_data_dir("napari-cryoden")/models``, or in the folder
named by the environment variable ``CRYODEN_USER_MODELS``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from . import fast, networks

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_2D",
    "LoadedModel",
    "ModelError",
    "available_models",
    "build",
    "builtin_model_dir",
    "check_arch_kwargs",
    "default_model_for",
    "load_model",
    "model_card",
    "save_model",
    "user_model_dir",
]

DEFAULT_MODEL = "upsampleunet48-gan"
#: The default for micrographs and stacks of 2D images.
DEFAULT_MODEL_2D = "n2n-unet-2d"


def default_model_for(data_ndim: int, *, image_stack: bool = False) -> str:
    """The default model for data of `data_ndim` dimensions: :data:`DEFAULT_MODEL` (3D) for a
    (Z, Y, X) tomogram, :data:`DEFAULT_MODEL_2D` for a (Y, X) micrograph or an (N, Y, X) stack of
    2D images (`image_stack`, e.g. a ``.mrcs`` file)."""
    return DEFAULT_MODEL_2D if data_ndim == 2 or image_stack else DEFAULT_MODEL

class ArchSpec(NamedTuple):
    """One architecture of the registry.

    Attributes
    ----------
    cls : type of torch.nn.Module
        The constructor.
    kwargs : frozenset of str
        The keyword arguments a model card may set (``arch_kwargs``).
    ndim : int
        Spatial dimensions: 3 for tomograms, 2 for micrographs.
    stride : int
        What every spatial size of the input must be a multiple of (the class's ``stride``).
    default_overlap : int or None
        Voxels of tile context per side that make tiled inference seam-free (measured with
        :func:`~napari_cryoden.inference.measure.receptive_margin` at the shipped channel
        counts), for cards of this architecture that state none; None: measured per model.
    """

    cls: type[nn.Module]
    kwargs: frozenset[str]
    ndim: int
    stride: int
    default_overlap: int | None


def _spec(cls: type[nn.Module], kwargs: set[str], ndim: int, default_overlap: int | None) -> ArchSpec:
    return ArchSpec(cls, frozenset(kwargs), ndim, int(getattr(cls, "stride", 1)), default_overlap)


#: Architecture name -> :class:`ArchSpec`.
ARCHITECTURES: dict[str, ArchSpec] = {
    "UpsampleUnet48": _spec(networks.UpsampleUnet48, {"ch", "shared_weights", "final_activation"}, 3, 24),
    "Unet48": _spec(networks.Unet48, {"ch", "shared_weights", "final_activation"}, 3, 64),
    "SimpleAutoEncoder": _spec(networks.SimpleAutoEncoder, {"final_activation"}, 3, 48),
    "N2NUNet2D": _spec(networks.N2NUNet2D, {"ch"}, 2, 128),
    "FastUNet3D": _spec(fast.FastUNet3D, {"ch", "refine", "final_activation"}, 3, None),
}

_CARD_REQUIRED = ("name", "architecture", "arch_kwargs", "sha256", "voxel_size_A", "normalization")
_ALLOWED_KWARG_TYPES = (bool, int, float, str)
#: Cards larger than this (bytes) are refused unread.
MAX_CARD_BYTES = 1024**2
#: Largest channel count (``ch``, ``refine``) a card may ask for: 5x the shipped models' 48.
MAX_CHANNELS = 256


def _check_channels(value: Any, minimum: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_CHANNELS:
        return f"an integer from {minimum} to {MAX_CHANNELS}"
    return None


def _check_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _check_activation(value: Any) -> str | None:
    return None if value in networks.FINAL_ACTIVATIONS else f"one of {', '.join(sorted(networks.FINAL_ACTIVATIONS))}"


#: Keyword argument -> check (None when the value is fine, else what was expected).
_KWARG_CHECKS = {
    "ch": lambda v: _check_channels(v, 1),
    "refine": lambda v: _check_channels(v, 0),
    "shared_weights": _check_bool,
    "final_activation": _check_activation,
}


def check_arch_kwargs(architecture: str, kwargs: Any) -> None:
    """Check an architecture's keyword arguments (names, types and ranges) before building it.

    Parameters
    ----------
    architecture : str
        A key of :data:`ARCHITECTURES`.
    kwargs : dict
        ``ch`` (and ``refine``) must be integers up to :data:`MAX_CHANNELS` (``ch`` at least 1),
        ``shared_weights`` a boolean, ``final_activation`` a name of
        :data:`~napari_cryoden.models.networks.FINAL_ACTIVATIONS`.

    Raises
    ------
    ModelError
        Naming the first bad argument; nothing is allocated.
    """
    if architecture not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    if not isinstance(kwargs, dict):
        raise ModelError("arch_kwargs must be a JSON object")
    allowed = ARCHITECTURES[architecture].kwargs
    bad = [k for k, v in kwargs.items() if k not in allowed or not isinstance(v, _ALLOWED_KWARG_TYPES)]
    if bad:
        raise ModelError(f"arch_kwargs {bad} not allowed for {architecture} (allowed: {sorted(allowed)})")
    for key, value in kwargs.items():
        expected = _KWARG_CHECKS[key](value)
        if expected:
            raise ModelError(f"arch_kwargs {key} of {architecture} must be {expected}, got {value!r}")


class ModelError(ValueError):
    """A model is missing, malformed, does not match its card, or does not fit its architecture."""


@dataclass
class LoadedModel:
    """A network ready for inference, with its card.

    Attributes
    ----------
    name : str
    module : torch.nn.Module
        In eval mode, on the CPU, float32.
    card : dict
        The parsed model card.
    stride : int
        Spatial sizes fed to the network must be multiples of this.
    ndim : int
        2 for micrograph models, 3 for tomogram models.
    """

    name: str
    module: nn.Module
    card: dict = field(default_factory=dict)
    stride: int = 1
    ndim: int = 3

    @classmethod
    def from_module(cls, module: nn.Module, name: str = "custom", ndim: int = 3) -> "LoadedModel":
        """Wrap a plain module (tests, freshly trained networks); stride from ``module.stride``."""
        return cls(name=name, module=module.eval(), stride=int(getattr(module, "stride", 1)), ndim=ndim)


def builtin_model_dir() -> Path:
    """Folder of the shipped models: the installed ``napari_cryoden/zoo`` or the repo's ``models/``."""
    here = Path(__file__).resolve().parent.parent
    installed = here / "zoo"
    if installed.is_dir() and any(installed.glob("*.json")):
        return installed
    return here.parent.parent / "models"


def user_model_dir() -> Path:
    """Folder of user (fine-tuned) models; ``$CRYODEN_USER_MODELS`` overrides the platform default."""
    env = os.environ.get("CRYODEN_USER_MODELS")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-cryoden", appauthor=False)) / "models"


def _model_dirs() -> list[Path]:
    return [builtin_model_dir(), user_model_dir()]


def _read_card_text(path: Path) -> str:
    """The text of a card file: a regular file of at most :data:`MAX_CARD_BYTES`, opened without
    blocking (a FIFO or a device named ``*.json`` is refused, never read)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ModelError(f"{path}: cannot open the model card ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{path}: model card is not a regular file")
        if st.st_size > MAX_CARD_BYTES:
            raise ModelError(f"{path}: model card is {st.st_size} bytes, more than the {MAX_CARD_BYTES} accepted")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model card ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CARD_BYTES:
        raise ModelError(f"{path}: model card is more than {MAX_CARD_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: model card is not UTF-8 text ({exc.reason})") from None


def _read_card(path: Path) -> dict:
    text = _read_card_text(path)
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: model card is not valid JSON ({exc})") from None
    except RecursionError:
        raise ModelError(f"{path}: model card is nested too deeply") from None
    if not isinstance(card, dict):
        raise ModelError(f"{path}: model card must be a JSON object")
    missing = [k for k in _CARD_REQUIRED if k not in card]
    if missing:
        raise ModelError(f"{path}: model card lacks {', '.join(missing)}")
    try:
        check_arch_kwargs(card["architecture"], card["arch_kwargs"])
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    voxel = card["voxel_size_A"]
    if voxel is not None and (isinstance(voxel, bool) or not isinstance(voxel, (int, float))
                              or not math.isfinite(voxel) or voxel <= 0):
        raise ModelError(f"{path}: voxel_size_A must be a positive number (Å/voxel) or null, got {voxel!r}")
    return card


def available_models(skipped: list[str] | None = None) -> dict[str, dict]:
    """Every model that can be loaded by name, built-in first; a user model may not shadow one.

    Parameters
    ----------
    skipped : list, optional
        Receives a one-line reason for each malformed card (``ModelError`` message), which is
        skipped.

    Returns
    -------
    dict
        Model name (the card file's stem, whatever the card's ``name``) -> its card, with
        ``"name"`` set to that stem and ``"_path"`` to the card file.
    """
    found: dict[str, dict] = {}
    for folder in _model_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            if not path.with_suffix(".safetensors").is_file():
                continue
            try:
                card = _read_card(path)
            except ModelError as exc:
                if skipped is not None:
                    skipped.append(str(exc))
                continue
            found.setdefault(path.stem, {**card, "name": path.stem, "_path": str(path)})
    return found


def build(architecture: str, **kwargs: Any) -> nn.Module:
    """Construct an architecture from :data:`ARCHITECTURES` with random weights.

    Parameters
    ----------
    architecture : str
        A key of :data:`ARCHITECTURES`, e.g. ``"UpsampleUnet48"``.
    **kwargs
        Constructor arguments a card may set (:attr:`ArchSpec.kwargs`), e.g. ``ch=48``.

    Returns
    -------
    torch.nn.Module
        In training mode, on the CPU, float32.

    Raises
    ------
    ModelError
        If the architecture is unknown or a keyword argument is not allowed, of the wrong type
        or out of range (:func:`check_arch_kwargs`).
    """
    check_arch_kwargs(architecture, kwargs)
    return ARCHITECTURES[architecture].cls(**kwargs)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resolve(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".json", ".safetensors") and p.exists():
        return p.with_suffix(".json")
    for folder in _model_dirs():
        card = folder / f"{name_or_path}.json"
        if card.is_file():
            return card
    known = ", ".join(available_models()) or "none"
    raise ModelError(f"no model named {str(name_or_path)!r} (available: {known})")


def model_card(name_or_path: str | os.PathLike) -> dict:
    """The validated card of a model (by registry name or card/weights path), without its weights.

    Parameters
    ----------
    name_or_path : str or path-like
        As for :func:`load_model`.

    Returns
    -------
    dict
        The card's JSON: ``name``, ``architecture``, ``arch_kwargs``, ``sha256``,
        ``voxel_size_A`` (Å), ``normalization`` and what training recorded.

    Raises
    ------
    ModelError
        If no such model exists or its card is malformed.
    """
    path = _resolve(name_or_path)
    return {**_read_card(path), "name": path.stem, "_path": str(path)}


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> LoadedModel:
    """Load a model by registry name or by the path of its card or weights.

    The model's name is its card file's stem, whatever the card's ``name`` says. Weights are
    read with :func:`safetensors.torch.load_file` (never pickle) after their sha256 is checked
    against the card.

    Parameters
    ----------
    name_or_path : str or path-like, default="upsampleunet48-gan"
        A name of :func:`available_models` (shipped or in the user model folder), or the path of
        a ``.json`` card or of the ``.safetensors`` weights next to it.

    Returns
    -------
    LoadedModel
        The network in eval mode on the CPU, with its card, stride and spatial dimensions.

    Raises
    ------
    ModelError
        If no such model exists, the card is malformed, the checksum differs, or the tensors do
        not fit the declared architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card_path = _resolve(name_or_path)
    card = _read_card(card_path)
    weights = card_path.with_suffix(".safetensors")
    if not weights.is_file():
        raise ModelError(f"{card_path}: weights file {weights.name} is missing")
    digest = _sha256(weights)
    if digest != card["sha256"]:
        raise ModelError(f"{weights}: sha256 {digest[:12]}… does not match the model card ({str(card['sha256'])[:12]}…)")
    arch = card["architecture"]
    module = build(arch, **card["arch_kwargs"])
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{weights}: not a readable safetensors file ({exc})") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{weights}: tensors do not fit architecture {arch}: {first}") from None
    module.eval()
    return LoadedModel(
        name=card_path.stem, module=module, card={**card, "name": card_path.stem},
        stride=int(getattr(module, "stride", 1)), ndim=ARCHITECTURES[arch].ndim,
    )


def save_model(module: nn.Module, folder: str | os.PathLike, name: str, card: dict) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` atomically into `folder`.

    Parameters
    ----------
    module : torch.nn.Module
        The network; its state dict is saved with safetensors (never pickle).
    folder : path-like
        Created if missing.
    name : str
        The model's name, the stem of both files.
    card : dict
        Must hold ``architecture`` and ``arch_kwargs``; ``name`` and ``sha256`` are filled in.

    Returns
    -------
    Path
        The card's path.
    """
    from safetensors.torch import save

    from ..io.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
             for k, v in module.state_dict().items()}
    weights = folder / f"{name}.safetensors"
    with atomic_path(weights) as tmp:
        tmp.write_bytes(save(state))  # into the locked temporary file itself (save_file replaces it)
    card = {**card, "name": name, "weights": weights.name, "sha256": _sha256(weights)}
    card.setdefault("voxel_size_A", None)
    card.setdefault("normalization", NORMALIZATION)
    card_path = folder / f"{name}.json"
    with atomic_path(card_path) as tmp:
        Path(tmp).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    _read_card(card_path)
    return card_path


#: The one normalisation scheme of every shipped model; see :mod:`napari_cryoden.inference.normalize`.
NORMALIZATION = "robust: (x - median) / (IQR / 1.349), statistics of the whole input volume"
