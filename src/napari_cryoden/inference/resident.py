"""Resident runs: the whole volume on the device (a GPU), moved there and back in slabs.

On CUDA a run holds the whole input and output on the GPU when both fit
(:func:`use_resident`): the input goes there once (:func:`to_device`), tiles are cut there
(:func:`gather_tile`), normalised and stitched there, the header statistics are taken there
(:func:`tensor_stats`), and the output comes back once (:func:`to_host`). Copies go through two
pinned host buffers, so reading or writing one slab on the host overlaps the copy of the other.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..io.mrc import clip_header_stats
from .tiling import Tile, reflect_indices, release_pages
from .timing import Stages

__all__ = [
    "COPY_SLAB_BYTES", "RESIDENT_FRACTION", "gather_tile", "resident_bytes", "tensor_stats", "to_device", "to_host",
    "use_resident",
]

#: On CUDA, a run holds the whole input and output on the GPU ("resident": tiles are cut,
#: normalised and stitched there, and the statistics are taken there) when both, as float32,
#: take at most this fraction of the free GPU memory; larger volumes go tile by tile from the host.
RESIDENT_FRACTION = 0.25
#: Bytes per slab of the host<->device copies of a resident run, through two pinned buffers so
#: that reading (or writing) one slab on the host overlaps the copy of the other.
COPY_SLAB_BYTES = 32 * 1024**2

def gather_tile(volume: torch.Tensor, tile: Tile) -> torch.Tensor:
    """One tile of `volume`, reflect-padded where needed, gathered where `volume` lives.

    The tensor counterpart of :func:`~napari_cryoden.inference.tiling.read_tile`: the same
    voxels (:func:`~napari_cryoden.inference.tiling.reflect_indices` at the borders).

    Parameters
    ----------
    volume : torch.Tensor, (Z, Y, X) (or any dimensionality matching `tile`), on any device
    tile : Tile
        Its axes may start before 0 or end past the volume (reflected there).

    Returns
    -------
    torch.Tensor
        Of ``tile.shape`` and `volume`'s dtype and device; a view of `volume` for an interior tile.
    """
    block = volume
    for axis, (ax, length) in enumerate(zip(tile.axes, volume.shape)):
        if ax.start >= 0 and ax.start + ax.size <= length:
            block = block.narrow(axis, ax.start, ax.size)
        else:
            index = torch.from_numpy(reflect_indices(ax.start, ax.size, length)).to(volume.device)
            block = block.index_select(axis, index)
    return block


_PINNED: dict[str, list[torch.Tensor]] = {}


def resident_bytes(n_voxels: int) -> int:
    """Device bytes that a resident run holds besides the forward passes: the input and the
    output as float32."""
    return 8 * int(n_voxels)


def use_resident(resident: bool | None, dev: torch.device, n_voxels: int) -> bool:
    """Whether a run of `n_voxels` is resident: `resident` when given, else on CUDA when
    :func:`resident_bytes` is at most :data:`RESIDENT_FRACTION` of the free GPU memory."""
    if resident is not None:
        return bool(resident)
    if dev.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(dev)
    return resident_bytes(n_voxels) <= RESIDENT_FRACTION * free


def _pinned_pair(n_floats: int) -> list[torch.Tensor]:
    """Two pinned float32 host buffers of at least `n_floats`, kept for the next run (pinning
    memory is slow)."""
    pair = _PINNED.get("pair")
    if pair is None or pair[0].numel() < n_floats:
        pair = _PINNED["pair"] = [torch.empty(n_floats, dtype=torch.float32, pin_memory=True) for _ in range(2)]
    return pair


def _slabs(shape: tuple[int, ...]) -> tuple[list[tuple[int, int]], int]:
    """Slabs ``(start, stop)`` along the first axis of about :data:`COPY_SLAB_BYTES` of float32
    each, and the floats in one index of that axis."""
    per = max(1, int(np.prod(shape[1:], dtype=np.int64)))
    step = max(1, COPY_SLAB_BYTES // (4 * per))
    return [(z, min(z + step, shape[0])) for z in range(0, shape[0], step)], per


def to_device(volume: np.ndarray, dev: torch.device, stages: Stages | None = None) -> torch.Tensor:
    """A float32 copy of `volume` on `dev`.

    On CUDA the volume goes in slabs of :data:`COPY_SLAB_BYTES` along its first axis through two
    pinned buffers: reading (and converting) one slab on the host overlaps the asynchronous copy
    of the other. A memory-mapped volume's pages are let go after each slab.

    Parameters
    ----------
    volume : ndarray or memmap of real dtype, at least 1D
        E.g. a (Z, Y, X) tomogram; any real dtype is converted to float32.
    dev : torch.device
    stages : Stages, optional
        Charges the host reads to "read" and the copies to "h2d".

    Returns
    -------
    torch.Tensor of float32
        Same shape as `volume`, on `dev`.
    """
    stages = stages or Stages()
    if dev.type != "cuda":
        with stages("read"):
            tensor = torch.from_numpy(np.array(volume, dtype=np.float32, copy=True)).to(dev)
            release_pages(volume)
        return tensor
    shape = tuple(volume.shape)
    dst = torch.empty(shape, dtype=torch.float32, device=dev)
    slabs, per = _slabs(shape)
    bufs, events = _pinned_pair((slabs[0][1] - slabs[0][0]) * per), [None, None]
    for i, (a, b) in enumerate(slabs):
        k = i % 2
        if events[k] is not None:
            events[k].synchronize()  # that buffer's last copy is done
        host = bufs[k][: (b - a) * per].view(b - a, *shape[1:])
        with stages("read"):
            np.copyto(host.numpy(), volume[a:b], casting="unsafe")
            release_pages(volume)
        with stages("h2d"):
            dst[a:b].copy_(host, non_blocking=True)
            events[k] = torch.cuda.Event()
            events[k].record()
    return dst


def to_host(tensor: torch.Tensor, out: np.ndarray, stages: Stages | None = None,
            on_slab: Callable[[int, int], None] | None = None) -> None:
    """Copy the float32 `tensor` into `out`.

    On CUDA in slabs along the first axis through two pinned buffers: copying one slab into `out`
    on the host overlaps the asynchronous device-to-host copy of the next. A memory-mapped
    `out`'s pages are let go after each slab (written pages stay in the page cache).

    Parameters
    ----------
    tensor : torch.Tensor of float32, at least 1D, on any device
    out : ndarray or memmap of float32
        Same shape as `tensor`; overwritten.
    stages : Stages, optional
        Charges the whole copy to "d2h".
    on_slab : callable(start: int, stop: int), optional
        Called as soon as ``out[start:stop]`` holds its rows, slab after slab in order (on every
        device), while the next slab is still being copied: e.g. to write them to a file
        (:class:`~napari_cryoden.io.mrc.MrcRowWriter`).
    """
    stages = stages or Stages()
    shape = tuple(tensor.shape)
    slabs, per = _slabs(shape)
    with stages("d2h"):
        if tensor.device.type != "cuda":
            host = tensor.numpy()
            for a, b in slabs if on_slab is not None else [(0, shape[0])]:
                np.copyto(out[a:b], host[a:b])
                release_pages(out)
                if on_slab is not None:
                    on_slab(a, b)
            return
        bufs = _pinned_pair((slabs[0][1] - slabs[0][0]) * per)
        pending: list[tuple] = []

        def drain() -> None:
            event, host, a, b = pending.pop(0)
            event.synchronize()
            np.copyto(out[a:b], host.numpy())
            release_pages(out)
            if on_slab is not None:
                on_slab(a, b)

        for i, (a, b) in enumerate(slabs):
            host = bufs[i % 2][: (b - a) * per].view(b - a, *shape[1:])
            host.copy_(tensor[a:b], non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            pending.append((event, host, a, b))
            if len(pending) == 2:  # the other buffer is drained while this one fills
                drain()
        while pending:
            drain()


def tensor_stats(tensor: torch.Tensor) -> tuple[float, float, float, float]:
    """``(min, max, mean, std)`` of a tensor where it lives (e.g. on the GPU), the mean and the
    population std accumulated in float64: the MRC header statistics, as
    :func:`~napari_cryoden.inference.stream.header_stats` takes them from a host array.

    Returns
    -------
    tuple of 4 float
        In the tensor's units (the output's intensity scale); the mean and std clipped to the
        float32 range of the header fields.
    """
    wide = tensor.to(torch.float64)
    var, mean = torch.var_mean(wide, correction=0)
    lo, hi = torch.aminmax(tensor)
    return clip_header_stats(lo, hi, mean, math.sqrt(max(float(var), 0.0)))
