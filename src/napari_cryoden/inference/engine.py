"""Tiled, seam-free inference of a denoising network over a tomogram or micrograph.

:func:`iter_denoise` is a generator that yields ``(done, total)`` after every tile and returns the
denoised array; :func:`denoise` drives it with a progress callback and a cancel flag. Only the
widget layer knows about threads.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from ..models.registry import DEFAULT_MODEL, LoadedModel, load_model
from .normalize import robust_stats
from .tiling import plan_tiles, read_tile

__all__ = ["NONFINITE_CHOICES", "Cancelled", "count_nonfinite", "denoise", "iter_denoise", "default_geometry", "resolve_device", "resolve_precision"]

log = logging.getLogger(__name__)

#: Default tile core edge (voxels) on the CPU and on CUDA, and default margin per side.
DEFAULT_TILE = {"cpu": 96, "cuda": 192}
DEFAULT_OVERLAP = 24

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


#: What :func:`iter_denoise` does with NaN/Inf input voxels.
NONFINITE_CHOICES = ("replace", "refuse")


def count_nonfinite(volume: np.ndarray, *, chunk_bytes: int = 64 * 1024**2) -> int:
    """Number of NaN/Inf voxels in `volume`, read in slabs along the first axis (memmap-friendly).

    Integer and boolean volumes are always finite and are not read.
    """
    if not np.issubdtype(volume.dtype, np.inexact):
        return 0
    if volume.ndim == 0:
        return int(not np.isfinite(volume))
    per_slab = max(1, volume[0].size * volume.dtype.itemsize)
    step = max(1, chunk_bytes // per_slab)
    return sum(
        int(np.count_nonzero(~np.isfinite(volume[i : i + step]))) for i in range(0, volume.shape[0], step)
    )


class Cancelled(Exception):
    """Raised by :func:`denoise` when its `cancel` callable returned True."""


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True if this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast pays off."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU.

    Raises
    ------
    ValueError
        For an unknown device, or ``"cuda"`` without a CUDA GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 on CPUs with native bf16 and on CUDA GPUs that support it, fp16 on older
    GPUs, fp32 otherwise."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(_PRECISIONS)}; got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is for CUDA; on the CPU use bf16 or fp32")
    return precision


def default_geometry(model: LoadedModel, device: torch.device, tile=None, overlap=None) -> tuple[int, int]:
    """Fill in the tile edge and per-side overlap: defaults follow the device and model stride."""
    s = model.stride
    if overlap is None:
        overlap = int(model.card.get("overlap", DEFAULT_OVERLAP))
        overlap = -(-2 * overlap // s) * s // 2  # 2*overlap must be a multiple of the stride
    if tile is None:
        tile = -(-DEFAULT_TILE["cuda" if device.type == "cuda" else "cpu"] // s) * s
    return tile, overlap


def _as_model(model) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, torch.nn.Module):
        return LoadedModel.from_module(model)
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise TypeError(f"model must be a name, a path, a LoadedModel or a torch Module, got {type(model).__name__}")


def iter_denoise(
    volume: np.ndarray,
    model: str | LoadedModel | torch.nn.Module = DEFAULT_MODEL,
    *,
    tile: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] | None = None,
    device: str = "auto",
    precision: str = "auto",
    out: np.ndarray | None = None,
    batch_size: int = 1,
    nonfinite: str = "replace",
    info: dict | None = None,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Denoise tile by tile, yielding ``(tiles_done, tiles_total)``; returns the output array.

    Same parameters as :func:`denoise`, plus `out` (a preallocated float32 array or memmap of the
    input's shape to write into) and `batch_size` (tiles per forward pass).
    """
    vol = volume
    if not isinstance(vol, np.ndarray):
        vol = np.asarray(vol)
    if not (np.issubdtype(vol.dtype, np.number) or vol.dtype == np.bool_) or np.iscomplexobj(vol):
        raise ValueError(f"volume must hold real numbers, got dtype {vol.dtype}")
    lm = _as_model(model)
    if vol.ndim != lm.ndim:
        if vol.ndim == 2 and lm.ndim == 3:
            raise ValueError(
                f"model {lm.name!r} is a 3D tomogram model and the input is a 2D image; "
                "no 2D micrograph model is available yet"
            )
        raise ValueError(f"model {lm.name!r} expects {lm.ndim}D input, got a {vol.ndim}D array of shape {vol.shape}")
    if min(vol.shape) < 1:
        raise ValueError(f"volume is empty: shape {vol.shape}")
    if nonfinite not in NONFINITE_CHOICES:
        raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE_CHOICES)}, got {nonfinite!r}")
    n_bad = count_nonfinite(vol)
    if info is not None:
        info["nonfinite"] = n_bad
        info["nonfinite_action"] = nonfinite if n_bad else None
    if n_bad and nonfinite == "refuse":
        raise ValueError(
            f"the input holds {n_bad} NaN/Inf voxels; fix the data or let them be replaced by the median "
            "(nonfinite='replace')"
        )
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    tile, overlap = default_geometry(lm, dev, tile, overlap)
    tiles = plan_tiles(vol.shape, tile, overlap, lm.stride)

    center, scale = robust_stats(vol)
    if n_bad:
        if info is not None:
            info["nonfinite_value"] = center
        log.warning("replacing %d NaN/Inf voxels of the input by the median %g before denoising", n_bad, center)
    if out is None:
        out = np.empty(vol.shape, dtype=np.float32)
    elif out.shape != vol.shape:
        raise ValueError(f"out has shape {out.shape}, expected {vol.shape}")

    net = lm.module.to(dev).eval()
    memory_format = torch.channels_last_3d if (dev.type == "cpu" and prec == "bf16" and vol.ndim == 3) else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    autocast = (
        torch.autocast(device_type=dev.type, dtype=_PRECISIONS[prec]) if _PRECISIONS[prec] is not None else _null()
    )
    total = len(tiles)
    yield 0, total
    done = 0
    for b in range(0, total, batch_size):
        batch = tiles[b : b + batch_size]
        blocks = []
        for t in batch:
            block = read_tile(vol, t)
            if n_bad:
                block[~np.isfinite(block)] = center
            block -= center
            block /= scale
            blocks.append(block)
        shapes = {blk.shape for blk in blocks}
        groups = [blocks] if len(shapes) == 1 else [[blk] for blk in blocks]
        preds = []
        for group in groups:
            x = torch.from_numpy(np.stack(group)[:, None]).to(dev, non_blocking=True)
            x = x.contiguous(memory_format=memory_format)
            # Grad mode is thread-global: enter inference mode per batch, never across a yield.
            with torch.inference_mode(), autocast:
                y = net(x)
            preds.extend(y[:, 0].float().cpu().numpy())
        for t, pred in zip(batch, preds):
            core = pred[t.crop] * scale + center
            if not np.isfinite(core).all():
                raise ValueError(
                    "the network produced NaN/Inf values; the input's intensities (median "
                    f"{center:.3g}, spread {scale:.3g}) may be out of the range float32 can handle"
                )
            out[t.out] = core
        done += len(batch)
        yield done, total
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def denoise(
    volume: np.ndarray,
    model: str | LoadedModel | torch.nn.Module = DEFAULT_MODEL,
    *,
    tile: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    nonfinite: str = "replace",
    info: dict | None = None,
) -> np.ndarray:
    """Denoise a tomogram tile by tile with a pretrained network, without seams.

    The volume is normalised with robust statistics of the whole volume (median and IQR / 1.349,
    see :func:`~napari_cryoden.inference.normalize.robust_stats`), cut into overlapping tiles
    whose offsets follow the network stride, reflect-padded at the borders, passed through the
    network, cropped to the tile cores and stitched. The result is put back in the input's
    intensity scale.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray of real dtype
        The tomogram as read from the MRC file (a memmap is read tile by tile); never modified.
        Any size, smaller than one tile included.
    model : str, LoadedModel or torch.nn.Module, default="upsampleunet48-gan"
        Registry name, card path, loaded model, or a bare module (its ``stride`` attribute, if
        any, sets the tile alignment).
    tile : int or tuple of 3 int, optional
        Edge of the block of output each tile produces (its core), in voxels, a multiple of the
        network stride. Default 96 on the CPU and 192 on CUDA; axes shorter than a tile get one
        smaller tile.
    overlap : int or tuple of 3 int, optional
        Voxels of context read (and discarded) on each side of every core, so the network sees
        ``tile + 2 * overlap`` voxels per axis (default: the model card's ``overlap``, else 24,
        which covers the stride-aligned receptive field of UpsampleUnet48, 23 voxels); ``2 * overlap`` must be a multiple
        of the stride.
    device : {"auto", "cpu", "cuda"}, default="auto"
        "auto" takes CUDA when PyTorch sees a GPU.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast dtype of the forward pass. "auto" is bf16 (with ``channels_last_3d``) on CPUs with
        native bf16 and on recent GPUs, fp16 on older GPUs, else fp32. The output is float32.
    progress : callable(done: int, total: int), optional
        Called with the number of tiles done and the total, from 0 to total.
    cancel : callable() -> bool, optional
        Polled before each tile; True stops the run with :class:`Cancelled`.
    nonfinite : {"replace", "refuse"}, default="replace"
        What to do with NaN/Inf input voxels: "replace" puts the median of the finite voxels in
        their place (counted and logged as a warning), "refuse" raises :class:`ValueError`. They
        never reach the output: a network output that is not finite raises ValueError.
    info : dict, optional
        Filled in with ``nonfinite`` (the number of NaN/Inf input voxels), ``nonfinite_action``
        ("replace", "refuse" or None when there were none) and, when replaced,
        ``nonfinite_value``.

    Returns
    -------
    denoised : ndarray of float32
        Same shape and intensity scale as `volume`. Peak memory is this array plus one batch of
        tiles and the network activations; the input is never copied whole.

    Raises
    ------
    ValueError
        If `volume` is not 3D real data matching the model, or `tile`/`overlap`/`device`/
        `precision` are invalid (the message names the argument); if it holds NaN/Inf and
        `nonfinite` is "refuse"; if it holds no finite value; if the network output is not finite.
    Cancelled
        If `cancel` returned True.
    napari_cryoden.models.ModelError
        If the model cannot be loaded.

    References
    ----------
    .. [1] van Gijn, D. (2019). Denoising Cryo-Electron Tomograms Using Deep Learning. Master's
       thesis, Utrecht University, sections 3.6-3.7 (UpsampleUnet48 GAN).

    Examples
    --------
    >>> import numpy as np
    >>> from napari_cryoden import denoise
    >>> tomo = np.random.default_rng(0).normal(size=(40, 64, 64)).astype(np.float32)
    >>> denoise(tomo, device="cpu").shape
    (40, 64, 64)
    """
    gen = iter_denoise(volume, model, tile=tile, overlap=overlap, device=device, precision=precision,
                       nonfinite=nonfinite, info=info)
    try:
        while True:
            if cancel is not None and cancel():
                gen.close()
                raise Cancelled("denoising cancelled")
            done, total = next(gen)
            if progress is not None:
                progress(done, total)
    except StopIteration as stop:
        return stop.value
