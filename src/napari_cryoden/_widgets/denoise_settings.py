"""The Denoise widget's settings, without Qt: what the widget's values mean for the core.

Plain functions decide everything that is not drawing: :func:`denoise_kwargs` (the tile,
overlap, device and precision boxes -> keyword arguments of
:func:`~napari_cryoden.inference.iter_denoise`), :func:`layer_source` and :func:`is_image_stack`
(what a layer's metadata says about its file), :func:`model_ndim`, :func:`slice_by_slice`,
:func:`resample_plan` (the layer's pixel size, the "pixel size" box and the resample choice ->
:class:`~napari_cryoden.inference.resample.ResamplePlan`), :func:`output_scale`, and the
attributes of the result layers (:func:`denoised_layer_kwargs`, :func:`preview_layer_kwargs`,
:func:`contrast_limits`). The widget (:mod:`napari_cryoden._widgets.denoise`) keeps only Qt;
these are tested without it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np

from ..device import DEVICES, PRECISION_CHOICES
from ..inference.resample import ResamplePlan, input_voxel_size, plan_resample
from ..inference.stream import is_image_stack_path
from ..models.registry import ARCHITECTURES

__all__ = [
    "AUTO_OVERLAP", "AUTO_TILE", "DEVICES", "HEADER_KEYS", "PRECISIONS", "contrast_limits", "denoise_kwargs",
    "denoised_layer_kwargs", "is_image_stack", "layer_source", "model_ndim", "output_scale",
    "preview_layer_kwargs", "resample_plan", "slice_by_slice",
]

#: Choices of the device and precision combo boxes: the core's accepted values.
PRECISIONS = PRECISION_CHOICES
#: Spin box values that mean "let the core choose".
AUTO_TILE = 0
AUTO_OVERLAP = -1
#: Metadata of the input layer that the result keeps, so that the writer can keep the input
#: file's header (:meth:`napari_cryoden.io.HeaderFields.from_metadata`).
HEADER_KEYS = ("header", "extended_header_bytes")


def denoise_kwargs(*, tile: int, overlap: int, device: str, precision: str) -> dict[str, Any]:
    """Turn the widget's settings into keyword arguments of :func:`~napari_cryoden.inference.iter_denoise`.

    Parameters
    ----------
    tile : int
        Tile edge in voxels; ``0`` (:data:`AUTO_TILE`) lets the core choose.
    overlap : int
        Voxels discarded per tile side; ``-1`` (:data:`AUTO_OVERLAP`) lets the core choose.
    device : {"auto", "cpu", "cuda"}
    precision : {"auto", "fp32", "bf16", "fp16"}

    Returns
    -------
    dict
        ``tile``, ``overlap`` (``None`` for automatic), ``device`` and ``precision``.

    Raises
    ------
    ValueError
        If a setting is out of range; the message names it. Network constraints (multiples of
        the stride) are checked by the core.

    Examples
    --------
    >>> denoise_kwargs(tile=0, overlap=-1, device="cpu", precision="fp32")
    {'tile': None, 'overlap': None, 'device': 'cpu', 'precision': 'fp32'}
    """
    tile, overlap = int(tile), int(overlap)
    if tile < 0:
        raise ValueError(f"tile must be {AUTO_TILE} (automatic) or a positive number of voxels, got {tile}")
    if overlap < AUTO_OVERLAP:
        raise ValueError(f"overlap must be {AUTO_OVERLAP} (automatic) or at least 0 voxels, got {overlap}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return {
        "tile": None if tile == AUTO_TILE else tile,
        "overlap": None if overlap == AUTO_OVERLAP else overlap,
        "device": device,
        "precision": precision,
    }


def denoised_layer_kwargs(
    name: str,
    *,
    scale,
    translate,
    contrast_limits,
    model: str,
    source_path: str | None = None,
    input_metadata: Mapping[str, Any] | None = None,
    voxel_size_known: bool | None = None,
) -> dict[str, Any]:
    """Attributes of the layer that shows a denoised copy of the layer `name`.

    The result is in the input's intensity scale (the core never rescales), so it keeps the input
    layer's scale and translate and the two can be compared side by side. The widget replaces
    `contrast_limits` by the result's own (:func:`contrast_limits`): denoising narrows the
    histogram, and the input's range would show a flat grey image.

    Parameters
    ----------
    name : str
        Name of the input layer.
    scale, translate : sequence of float
        World units per voxel and offset of the input layer, array axis order.
    contrast_limits : (2,) sequence of float
        Contrast limits of the input layer.
    model : str
        Name of the model used, kept in the metadata.
    source_path : str, optional
        File the input layer was read from; kept as ``metadata["source_path"]`` so that saving
        the denoised layer never replaces it.
    input_metadata : mapping, optional
        Metadata of the input layer; its :data:`HEADER_KEYS` (the MRC header the reader kept)
        are copied, so that the writer keeps the input file's header.
    voxel_size_known : bool, optional
        Whether the result's pixel size (its `scale`) is known
        (:attr:`~napari_cryoden.inference.resample.ResamplePlan.known`); recorded as
        ``metadata["voxel_size_known"]`` when given.

    Returns
    -------
    dict
        Keyword arguments of :meth:`napari.Viewer.add_image`.

    Examples
    --------
    >>> kw = denoised_layer_kwargs("tomo", scale=(3, 2, 2), translate=(0, 0, 0),
    ...                            contrast_limits=(-1, 1), model="m")
    >>> kw["name"], kw["scale"], kw["contrast_limits"]
    ('tomo denoised', (3.0, 2.0, 2.0), (-1.0, 1.0))
    """
    lo, hi = (float(c) for c in contrast_limits)
    metadata: dict[str, Any] = {"denoised_from": name, "model": model}
    if source_path:
        metadata["source_path"] = str(source_path)
    metadata.update({k: input_metadata[k] for k in HEADER_KEYS if k in (input_metadata or {})})
    if voxel_size_known is not None:
        metadata["voxel_size_known"] = bool(voxel_size_known)
    return {
        "name": f"{name} denoised",
        "scale": tuple(float(s) for s in scale),
        "translate": tuple(float(t) for t in translate),
        "contrast_limits": (lo, hi),
        "metadata": metadata,
    }


def contrast_limits(data: np.ndarray, *, slab: int = 16) -> tuple[float, float]:
    """Display range of a denoised array: the 1st and 99th percentiles of its finite values in a
    central slab (at most `slab` slices around the middle of the first axis of a 3D array, the
    whole of a 2D one), so that one slice's outliers or a memory map's size do not decide it.

    Returns
    -------
    (low, high) : tuple of float
        ``high > low`` (a constant array gets ``(v, v + 1)``); ``(0.0, 1.0)`` without finite values.

    Examples
    --------
    >>> contrast_limits(np.arange(100, dtype=np.float32).reshape(10, 10))
    (0.99, 98.01)
    """
    arr = np.asarray(data)
    if arr.ndim == 3:
        mid = arr.shape[0] // 2
        arr = arr[max(0, mid - slab // 2): mid + slab // 2 + 1]
    values = arr[np.isfinite(arr)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def preview_layer_kwargs(
    name: str,
    *,
    scale,
    translate,
    contrast_limits,
    model: str,
    z_start: int,
    slab_ndim: int,
) -> dict[str, Any]:
    """Attributes of the layer ``"<name> preview"`` that shows denoised slices from `z_start` on.

    The slab sits where its slices are in the input: the first axis's translate moves by
    ``z_start`` voxels (``z_start * scale[0]`` world units). A 2D preview (a denoised image)
    keeps the input's translate.

    Parameters
    ----------
    name : str
        Name of the input layer.
    scale, translate : sequence of float
        Of the input layer, array axis order.
    contrast_limits : (2,) sequence of float
    model : str
    z_start : int
        Index of the slab's first slice in the input.
    slab_ndim : int
        Dimensions of the preview array.

    Examples
    --------
    >>> kw = preview_layer_kwargs("tomo", scale=(2, 1, 1), translate=(10, 0, 0), contrast_limits=(0, 1),
    ...                           model="m", z_start=5, slab_ndim=3)
    >>> kw["name"], kw["translate"]
    ('tomo preview', (20.0, 0.0, 0.0))
    """
    lo, hi = (float(c) for c in contrast_limits)
    scale = tuple(float(v) for v in scale)
    translate = [float(t) for t in translate]
    if slab_ndim == len(translate) and slab_ndim >= 3:
        translate[0] += z_start * scale[0]
    return {
        "name": f"{name} preview",
        "scale": scale,
        "translate": tuple(translate),
        "contrast_limits": (lo, hi),
        "metadata": {"preview_of": name, "model": model, "z_start": int(z_start)},
    }


def layer_source(metadata: Mapping[str, Any] | None) -> str | None:
    """The file a layer was read from: its metadata's ``path`` (set by the reader) or
    ``source_path`` (set on denoised layers); None when neither is there.

    Examples
    --------
    >>> layer_source({"path": "/data/particles.mrcs"})
    '/data/particles.mrcs'
    """
    meta = metadata or {}
    return meta.get("path") or meta.get("source_path") or None


def is_image_stack(metadata: Mapping[str, Any] | None) -> bool:
    """True when the layer was read from a ``.mrcs`` file: a stack of 2D images, denoised slice
    by slice by a 2D model and refused by a 3D model.

    Examples
    --------
    >>> is_image_stack({"path": "particles.mrcs"}), is_image_stack({"path": "tomo.mrc"}), is_image_stack(None)
    (True, False, False)
    """
    source = layer_source(metadata)
    return bool(source) and is_image_stack_path(source)


def model_ndim(card: Mapping[str, Any] | None) -> int | None:
    """Spatial dimensions (2 or 3) of the network a model card describes; None for an unknown
    or missing architecture.

    Examples
    --------
    >>> model_ndim({"architecture": "N2NUNet2D"}), model_ndim({"architecture": "nope"})
    (2, None)
    """
    arch = (card or {}).get("architecture")
    return ARCHITECTURES[arch].ndim if arch in ARCHITECTURES else None


def slice_by_slice(model_dims: int | None, data_ndim: int, *, image_stack: bool = False) -> bool:
    """True when a 2D model denoises a (Z, Y, X) tomogram slice by slice along Z (the widget
    says so); a ``.mrcs`` stack is slice by slice by nature and is not counted."""
    return model_dims == 2 and data_ndim == 3 and not image_stack


def resample_plan(
    shape: Sequence[int],
    scale: Sequence[float],
    metadata: Mapping[str, Any] | None,
    card: Mapping[str, Any] | None,
    *,
    mode: str = "auto",
    pixel_size: float = 0.0,
) -> ResamplePlan | None:
    """How a layer would be resampled for a model: the widget's pixel size line and its run.

    Parameters
    ----------
    shape : sequence of int
        Shape of the layer's array: (Z, Y, X), (N, Y, X) or (Y, X).
    scale : sequence of float
        The layer's scale, Å per voxel in array axis order (the reader sets it from the MRC
        header's voxel size).
    metadata : mapping or None
        The layer's metadata: ``voxel_size_known`` (False when the header had none; default
        True) and the file it came from (:func:`is_image_stack`).
    card : mapping or None
        The model card (its ``architecture`` and ``voxel_size_A``).
    mode : {"auto", "off", "binned"}, default="auto"
        The resample combo box.
    pixel_size : float, default=0.0
        The "pixel size (Å)" box: ``0`` takes `scale`, anything else overrides it.

    Returns
    -------
    ResamplePlan or None
        None without a card or with an unknown architecture.

    Raises
    ------
    ValueError
        For an unknown `mode`, a `pixel_size` that is not a finite number >= 0, or a `scale` that
        does not match `shape` (see :func:`~napari_cryoden.inference.resample.plan_resample`).

    Examples
    --------
    >>> plan = resample_plan((96, 80), (2.5, 2.5), {}, {"architecture": "N2NUNet2D", "voxel_size_A": 10.0})
    >>> plan.model_shape, plan.describe("layer")
    ((24, 20), 'layer 2.5 Å → model 10 Å, binned ×4')
    """
    dims = model_ndim(card)
    if card is None or dims is None:
        return None
    stack = is_image_stack(metadata)
    known = bool((metadata or {}).get("voxel_size_known", True))
    override = float(pixel_size) or None
    voxel, known = input_voxel_size(tuple(float(v) for v in scale), known, override, image_stack=stack)
    return plan_resample(tuple(int(n) for n in shape), voxel, SimpleNamespace(card=dict(card), ndim=dims),
                         mode=mode, known=known, image_stack=stack)


def output_scale(scale: Sequence[float], plan: ResamplePlan | None) -> tuple[float, ...]:
    """The result layer's scale: the plan's output voxel size (Å; the model's with
    ``mode="binned"``, the one typed in the "pixel size" box) when the pixel size is known, else
    the input layer's `scale`.

    Examples
    --------
    >>> output_scale((1.0, 1.0), None)
    (1.0, 1.0)
    """
    if plan is not None and plan.known:
        return tuple(float(v) for v in plan.output_voxel_size)
    return tuple(scale)
