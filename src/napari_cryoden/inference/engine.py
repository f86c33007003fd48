"""Tiled, seam-free inference of a denoising network over a tomogram, a micrograph or a stack.

:func:`iter_denoise` is a generator that yields ``(done, total)`` after every batch of tiles and
returns the denoised array; :func:`denoise` drives it with a progress callback and a cancel flag.
Only the widget layer knows about threads.

3D models take (Z, Y, X) tomograms. 2D models take (Y, X) images, and (N, Y, X) stacks slice by
slice (a tomogram too, slice by slice along Z). The tile geometry is chosen from the model's
receptive field and the free memory (:func:`plan_geometry`) unless given.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from ..device import is_out_of_memory, memory_budget, resolve_device, resolve_precision
from ..device import autocast as device_autocast
from ..models.registry import DEFAULT_MODEL, LoadedModel, load_model
from .normalize import robust_stats, robust_stats_tensor
from .tiling import (Geometry, Tile, auto_geometry, plan_tiles, read_tile, release_pages,
                     split_tile)
from .measure import DEFAULT_OVERLAP, activation_bytes_per_voxel, model_overlap, receptive_margin
from . import prefetch
from .resident import gather_tile, resident_bytes, tensor_stats, to_device, to_host, use_resident
from .timing import Stages

__all__ = [
    "DEFAULT_OVERLAP", "DEFAULT_TILE", "as_model", "drive", "NONFINITE_CHOICES", "Cancelled", "activation_bytes_per_voxel",
    "check_input", "check_nonfinite", "count_nonfinite", "denoise", "denoise_tiles", "input_mode", "iter_denoise", "memory_budget", "model_overlap",
    "plan_geometry", "receptive_margin", "resolve_device", "resolve_precision"
]

log = logging.getLogger(__name__)

#: Largest automatic tile core, as the edge of a cube: cores hold at most ``DEFAULT_TILE[d]**3``
#: voxels (a 2D core as many pixels), so that one tile does not take minutes on the CPU.
DEFAULT_TILE = {"cpu": 256, "cuda": 512}
#: Most tiles in one forward pass when the batch is automatic, and the input voxels per pass
#: that batching aims at: small tiles (2D slices) are batched, big 3D tiles are not (on the CPU
#: a batch only costs memory; on a GPU it fills the device).
MAX_BATCH = {"cpu": 8, "cuda": 64}
BATCH_VOXELS = {"cpu": 2**21, "cuda": 2**25}

#: CUDA settings of the forward pass, both off (``benchmarks/inference.py --breakdown``, H200,
#: torch 2.11, UpsampleUnet48 on 200 x 512 x 512 in bf16): channels-last memory
#: (``channels_last_3d``) made the 3D convolutions so slow that a run did not end in minutes, and
#: cuDNN's autotuner (``torch.backends.cudnn.benchmark``) took 23 s on the first run of a tile
#: shape to save 5 % (0.597 against 0.627 s) on the later ones.
CUDA_CHANNELS_LAST = False
CUDA_CUDNN_BENCHMARK = False

#: What :func:`iter_denoise` does with NaN/Inf input voxels.
NONFINITE_CHOICES = ("replace", "refuse")


def check_input(vol: np.ndarray, lm: LoadedModel, *, nonfinite: str = "replace", image_stack: bool = False) -> str:
    """Refuse, before any work, an input that no run can take.

    Parameters
    ----------
    vol : ndarray or memmap
        (Z, Y, X) tomogram, (Y, X) image or (N, Y, X) stack; not read.
    lm : LoadedModel
        Its ``ndim`` decides which inputs it takes (:func:`input_mode`).
    nonfinite : {"replace", "refuse"}, default="replace"
    image_stack : bool, default=False
        The (N, Y, X) input is a stack of 2D images.

    Returns
    -------
    {"volume", "stack", "image"}
        As :func:`input_mode`.

    Raises
    ------
    ValueError
        If `vol` does not hold real numbers, the model does not take its dimensionality, it is
        empty, or `nonfinite` is not one of :data:`NONFINITE_CHOICES`; the message names the
        problem.
    """
    if not (np.issubdtype(vol.dtype, np.number) or vol.dtype == np.bool_) or np.iscomplexobj(vol):
        raise ValueError(f"volume must hold real numbers, got dtype {vol.dtype}")
    mode = input_mode(vol.ndim, lm, image_stack=image_stack)
    if min(vol.shape) < 1:
        raise ValueError(f"volume is empty: shape {vol.shape}")
    if nonfinite not in NONFINITE_CHOICES:
        raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE_CHOICES)}, got {nonfinite!r}")
    return mode


def check_nonfinite(n_bad: int, nonfinite: str) -> None:
    """Refuse an input with `n_bad` NaN/Inf voxels when `nonfinite` is ``"refuse"``.

    Raises
    ------
    ValueError
        Giving their number and how to let them be replaced.
    """
    if n_bad and nonfinite == "refuse":
        raise ValueError(
            f"the input holds {n_bad} NaN/Inf voxels; fix the data or let them be replaced by the median "
            "(nonfinite='replace')"
        )


def count_nonfinite(volume: np.ndarray, *, chunk_bytes: int = 64 * 1024**2) -> int:
    """Number of NaN/Inf voxels in `volume`, read in slabs along the first axis (memmap-friendly:
    the pages of a memory-mapped volume are let go after each slab).

    Integer and boolean volumes are always finite and are not read.

    Parameters
    ----------
    volume : ndarray or memmap, any shape
    chunk_bytes : int, default=64 MiB
        Bytes read at a time.

    Returns
    -------
    int
    """
    if not np.issubdtype(volume.dtype, np.inexact):
        return 0
    if volume.ndim == 0:
        return int(not np.isfinite(volume))
    per_slab = max(1, volume[0].size * volume.dtype.itemsize)
    step = max(1, chunk_bytes // per_slab)
    total = 0
    for i in range(0, volume.shape[0], step):
        total += int(np.count_nonzero(~np.isfinite(volume[i : i + step])))
        release_pages(volume)
    return total


class Cancelled(Exception):
    """Raised by :func:`denoise` when its `cancel` callable returned True."""


def drive(
    gen: Generator[tuple[int, int], None, object],
    progress: Callable[[int, int], None] | None,
    cancel: Callable[[], bool] | None,
):
    """Run a generator of ``(done, total)`` (:func:`iter_denoise` and the like) to its end and
    return its value.

    `cancel` is polled before each step: True closes `gen` and raises :class:`Cancelled`.
    `progress` is called with each ``(done, total)``. Shared by :func:`denoise` and
    :func:`~napari_cryoden.inference.stream.denoise_file`.
    """
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


def as_model(model) -> LoadedModel:
    """`model` as a :class:`~napari_cryoden.models.registry.LoadedModel`.

    Parameters
    ----------
    model : str, path-like, LoadedModel or torch.nn.Module
        A registry name or card path (loaded with
        :func:`~napari_cryoden.models.registry.load_model`), a loaded model (returned as is), or
        a bare module (taken as a 3D model; its ``stride`` attribute, if any, sets the stride).

    Raises
    ------
    TypeError
        For anything else.
    napari_cryoden.models.ModelError
        If a named model cannot be loaded.
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, torch.nn.Module):
        return LoadedModel.from_module(model)
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise TypeError(f"model must be a name, a path, a LoadedModel or a torch Module, got {type(model).__name__}")


# ------------------------------------------------------------------------------------------
# Which data goes to which model


def _models_of_ndim(ndim: int) -> list[str]:
    from ..models.registry import ARCHITECTURES, available_models

    return [name for name, card in available_models().items()
            if card.get("architecture") in ARCHITECTURES and ARCHITECTURES[card["architecture"]].ndim == ndim]


def input_mode(data_ndim: int, model: LoadedModel, *, image_stack: bool = False) -> str:
    """How `model` is applied to data of `data_ndim` dimensions.

    Returns
    -------
    {"volume", "image", "stack"}
        "volume": a 3D model on a (Z, Y, X) tomogram; "image": a 2D model on a (Y, X) image;
        "stack": a 2D model on each (Y, X) slice of an (N, Y, X) stack (or tomogram) in turn.

    Raises
    ------
    ValueError
        One line naming the mismatch: a 3D model with a 2D image or a stack of 2D images
        (`image_stack`, e.g. a ``.mrcs`` file), or data of another dimensionality.
    """
    name = model.name
    if model.ndim == 3:
        if data_ndim == 3 and not image_stack:
            return "volume"
        if data_ndim in (2, 3):
            what = "a 2D image" if data_ndim == 2 else "a stack of 2D images (.mrcs)"
            others = _models_of_ndim(2)
            hint = (f"choose a 2D micrograph model ({', '.join(others)})" if others
                    else "no 2D micrograph model is available yet")
            raise ValueError(f"model {name!r} is a 3D tomogram model and the input is {what}; {hint}")
        raise ValueError(f"model {name!r} expects 3D input, got a {data_ndim}D array")
    if model.ndim == 2:
        if data_ndim == 2:
            return "image"
        if data_ndim == 3:
            return "stack"
        raise ValueError(f"model {name!r} expects 2D images or (N, Y, X) stacks of them, got a {data_ndim}D array")
    raise ValueError(f"model {name!r} has {model.ndim} spatial dimensions; only 2D and 3D models are supported")


# ------------------------------------------------------------------------------------------
# Geometry

@dataclass(frozen=True)
class Plan:
    """What :func:`plan_geometry` decided.

    Attributes
    ----------
    mode : {"volume", "image", "stack"}
        See :func:`input_mode`.
    geometry : Geometry
        Per-axis tile core, margin and stride of the (Z, Y, X) working view (a 2D image is
        seen as one slice), and the batch size.
    shape : tuple of int
        Shape of that working view.
    """

    mode: str
    geometry: Geometry
    shape: tuple[int, ...]

    @property
    def waste(self) -> float:
        """Computed voxels / output voxels (:func:`~napari_cryoden.inference.tiling.waste_ratio`)."""
        return self.geometry.waste(self.shape)

    @property
    def n_tiles(self) -> int:
        return self.geometry.n_tiles(self.shape)


def _model_axes(value, model_ndim: int, what: str) -> tuple[int, ...]:
    values = (value,) * model_ndim if np.isscalar(value) else tuple(value)
    if len(values) != model_ndim:
        raise ValueError(f"{what} needs 1 or {model_ndim} values for a {model_ndim}D model, got {value}")
    return tuple(int(v) for v in values)


def plan_geometry(
    model: LoadedModel,
    shape: Sequence[int],
    device: torch.device,
    precision: str = "fp32",
    *,
    tile: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    memory_bytes: int | None = None,
    image_stack: bool = False,
    whole_first_axis: bool = False,
) -> Plan:
    """Choose the tile geometry for data of `shape` (2D or 3D) and `model`.

    Unset arguments are automatic. `overlap`: :func:`model_overlap`. `tile`: the per-axis cores
    that minimise the computed/output voxel ratio while one forward pass fits in `memory_bytes`
    (default :func:`memory_budget`) by :func:`activation_bytes_per_voxel`, with at most
    ``DEFAULT_TILE[device]**3`` core voxels (see
    :func:`~napari_cryoden.inference.tiling.auto_geometry`). `batch_size`: as many tiles as fit
    in the same memory, at most :data:`MAX_BATCH`, and no more than reach :data:`BATCH_VOXELS`
    voxels per pass. A given `tile` is used as is (an axis shorter than it gets one tile
    spanning it).

    `whole_first_axis` (3D models only) is for a slab read with its context slices: one tile
    spans the first axis, with no margin along it (the slab's first and last slices are the
    context; outputs within the margin of them are not exact), and the given or automatic
    `tile` applies to Y and X.

    Parameters
    ----------
    model : LoadedModel
    shape : sequence of int
        The data's shape: (Z, Y, X), (Y, X) or (N, Y, X), in voxels.
    device : torch.device
    precision : str, default="fp32"
        A resolved precision; sets the activation bytes per voxel.
    tile, overlap : int or sequence of int, optional
        Core and context per side, in voxels, per spatial axis of the model.
    batch_size : int, optional
    memory_bytes : int, optional
        Bytes one forward pass may use.
    image_stack, whole_first_axis : bool
        See above and :func:`input_mode`.

    Returns
    -------
    Plan
        The mode, the geometry (cores, margins, strides, batch) of the (Z, Y, X) working view,
        and that view's shape.

    Raises
    ------
    ValueError
        For a data/model mismatch (:func:`input_mode`) or a bad `tile`/`overlap`/`batch_size`.
    """
    shape = tuple(int(n) for n in shape)
    mode = input_mode(len(shape), model, image_stack=image_stack)
    s = max(1, model.stride)
    kind = "cuda" if device.type == "cuda" else "cpu"
    if overlap is None:
        margins = model_overlap(model)
    else:
        margins = _model_axes(overlap, model.ndim, "overlap")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    view = shape if mode != "image" else (1, *shape)
    if model.ndim == 3 and whole_first_axis:
        overlap3, stride3, fixed = (0, *margins[1:]), (s, s, s), (-(-view[0] // s) * s, None, None)
    elif model.ndim == 3:
        overlap3, stride3, fixed = margins, (s, s, s), None
    else:  # slice by slice: the slice axis has cores of 1 and no context
        overlap3, stride3, fixed = (0, *margins), (1, s, s), (1, None, None)
    if tile is not None:
        cores = _model_axes(tile, model.ndim, "tile")
        if any(c < 1 for c in cores):
            raise ValueError(f"tile must be a positive multiple of the network stride {s}, got {tile}")
        cores3 = cores if model.ndim == 3 else (1, *cores)
        if fixed is not None:
            cores3 = tuple(f if f is not None else c for f, c in zip(fixed, cores3))
        geometry = Geometry(tile=cores3, overlap=overlap3, stride=stride3, batch=int(batch_size or 1))
        # checks the constraints (multiples of the stride) with messages naming the argument
        plan_tiles(view, geometry.tile, geometry.overlap, geometry.stride)
        return Plan(mode, geometry, view)
    budget = memory_bytes if memory_bytes is not None else memory_budget(device)
    per_voxel = activation_bytes_per_voxel(model, precision)
    geometry = auto_geometry(
        view, overlap3, stride3, max_tile_voxels=int(budget / per_voxel),
        max_core_voxels=DEFAULT_TILE[kind] ** 3,
        max_batch=int(batch_size) if batch_size else MAX_BATCH[kind], batch_voxels=BATCH_VOXELS[kind],
        fixed_tile=fixed,
    )
    if batch_size:
        geometry = Geometry(geometry.tile, geometry.overlap, geometry.stride, int(batch_size))
    plan_tiles(view, geometry.tile, geometry.overlap, geometry.stride)  # checks the overlap
    return Plan(mode, geometry, view)


# ------------------------------------------------------------------------------------------
# The tile loop


def _nonfinite_output(center: float, scale: float) -> ValueError:
    return ValueError(
        "the network produced NaN/Inf values; the input's intensities (median "
        f"{center:.3g}, spread {scale:.3g}) may be out of the range float32 can handle"
    )


class _Runner:
    """Forward passes over tiles, with normalisation, stitching and the out-of-memory retry.

    Tiles are read from the host array `view`, normalised there, copied to the device, and the
    cores are copied back and stitched into the host array `out`.
    """

    def __init__(self, net, view, out, plan: Plan, dev, autocast, memory_format, center, scale, n_bad,
                 stages: Stages | None = None):
        self.net, self.view, self.out, self.plan = net, view, out, plan
        self.dev, self.autocast, self.memory_format = dev, autocast, memory_format
        self.center, self.scale, self.n_bad = center, scale, n_bad
        self.stages = stages or Stages()
        self.two_d = plan.mode != "volume"
        self.split_depth = 0  # after running out of memory, later tiles are cut this many times
        self.splits = 0
        self.prefetcher: prefetch.Prefetcher | None = None

    def _read(self, t: Tile) -> np.ndarray:
        block = read_tile(self.view, t)
        if self.n_bad:
            block[~np.isfinite(block)] = self.center
        block -= self.center
        block /= self.scale
        return block

    def _host_batch(self, tiles: list[Tile]) -> np.ndarray:
        """The normalised tiles as one (B, 1, Z, Y, X) float32 batch on the host ((B, 1, Y, X) for 2D)."""
        x = np.stack([self._read(t) for t in tiles])[:, None]  # (B, 1, Z, Y, X)
        release_pages(self.view)  # a memory-mapped input's pages are not needed during the forward
        if self.two_d:
            x = x[:, :, 0]  # (B, 1, Y, X): one slice per tile
        return x

    def read_ahead(self, tiles: list[Tile]) -> None:
        """Start reading the batch of `tiles` on a background thread (on :data:`~napari_cryoden.
        inference.prefetch.PREFETCH_DEVICES`), to be taken by the next forward pass over them."""
        if self.dev.type not in prefetch.PREFETCH_DEVICES:
            return
        if self.prefetcher is None:
            self.prefetcher = prefetch.Prefetcher(self._host_batch, self.dev)
        self.prefetcher.ahead(tiles)

    def close(self) -> None:
        """Stop reading ahead."""
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None

    def _inputs(self, tiles: list[Tile]) -> torch.Tensor:
        """The normalised tiles as one (B, 1, Z, Y, X) batch on the device ((B, 1, Y, X) for 2D):
        read ahead, or read now."""
        if self.prefetcher is not None:
            with self.stages("read"):  # waiting for the background read
                xt = self.prefetcher.take(tiles)
            if xt is not None:
                return xt.contiguous(memory_format=self.memory_format)
        with self.stages("read"):
            x = self._host_batch(tiles)
        with self.stages("h2d"):
            return torch.from_numpy(x).to(self.dev, non_blocking=True).contiguous(memory_format=self.memory_format)

    def _store(self, tiles: list[Tile], y: torch.Tensor) -> None:
        """Put the cores of the network output `y` back in the input's scale, into the output."""
        with self.stages("d2h"):
            pred = y[:, 0].float().cpu().numpy()
        with self.stages("stitch"):
            if self.two_d:
                pred = pred[:, None]
            for t, p in zip(tiles, pred):
                core = p[t.crop] * self.scale + self.center
                if not np.isfinite(core).all():
                    raise _nonfinite_output(self.center, self.scale)
                self.out[t.out] = core
            release_pages(self.out)

    def _forward(self, tiles: list[Tile]) -> None:
        xt = self._inputs(tiles)
        # Grad mode is thread-global: enter inference mode per batch, never across a yield.
        with self.stages("network"), torch.inference_mode(), self.autocast:
            y = self.net(xt)
        del xt
        with torch.inference_mode():
            self._store(tiles, y)

    def _pieces(self, t: Tile, depth: int) -> list[Tile]:
        pieces = [t]
        g = self.plan.geometry
        for _ in range(depth):
            pieces = [p for q in pieces for p in split_tile(q, g.overlap, g.stride)]
        return pieces

    def _try(self, tiles: list[Tile]) -> bool:
        try:
            self._forward(tiles)
            return True
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_out_of_memory(exc):
                raise
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
        return False

    def run_tile(self, t: Tile) -> None:
        """One tile, cut in halves along every axis (repeatedly) while memory runs out."""
        pending = [(p, self.split_depth) for p in self._pieces(t, self.split_depth)]
        while pending:
            piece, depth = pending.pop(0)
            if self._try([piece]):
                continue
            smaller = split_tile(piece, self.plan.geometry.overlap, self.plan.geometry.stride)
            if len(smaller) == 1:
                raise MemoryError(
                    f"out of memory on a tile of {'x'.join(map(str, piece.shape))} voxels, the smallest "
                    "possible; free memory or use another device"
                )
            self.splits += 1
            self.split_depth = max(self.split_depth, depth + 1)
            log.warning("out of memory on a tile of %s voxels; retrying in %d smaller tiles",
                        "x".join(map(str, piece.shape)), len(smaller))
            pending[:0] = [(p, depth + 1) for p in smaller]

    def run_batch(self, batch: list[Tile]) -> int:
        """A batch of tiles; returns the batch size to use from now on."""
        if self.split_depth == 0 and len({t.shape for t in batch}) == 1 and len(batch) > 1:
            if self._try(batch):
                return len(batch)
            log.warning("out of memory on a batch of %d tiles; going on one tile at a time", len(batch))
            for t in batch:
                self.run_tile(t)
            return 1
        for t in batch:
            self.run_tile(t)
        return len(batch) if self.split_depth == 0 else 1


class _ResidentRunner(_Runner):
    """A :class:`_Runner` whose input and output live on the device.

    `view` is the normalised input and `out` the output, both float32 tensors on the device:
    tiles are gathered (reflect-padded) and stitched there, so nothing crosses to the host per tile.
    """

    def _inputs(self, tiles: list[Tile]) -> torch.Tensor:
        with self.stages("read"):
            x = torch.stack([gather_tile(self.view, t) for t in tiles])[:, None]
            if self.two_d:
                x = x[:, :, 0]
            return x.contiguous(memory_format=self.memory_format)

    def _store(self, tiles: list[Tile], y: torch.Tensor) -> None:
        with self.stages("stitch"):
            pred = y[:, 0].float()
            if self.two_d:
                pred = pred[:, None]
            finite = []
            for t, p in zip(tiles, pred):
                core = p[t.crop] * self.scale + self.center
                finite.append(torch.isfinite(core).all())
                self.out[t.out] = core
            if not bool(torch.stack(finite).all()):
                raise _nonfinite_output(self.center, self.scale)


def _make_runner(lm: LoadedModel, view, out_view, plan: Plan, dev: torch.device, prec: str,
                 center: float, scale: float, n_bad: int, *, stages: Stages | None = None,
                 resident: bool = False) -> _Runner:
    """The model on `dev` in the memory format and autocast of `prec`, wrapped in a :class:`_Runner`
    (shared by :func:`iter_denoise` and :func:`denoise_tiles`, so both compute alike), or in a
    :class:`_ResidentRunner` when `view` and `out_view` are tensors on `dev`."""
    net = lm.module.to(dev).eval()
    channels_last = prec == "bf16" if dev.type == "cpu" else (CUDA_CHANNELS_LAST and prec != "fp32")
    if channels_last:
        memory_format = torch.channels_last_3d if plan.mode == "volume" else torch.channels_last
    else:
        memory_format = torch.contiguous_format
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = CUDA_CUDNN_BENCHMARK
    net = net.to(memory_format=memory_format)
    autocast = device_autocast(dev, prec)
    cls = _ResidentRunner if resident else _Runner
    return cls(net, view, out_view, plan, dev, autocast, memory_format, center, scale, n_bad, stages)


class _Cores:
    """Stands in for the output array of a :class:`_Runner`: keeps each stitched core and its place."""

    def __init__(self):
        self.pieces: list[tuple[tuple[slice, ...], np.ndarray]] = []

    def __setitem__(self, where: tuple[slice, ...], core: np.ndarray) -> None:
        self.pieces.append((tuple(where), np.array(core, dtype=np.float32)))


def denoise_tiles(
    volume: np.ndarray,
    model: str | LoadedModel | torch.nn.Module,
    plan: Plan,
    tiles: Sequence[Tile],
    stats: tuple[float, float],
    *,
    device: str = "cpu",
    precision: str = "fp32",
    replace_nonfinite: bool = False,
) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """Denoise some of the tiles of a run of :func:`iter_denoise`: one part of a run split over
    processes or machines (:mod:`napari_cryoden.inference.cluster`).

    The caller makes the plan (:func:`plan_geometry`, then
    :func:`~napari_cryoden.inference.tiling.plan_tiles` of ``plan.shape``) and the statistics
    (:func:`~napari_cryoden.inference.normalize.robust_stats` of the whole input) once. Given a
    run of consecutive tiles starting at a multiple of ``plan.geometry.batch``, the tiles are
    passed through the network in the same batches as :func:`iter_denoise`, so with the same
    device and precision the cores are bit-identical to that run's output there.

    Parameters
    ----------
    volume : ndarray or memmap of real dtype
        The whole input, as given to :func:`iter_denoise`; only the tiles' windows are read.
    model : str, LoadedModel or torch.nn.Module
    plan : Plan
        The plan of the whole run.
    tiles : sequence of Tile
        The tiles to compute, in the order of the run.
    stats : (float, float)
        ``(center, scale)`` of the whole input.
    device, precision : str
        As resolved for the whole run (:func:`resolve_device`, :func:`resolve_precision`).
    replace_nonfinite : bool, default=False
        The input holds NaN/Inf voxels, which are replaced by `center` (``nonfinite="replace"``).

    Returns
    -------
    list of (tuple of slice, ndarray of float32)
        Each core and where it goes in the working view of ``plan.shape`` (a 2D image is seen as
        ``(1, Y, X)``), in the input's intensity scale. A tile cut in pieces after running out of
        memory gives one entry per piece.

    Raises
    ------
    ValueError
        For a data/model mismatch, a bad `stats`, `device` or `precision`, or a network output
        that is not finite.
    MemoryError
        If even the smallest tile does not fit in memory.
    """
    vol = volume if isinstance(volume, np.ndarray) else np.asarray(volume)
    lm = as_model(model)
    view = vol if plan.mode != "image" else vol[None]
    if input_mode(vol.ndim, lm) != plan.mode or tuple(view.shape) != tuple(plan.shape):
        raise ValueError(f"the plan is for {plan.mode} data of shape {plan.shape}, got shape {vol.shape}")
    center, scale = (float(v) for v in stats)
    if not (math.isfinite(center) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"stats must be a finite center and a positive scale, got {stats}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    cores = _Cores()
    runner = _make_runner(lm, view, cores, plan, dev, prec, center, scale, int(bool(replace_nonfinite)))
    tiles = list(tiles)
    done, batch = 0, plan.geometry.batch
    while done < len(tiles):
        chunk = tiles[done : done + batch]
        batch = runner.run_batch(chunk)
        done += len(chunk)
        release_pages(vol)
    return cores.pieces


@dataclass(frozen=True)
class RunSetup:
    """What :func:`prepare_run` decided before the first tile of a run."""

    plan: Plan
    device: torch.device
    precision: str
    n_bad: int
    center: float
    scale: float
    #: The input as float32 on the device, for a resident run; else None.
    device_volume: torch.Tensor | None = None

    def report(self, nonfinite: str, n_tiles: int, info: dict | None = None) -> dict:
        """What the run tells its caller before the first tile, added to `info` (and returned):
        ``nonfinite``, ``nonfinite_action`` and, when voxels are replaced, ``nonfinite_value``
        (also logged as a warning), the plan's ``mode``, ``tile``, ``overlap``, ``batch``,
        ``waste`` and ``tiles``, and ``precision``, ``device`` and ``resident``. Shared by
        :func:`iter_denoise` and the cluster's split runs, so both report alike."""
        info = {} if info is None else info
        g = self.plan.geometry
        info.update(nonfinite=self.n_bad, nonfinite_action=nonfinite if self.n_bad else None)
        if self.n_bad:
            info["nonfinite_value"] = self.center
            log.warning("replacing %d NaN/Inf voxels of the input by the median %g before denoising",
                        self.n_bad, self.center)
        info.update(mode=self.plan.mode, tile=g.tile, overlap=g.overlap, batch=g.batch, waste=self.plan.waste,
                    tiles=n_tiles, precision=self.precision, device=self.device.type,
                    resident=self.device_volume is not None)
        return info


def prepare_run(
    vol: np.ndarray,
    lm: LoadedModel,
    *,
    tile=None,
    overlap=None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    nonfinite: str = "replace",
    image_stack: bool = False,
    memory_bytes: int | None = None,
    stats: tuple[float, float] | None = None,
    whole_first_axis: bool = False,
    resident: bool = False,
    stages: Stages | None = None,
) -> RunSetup:
    """The checks and decisions of a run before its first tile, shared by :func:`iter_denoise`
    and the cluster's planning task: the input must be real and non-empty data the model takes,
    the device and precision are resolved, the tile plan is made (:func:`plan_geometry`), the
    NaN/Inf voxels are counted (and refused when `nonfinite` is "refuse") and the normalisation
    statistics are taken (the volume's robust statistics unless `stats` is given).
    :meth:`RunSetup.report` says what was decided.

    `resident` (True, False, or None for automatic: on CUDA when the float32 input and output
    take at most :data:`~napari_cryoden.inference.resident.RESIDENT_FRACTION` of the free GPU
    memory) copies the input to the device first (:func:`~napari_cryoden.inference.resident.
    to_device`) and counts the NaN/Inf voxels and takes the statistics there; the memory one
    forward pass may use is then the budget less
    :func:`~napari_cryoden.inference.resident.resident_bytes`.

    Parameters
    ----------
    vol : ndarray or memmap of real dtype
        (Z, Y, X) tomogram, (Y, X) micrograph or (N, Y, X) stack, as for :func:`denoise`.
    lm : LoadedModel
    tile, overlap, device, precision, batch_size, nonfinite, image_stack, memory_bytes, stats, whole_first_axis
        As for :func:`iter_denoise`.
    resident : bool or None, default=False
        See above.
    stages : Stages, optional
        Charges the upload to "read"/"h2d" and the NaN/Inf count and statistics to "stats".

    Returns
    -------
    RunSetup
        The plan, device, precision, NaN/Inf count, ``(center, scale)`` in the input's intensity
        units, and the input on the device for a resident run.

    Raises
    ------
    ValueError
        As :func:`iter_denoise`.
    """
    check_input(vol, lm, nonfinite=nonfinite, image_stack=image_stack)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    stages = stages or Stages()
    stages.device = dev
    resident = use_resident(resident, dev, vol.size)
    if resident and memory_bytes is None and tile is None:
        memory_bytes = max(memory_budget(dev) - resident_bytes(vol.size), 1)
    plan = plan_geometry(lm, vol.shape, dev, prec, tile=tile, overlap=overlap, batch_size=batch_size,
                         memory_bytes=memory_bytes, image_stack=image_stack, whole_first_axis=whole_first_axis)
    dvol = to_device(vol, dev, stages) if resident else None
    with stages("stats"):
        n_bad = count_nonfinite(vol) if dvol is None else int((~torch.isfinite(dvol)).sum())
    check_nonfinite(n_bad, nonfinite)
    if stats is None:
        with stages("stats"):
            if dvol is None:
                center, scale = robust_stats(vol)
                release_pages(vol)
            else:
                center, scale = robust_stats_tensor(dvol)
    else:
        center, scale = (float(v) for v in stats)
        if not (math.isfinite(center) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"stats must be a finite center and a positive scale, got {stats}")
    return RunSetup(plan, dev, prec, n_bad, center, scale, dvol)


def iter_denoise(
    volume: np.ndarray,
    model: str | LoadedModel | torch.nn.Module = DEFAULT_MODEL,
    *,
    tile: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] | None = None,
    device: str = "auto",
    precision: str = "auto",
    out: np.ndarray | None = None,
    batch_size: int | None = None,
    nonfinite: str = "replace",
    info: dict | None = None,
    image_stack: bool = False,
    memory_bytes: int | None = None,
    stats: tuple[float, float] | None = None,
    whole_first_axis: bool = False,
    resident: bool | None = None,
    timings: dict | None = None,
    on_rows: Callable[[int, int], None] | None = None,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Denoise tile by tile, yielding ``(tiles_done, tiles_total)``; returns the output array.

    Same parameters as :func:`denoise`, plus `out` (a preallocated float32 array or memmap of the
    input's shape to write into), `batch_size` (tiles per forward pass, default automatic),
    `memory_bytes` (budget of one forward pass for the automatic geometry, default a fraction
    of the free memory) and `stats` (``(center, scale)`` to normalise with instead of the
    volume's own robust statistics, e.g. those of a whole tomogram when denoising a slab of it)
    and `whole_first_axis` (one tile along the first axis and no margin on it: see
:func:`plan_geometry`).

    `resident` holds the whole input and output on the device (None: automatic, on CUDA when
    they fit; see :func:`prepare_run`): tiles are cut, normalised and stitched there, the
    statistics are taken there, and the output comes back to the host once, in slabs. On the CPU
    the result is that of the tile-by-tile path. `info` then also gets ``header_stats``,
    ``(min, max, mean, std)`` of the output.

    `timings`, a dict, receives the seconds spent per stage (:data:`~napari_cryoden.inference.
    timing.STAGES`); the CUDA device is synchronised around each stage, for benchmarks.

    `on_rows(start, stop)` is called when rows ``[start, stop)`` of the output along its first
    axis are final, in order, covering the whole output before the generator returns: a resident
    run calls it slab after slab as the output comes back from the device, so the caller can
    write those rows to a file while the next ones come back
    (:class:`~napari_cryoden.io.mrc.MrcRowWriter`); a tile-by-tile run calls it once at the end.

    Yields
    ------
    (int, int)
        Tiles done and tiles in all, from ``(0, total)`` to ``(total, total)``.

    Returns
    -------
    ndarray of float32
        `out` (or a new array) of the input's shape, in the input's intensity scale.

    Raises
    ------
    ValueError, MemoryError
        As :func:`denoise`.
    """
    vol = volume
    if not isinstance(vol, np.ndarray):
        vol = np.asarray(vol)
    lm = as_model(model)
    if out is not None and out.shape != vol.shape:
        raise ValueError(f"out has shape {out.shape}, expected {vol.shape}")
    stages = Stages(timings)
    run = prepare_run(vol, lm, tile=tile, overlap=overlap, device=device, precision=precision,
                      batch_size=batch_size, nonfinite=nonfinite, image_stack=image_stack,
                      memory_bytes=memory_bytes, stats=stats, whole_first_axis=whole_first_axis,
                      resident=resident, stages=stages)
    plan, dev, prec, n_bad, center, scale = run.plan, run.device, run.precision, run.n_bad, run.center, run.scale
    g = plan.geometry
    tiles = plan_tiles(plan.shape, g.tile, g.overlap, g.stride)
    run.report(nonfinite, len(tiles), info)
    if out is None:
        out = np.empty(vol.shape, dtype=np.float32)

    dvol = run.device_volume
    if dvol is not None:
        with stages("stats"):
            if n_bad:
                dvol[~torch.isfinite(dvol)] = center
            dvol.sub_(center).div_(scale)
        view = dvol if plan.mode != "image" else dvol[None]
        dout = torch.empty_like(dvol)
        out_view = dout if plan.mode != "image" else dout[None]
    else:
        view = vol if plan.mode != "image" else vol[None]
        out_view = out if plan.mode != "image" else out[None]
    runner = _make_runner(lm, view, out_view, plan, dev, prec, center, scale, n_bad, stages=stages,
                          resident=dvol is not None)
    total = len(tiles)
    yield 0, total
    done, batch = 0, g.batch
    try:
        while done < total:
            chunk = tiles[done : done + batch]
            if dvol is None:  # the next batch is read while this one runs (on a GPU)
                runner.read_ahead(chunk)
                runner.read_ahead(tiles[done + len(chunk) : done + len(chunk) + batch])
            batch = runner.run_batch(chunk)
            done += len(chunk)
            release_pages(vol)
            release_pages(out)
            if info is not None:
                info["oom_splits"] = runner.splits
            yield done, total
    finally:
        runner.close()
    if dvol is not None:
        del view, dvol
        with stages("stitch"):
            if info is not None:
                info["header_stats"] = tensor_stats(dout)
        to_host(dout, out, stages, on_slab=on_rows)
    elif on_rows is not None:
        on_rows(0, out.shape[0])
    return out


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
    batch_size: int | None = None,
    image_stack: bool = False,
    memory_bytes: int | None = None,
) -> np.ndarray:
    """Denoise a tomogram, micrograph or stack tile by tile with a pretrained network, without seams.

    The data is normalised with robust statistics of the whole input (median and IQR / 1.349,
    see :func:`~napari_cryoden.inference.normalize.robust_stats`), cut into overlapping tiles
    whose offsets follow the network stride, reflect-padded at the borders, passed through the
    network, cropped to the tile cores and stitched. The result is put back in the input's
    intensity scale.

    Parameters
    ----------
    volume : ndarray of real dtype
        (Z, Y, X) tomogram for a 3D model; (Y, X) image or (N, Y, X) stack for a 2D model,
        which denoises a stack slice by slice. A memmap is read tile by tile; never modified.
        Any size, smaller than one tile included.
    model : str, LoadedModel or torch.nn.Module, default="upsampleunet48-gan"
        Registry name, card path, loaded model, or a bare module (taken as 3D; its ``stride``
        attribute, if any, sets the tile alignment).
    tile : int or tuple of int, optional
        Edge of the block of output each tile produces (its core), per spatial axis of the
        model, in voxels, a multiple of the network stride. Default: automatic, the cores that
        minimise the computed/output voxel ratio while a tile fits in memory
        (:func:`plan_geometry`); axes shorter than a tile get one tile spanning them.
    overlap : int or tuple of int, optional
        Voxels of context read (and discarded) on each side of every core, so the network sees
        ``tile + 2 * overlap`` voxels per axis. Default: the model card's ``overlap``, else the
        measured receptive field (:func:`receptive_margin`); for UpsampleUnet48 24 voxels cover
        its stride-aligned receptive field of 23. ``2 * overlap`` must be a multiple of the stride.
    device : {"auto", "cpu", "cuda"}, default="auto"
        "auto" takes CUDA when PyTorch sees a GPU.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast dtype of the forward pass. "auto" is bf16 (with channels-last memory) on CPUs
        with native bf16 and on recent GPUs, fp16 on older GPUs, else fp32. The output is float32.
    progress : callable(done: int, total: int), optional
        Called with the number of tiles done and the total, from 0 to total.
    cancel : callable() -> bool, optional
        Polled before each batch of tiles; True stops the run with :class:`Cancelled`.
    nonfinite : {"replace", "refuse"}, default="replace"
        What to do with NaN/Inf input voxels: "replace" puts the median of the finite voxels in
        their place (counted and logged as a warning), "refuse" raises :class:`ValueError`. They
        never reach the output: a network output that is not finite raises ValueError.
    info : dict, optional
        Filled in with ``nonfinite`` (the number of NaN/Inf input voxels), ``nonfinite_action``
        ("replace", "refuse" or None when there were none), ``nonfinite_value`` when replaced,
        and the plan: ``mode``, ``tile``, ``overlap``, ``batch``, ``waste``, ``tiles``,
        ``device``, ``precision``, ``oom_splits``.
    batch_size : int, optional
        Tiles per forward pass; default automatic.
    image_stack : bool, default=False
        The (N, Y, X) input is a stack of 2D images (a ``.mrcs`` file): a 3D model refuses it.
    memory_bytes : int, optional
        Memory one forward pass may use when the geometry is automatic; default a fraction of
        the free memory (:func:`memory_budget`).

    Returns
    -------
    denoised : ndarray of float32
        Same shape and intensity scale as `volume`. Peak memory is this array plus one batch of
        tiles and the network activations; the input is never copied whole. When the device
        runs out of memory, the tile is cut in halves and tried again (logged as a warning).

    Raises
    ------
    ValueError
        If `volume` is not real data of a dimensionality the model takes (one line naming the
        mismatch), or `tile`/`overlap`/`device`/`precision` are invalid (the message names the
        argument); if it holds NaN/Inf and `nonfinite` is "refuse"; if it holds no finite value;
        if the network output is not finite.
    MemoryError
        If even the smallest tile does not fit in memory.
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
                       nonfinite=nonfinite, info=info, batch_size=batch_size, image_stack=image_stack,
                       memory_bytes=memory_bytes)
    return drive(gen, progress, cancel)
