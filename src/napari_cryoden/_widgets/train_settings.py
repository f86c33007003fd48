"""The Train widget's settings, without Qt: what the widget's values mean for the core.

Plain functions decide everything that is not drawing: :func:`input_roles` (which layers a mode
needs), :func:`finetune_config` (widget values ->
:class:`~napari_cryoden.training.finetune.FineTuneConfig`), :func:`check_save_name` and
:func:`suggest_name`, :func:`val_slab_rectangles` (the outline of the held-out slab),
:func:`preview_slice` (denoise the displayed slice with the current weights),
:func:`voxel_size_A` and :func:`card_extra` (what the model card records about the data). The
widget (:mod:`napari_cryoden._widgets.train`) keeps only Qt; these are tested without it.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..inference import iter_denoise_slab
from ..inference.measure import DEFAULT_OVERLAP
from ..models import ARCHITECTURES, LoadedModel, available_models
from ..training import finetune as _ft
from ..training.export import check_model_name
from ..training.finetune import FineTuneConfig, default_val_slab, scratch_arch_kwargs  # noqa: F401 (the widget's)

__all__ = [
    "ADVERSARIAL", "DEFAULT_CONTEXT", "DEFAULT_NAME", "INPUT_LABELS", "LOSSES", "MODES", "SCRATCH", "card_extra",
    "check_save_name", "default_val_slab", "finetune_config", "input_roles", "parse_learning_rate", "preview_slice",
    "scratch_arch_kwargs", "suggest_name", "val_slab_rectangles", "voxel_size_A",
]

#: (label, value) choices of the mode combo box; the values are FineTuneConfig.mode.
MODES: tuple[tuple[str, str], ...] = (
    ("Noise2Noise (even/odd halves)", "n2n"),
    ("Supervised (noisy + clean)", "supervised"),
    ("Noise2Void (one volume)", "n2v"),
)
#: Per mode: labels of the source and the target layer pickers (None: no target).
INPUT_LABELS: dict[str, tuple[str, str | None]] = {
    "n2n": ("even half", "odd half"),
    "supervised": ("noisy", "clean reference"),
    "n2v": ("volume", None),
}
LOSSES: tuple[tuple[str, str], ...] = (("L2 (mean squared error)", "l2"), ("L1 (mean absolute error)", "l1"))
ADVERSARIAL: tuple[tuple[str, str], ...] = (("none", "none"), ("GAN", "gan"), ("WGAN-GP", "wgangp"))
#: Value of the "start from" combo box that trains a new network.
SCRATCH = "(from scratch)"
#: Voxels of context on each side of the previewed slice: the inference default overlap, which
#: covers the stride-aligned receptive field of UpsampleUnet48.
DEFAULT_CONTEXT = DEFAULT_OVERLAP
DEFAULT_NAME = "finetuned"

# ================================================================== plain functions (no Qt)
def input_roles(mode: str) -> tuple[str, str | None]:
    """Labels of the layers a training mode needs.

    Parameters
    ----------
    mode : {"n2n", "supervised", "n2v"}

    Returns
    -------
    (str, str or None)
        Label of the source layer and of the target layer; None when the mode has no target.

    Raises
    ------
    ValueError
        If `mode` is unknown.

    Examples
    --------
    >>> input_roles("n2n")
    ('even half', 'odd half')
    >>> input_roles("n2v")
    ('volume', None)
    """
    try:
        return INPUT_LABELS[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(INPUT_LABELS)}, got {mode!r}") from None


def parse_learning_rate(text: str | float) -> float:
    """The learning rate typed by the user (``"1e-4"``, ``"0.0002"``) as a positive float.

    Raises
    ------
    ValueError
        If it is not a finite positive number.

    Examples
    --------
    >>> parse_learning_rate(" 2e-4 ")
    0.0002
    """
    try:
        lr = float(str(text).strip())
    except ValueError:
        raise ValueError(f"learning rate must be a number such as 1e-4, got {str(text).strip()!r}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning rate must be a positive number such as 1e-4, got {lr:g}")
    return lr


def check_save_name(name: str, existing: Iterable[str] = ()) -> str:
    """The name to save the model as, stripped, or a one-line ValueError.

    Empty names and names in `existing` get a message of their own; the rules of the saved
    files (characters, built-in names, files in the user model folder) are those of
    :func:`napari_cryoden.training.export.check_model_name`.

    Parameters
    ----------
    name : str
    existing : iterable of str
        Names already in the registry (:func:`~napari_cryoden.models.available_models`).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If the name is empty, taken, or not 1-100 letters, digits, ``.``, ``_`` and ``-``
        starting with a letter or digit.

    Examples
    --------
    >>> check_save_name(" lamella-3 ", existing=["upsampleunet48-gan"])
    'lamella-3'
    """
    name = str(name or "").strip()
    if not name:
        raise ValueError("enter a name to save the model as")
    if name in set(existing):
        raise ValueError(f"a model named {name!r} already exists; choose another name")
    check_model_name(name)
    return name


def suggest_name(base: str, existing: Iterable[str]) -> str:
    """`base`, or `base` with the first free ``-2``, ``-3``… suffix, not in `existing`.

    Examples
    --------
    >>> suggest_name("finetuned", ["finetuned", "finetuned-2"])
    'finetuned-3'
    """
    taken = set(existing)
    if base not in taken:
        return base
    i = 2
    while f"{base}-{i}" in taken:
        i += 1
    return f"{base}-{i}"


def finetune_config(
    *,
    mode: str,
    loss: str = "l2",
    adversarial: str = "none",
    patch: int,
    batch: int,
    steps: int,
    lr: float | str,
    val_slab: tuple[int, int] | None,
    val_every: int,
    preview_every: int = 0,
    val_axis: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    log_every: int | None = None,
    rampdown: float = 0.0,
    max_grad_norm: float | None = None,
) -> FineTuneConfig:
    """Turn the widget's settings into a :class:`~napari_cryoden.training.finetune.FineTuneConfig`.

    The adversarial term only exists in supervised mode; in the other modes it is ``"none"``
    whatever the (hidden) combo box says. `log_every` (steps between training-loss reports)
    defaults to about 200 reports per run, and at least one per validation. `rampdown` is the
    fraction of the steps over which the learning rate ramps down to 0 (Lehtinen et al. 2018);
    `max_grad_norm` 0 or ``None`` means no gradient clipping. A `patch` of 0 is automatic
    (:func:`~napari_cryoden.training.finetune.default_patch`); `val_slab` runs along `val_axis`
    (default: :func:`~napari_cryoden.training.finetune.validation_axis`). The config is frozen and
    checks its choices and numbers when built; range checks that need the data are left to
    :func:`~napari_cryoden.training.finetune.check_settings`.

    Raises
    ------
    ValueError
        One line: if the mode is unknown, the learning rate is not a positive number, or
        another setting is refused by :class:`~napari_cryoden.training.finetune.FineTuneConfig`.

    Examples
    --------
    >>> cfg = finetune_config(mode="n2n", adversarial="gan", patch=32, batch=2, steps=10, lr="1e-3",
    ...                       val_slab=(12, 16), val_every=5)
    >>> cfg.mode, cfg.adversarial, cfg.lr, cfg.val_slab
    ('n2n', 'none', 0.001, (12, 16))
    """
    input_roles(mode)
    if log_every is None:
        log_every = max(1, min(int(val_every), math.ceil(int(steps) / 200)))
    return FineTuneConfig(
        mode=mode,
        loss=loss,
        adversarial=adversarial if mode == "supervised" else "none",
        patch=int(patch) or None,
        batch=int(batch),
        steps=int(steps),
        lr=parse_learning_rate(lr),
        val_slab=None if val_slab is None else (int(val_slab[0]), int(val_slab[1])),
        val_axis=None if val_axis is None else int(val_axis),
        val_every=int(val_every),
        preview_every=int(preview_every),
        device=device,
        precision=precision,
        log_every=int(log_every),
        rampdown=float(rampdown),
        max_grad_norm=float(max_grad_norm) if max_grad_norm else None,
    )


def val_slab_rectangles(shape: Sequence[int], slab: tuple[int, int], axis: int = 0) -> list[np.ndarray]:
    """Outlines of the validation slab, in data coordinates of the layer of shape `shape`.

    A tomogram's slab ``start:stop`` along Z gets one rectangle framing the whole Y-X plane on
    every slice of the slab: in the 2D view a frame marks each held-out slice, in the 3D view the
    stacked frames draw the slab as a box. A slab along Y or X (the default the trainer holds
    out, :func:`~napari_cryoden.training.finetune.validation_axis`) is one rectangle (its rows or
    columns) on every Z slice; a micrograph's slab is one rectangle. The outlines follow pixel
    edges (centres are at integer coordinates in napari).

    Parameters
    ----------
    shape : (Z, Y, X) or (Y, X) sequence of int
    slab : (start, stop)
        Clipped to the array.
    axis : int, default=0
        Axis of `shape` the slab runs along.

    Returns
    -------
    list of (4, ndim) ndarray
        Empty when the slab is empty.

    Examples
    --------
    >>> rects = val_slab_rectangles((16, 32, 32), (12, 16))
    >>> len(rects), rects[0][:, 0].tolist()
    (4, [12.0, 12.0, 12.0, 12.0])
    >>> val_slab_rectangles((40, 48), (30, 40))[0].tolist()
    [[29.5, -0.5], [29.5, 47.5], [39.5, 47.5], [39.5, -0.5]]
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"expected a 2D or 3D layer, got shape {shape}")
    n = shape[axis]
    start, stop = max(0, int(slab[0])), min(n, int(slab[1]))
    if stop <= start:
        return []
    if len(shape) == 3 and axis > 0:  # rows or columns, on every Z slice
        plane = val_slab_rectangles(shape[1:], (start, stop), axis - 1)[0]
        return [np.column_stack([np.full(4, float(z)), plane]) for z in range(shape[0])]
    if len(shape) == 2:
        lo, hi = start - 0.5, stop - 0.5
        if axis == 1:  # columns
            ny = shape[0]
            return [np.array([[-0.5, lo], [ny - 0.5, lo], [ny - 0.5, hi], [-0.5, hi]], dtype=float)]
        width = shape[1]
        return [np.array([[lo, -0.5], [lo, width - 0.5], [hi, width - 0.5], [hi, -0.5]], dtype=float)]
    ny, nx = shape[1], shape[2]
    frame = np.array([[-0.5, -0.5], [-0.5, nx - 0.5], [ny - 0.5, nx - 0.5], [ny - 0.5, -0.5]], dtype=float)
    return [np.column_stack([np.full(4, float(z)), frame]) for z in range(start, stop)]


def preview_slice(
    volume: np.ndarray, module: torch.nn.Module, z: int, *, ndim: int = 3, context: int = DEFAULT_CONTEXT,
) -> np.ndarray:
    """Denoise slice `z` of a tomogram (or a whole micrograph) with a network being trained.

    Runs in the training thread, on the device that holds the module, in fp32; the module's
    train/eval mode is restored afterwards. The slice is denoised by
    :func:`~napari_cryoden.inference.iter_denoise_slab` with `context` slices of real data on
    each side and the whole volume's normalisation (that of training and of inference), so it
    shows what denoising the whole tomogram with these weights would give.

    Parameters
    ----------
    volume : (Z, Y, X) or (Y, X) ndarray
        The source layer's array (a memmap is read only around the slice).
    module : torch.nn.Module
        The network (its ``stride`` attribute gives the tile alignment).
    z : int
        Slice index along axis 0 (ignored for 2D data).
    ndim : {2, 3}
        Spatial dimensions of the network.
    context : int
        Voxels of context on each side of every tile (rounded up so that twice it is a multiple
        of the stride).

    Returns
    -------
    (Y, X) ndarray of float32
        In the intensity scale of `volume`.

    Raises
    ------
    ValueError
        If the data do not fit the network (see :func:`~napari_cryoden.inference.denoise`).
    """
    try:
        device = next(module.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    stride = int(getattr(module, "stride", 1))
    lm = LoadedModel(name="preview", module=module, card={"overlap": int(context)}, stride=stride, ndim=int(ndim))
    was_training = module.training
    job = iter_denoise_slab(volume, lm, z, half_depth=0, device=device.type, precision="fp32")
    try:
        while True:
            next(job)
    except StopIteration as stop:
        _z0, out = stop.value
    finally:
        job.close()
        module.train(was_training)
    return out if out.ndim == 2 else out[0]


def voxel_size_A(scale: Sequence[float], metadata: Mapping | None = None) -> float | None:
    """The voxel size (Å) to record on a model card, from a layer's scale and metadata: that of
    :func:`~napari_cryoden.training.finetune.card_voxel_size`, as ``cryoden train`` records it.

    The reader puts the MRC voxel size (Å) in the layer scale, in array axis order, and says in
    ``metadata["voxel_size_known"]`` whether the header held one.

    Examples
    --------
    >>> voxel_size_A((12.0, 10.0, 10.0))
    10.0
    >>> voxel_size_A((1.0, 1.0), {"voxel_size_known": False}) is None
    True
    """
    return _ft.card_voxel_size(scale, known=not (metadata and metadata.get("voxel_size_known") is False))


def card_extra(mode: str, inputs: Sequence[tuple[str, str, Sequence[int], Sequence[float], Mapping | None]]) -> dict:
    """What the model card records about the training data (``card_extra`` of ``save_finetuned``).

    Parameters
    ----------
    mode : {"n2n", "supervised", "n2v"}
    inputs : sequence of (role, layer name, shape, scale, metadata)
        The layers trained on, source first; scale in Å per voxel, array axis order.

    Returns
    -------
    dict
        ``voxel_size_A`` (in-plane, of the source layer; omitted when unknown, so the card keeps
        the parent model's) and ``data``: the mode and, per layer, its role, name, shape,
        voxel size (Z, Y, X) and the file it was read from when known.

    Examples
    --------
    >>> extra = card_extra("n2n", [("even half", "tomo_EVN", (16, 32, 32), (10.0, 10.0, 10.0), None),
    ...                            ("odd half", "tomo_ODD", (16, 32, 32), (10.0, 10.0, 10.0), None)])
    >>> extra["voxel_size_A"], extra["data"]["mode"], extra["data"]["layers"][1]["layer"]
    (10.0, 'n2n', 'tomo_ODD')
    """
    layers = []
    for role, name, shape, scale, metadata in inputs:
        known = not (metadata and metadata.get("voxel_size_known") is False)
        entry: dict[str, Any] = {
            "role": role, "layer": str(name), "shape": [int(s) for s in shape],
            "voxel_size_A": [float(v) for v in scale] if known else None,
        }
        path = (metadata or {}).get("path") or (metadata or {}).get("source_path")
        if path:
            entry["path"] = str(path)
        layers.append(entry)
    extra: dict[str, Any] = {"data": {"mode": mode, "layers": layers}}
    if inputs:
        voxel = voxel_size_A(inputs[0][3], inputs[0][4])
        if voxel is not None:
            extra["voxel_size_A"] = voxel
    return extra


def _model_geometry(model: str | None, architecture: str | None) -> tuple[int, int]:
    """(ndim, context) of the network to be trained, from the registry card or the architecture.

    The context of the previews is the card's ``overlap``, else :data:`DEFAULT_CONTEXT`
    (measuring the receptive field can take many seconds on a CPU).
    """
    if model is None:
        return (ARCHITECTURES[architecture].ndim if architecture in ARCHITECTURES else 3), DEFAULT_CONTEXT
    card = available_models().get(model, {})
    arch = card.get("architecture")
    ndim = ARCHITECTURES[arch].ndim if arch in ARCHITECTURES else int(card.get("ndim") or 3)
    overlap = card.get("overlap")
    return ndim, (int(overlap) if isinstance(overlap, int) and not isinstance(overlap, bool) and overlap >= 0
                  else DEFAULT_CONTEXT)
