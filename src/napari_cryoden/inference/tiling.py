"""Tile geometry for seam-free inference: pure numpy, no torch.

Each axis is planned on its own and the plans are combined. Along one axis of length ``L``, the
output is cut into cores of ``C`` voxels (the *tile* size); each core is computed from a network
input of ``C + 2m`` voxels, a margin of ``m`` voxels (the *overlap*) on each side, and only the
core of each network output is kept. Input starts sit at ``k * C - m``, i.e. at multiples of the
network stride in the frame of the volume reflect-padded by ``m``, so every tile sees the same
down-sampling grid as one pass over the whole padded volume; with a margin at least the network's
receptive-field radius the result equals that pass. Where a tile reaches past the volume, its
voxels are read with reflect padding (``... 2 1 | 0 1 2 ... L-1 | L-2 L-3 ...``), as in
Topaz-Denoise's padded tiles (Bepler et al. 2020, Nat. Commun. 11, 5208).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["AxisTile", "Tile", "plan_axis", "plan_tiles", "reflect_indices", "read_tile"]


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis.

    Attributes
    ----------
    start : int
        First input index of the tile (may be negative: reflect padding).
    size : int
        Tile length fed to the network (a multiple of the stride).
    crop : slice
        The part of the network output that is kept.
    out : slice
        Where the kept part goes in the output volume.
    """

    start: int
    size: int
    crop: slice
    out: slice


@dataclass(frozen=True)
class Tile:
    """A tile of a (Z, Y, X) or (Y, X) volume: one :class:`AxisTile` per axis."""

    axes: tuple[AxisTile, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    @property
    def crop(self) -> tuple[slice, ...]:
        return tuple(a.crop for a in self.axes)

    @property
    def out(self) -> tuple[slice, ...]:
        return tuple(a.out for a in self.axes)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def plan_axis(length: int, tile: int, overlap: int, stride: int = 1) -> list[AxisTile]:
    """Plan the tiles along one axis.

    Parameters
    ----------
    length : int
        Axis length in voxels (>= 1).
    tile : int
        Core (output) size of a tile, a multiple of `stride`. An axis no longer than one core gets
        a single tile.
    overlap : int
        Margin (voxels) of context read and discarded on each side of a core; ``2 * overlap``
        must be a multiple of `stride`. The network input is ``tile + 2 * overlap`` voxels.
    stride : int, default=1
        Total down-sampling factor of the network.

    Raises
    ------
    ValueError
        If the arguments break these constraints; the message names the argument to change.
    """
    if length < 1:
        raise ValueError(f"axis length must be >= 1, got {length}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if overlap < 0 or (2 * overlap) % stride:
        raise ValueError(f"overlap must be >= 0 with 2*overlap a multiple of the network stride {stride}, got {overlap}")
    if tile < stride or tile % stride:
        raise ValueError(f"tile must be a positive multiple of the network stride {stride}, got {tile}")
    if length <= tile:
        size = _round_up(length + 2 * overlap, stride)
        return [AxisTile(-overlap, size, slice(overlap, overlap + length), slice(0, length))]
    tiles = []
    for k in range(math.ceil(length / tile)):
        lo, hi = k * tile, min((k + 1) * tile, length)
        tiles.append(AxisTile(lo - overlap, tile + 2 * overlap, slice(overlap, overlap + hi - lo), slice(lo, hi)))
    return tiles


def plan_tiles(shape, tile, overlap, stride: int = 1) -> list[Tile]:
    """Plan tiles over a volume; `tile` and `overlap` are ints or per-axis tuples.

    Returns
    -------
    list of Tile
        In C order (last axis fastest). Their ``out`` slices partition the volume exactly.
    """
    nd = len(shape)
    tile = (tile,) * nd if np.isscalar(tile) else tuple(tile)
    overlap = (overlap,) * nd if np.isscalar(overlap) else tuple(overlap)
    if len(tile) != nd or len(overlap) != nd:
        raise ValueError(f"tile and overlap need {nd} values for a {nd}D volume, got {tile} and {overlap}")
    per_axis = [plan_axis(int(L), int(t), int(o), stride) for L, t, o in zip(shape, tile, overlap)]
    return [Tile(axes) for axes in itertools.product(*per_axis)]


def reflect_indices(start: int, size: int, length: int) -> np.ndarray:
    """Indices ``start .. start+size-1`` folded into ``[0, length)`` by reflection (no edge repeat)."""
    idx = np.arange(start, start + size)
    if length == 1:
        return np.zeros(size, dtype=np.intp)
    period = 2 * (length - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= length, period - idx, idx).astype(np.intp)


def read_tile(volume: np.ndarray, tile: Tile) -> np.ndarray:
    """Copy one tile out of `volume` (an ndarray or memmap), reflect-padded where needed.

    Only the tile's voxels are read: interior tiles are plain slices, border tiles gather by
    reflected indices. Returns a new float32 array of ``tile.shape``.
    """
    index = []
    fancy = False
    for ax, length in zip(tile.axes, volume.shape):
        if ax.start >= 0 and ax.start + ax.size <= length:
            index.append(slice(ax.start, ax.start + ax.size))
        else:
            index.append(reflect_indices(ax.start, ax.size, length))
            fancy = True
    if fancy:
        index = [np.arange(i.start, i.stop) if isinstance(i, slice) else i for i in index]
        block = volume[np.ix_(*index)]
    else:
        block = volume[tuple(index)]
    return np.array(block, dtype=np.float32, copy=True)
