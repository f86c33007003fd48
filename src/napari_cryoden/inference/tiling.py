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
import mmap
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AxisTile", "Geometry", "Tile", "auto_geometry", "computed_voxels", "plan_axis", "plan_tiles",
    "reflect_indices", "read_tile", "release_pages", "split_tile", "waste_ratio",
]


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


def _per_axis(value, nd: int, what: str) -> tuple[int, ...]:
    """An int or a sequence of `nd` ints as a tuple of `nd` ints."""
    values = (value,) * nd if np.isscalar(value) else tuple(value)
    if len(values) != nd:
        raise ValueError(f"{what} needs {nd} values for a {nd}D volume, got {value}")
    return tuple(int(v) for v in values)


def plan_tiles(shape, tile, overlap, stride=1) -> list[Tile]:
    """Plan tiles over a volume; `tile`, `overlap` and `stride` are ints or per-axis tuples.

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
    stride = _per_axis(stride, nd, "stride")
    per_axis = [plan_axis(int(L), int(t), int(o), s) for L, t, o, s in zip(shape, tile, overlap, stride)]
    return [Tile(axes) for axes in itertools.product(*per_axis)]


def computed_voxels(shape, tile, overlap, stride=1) -> int:
    """Voxels the network computes for the plan of :func:`plan_tiles` (every tile's input, summed).

    The plan is a product of per-axis plans, so this is the product of the per-axis sums of
    tile sizes; no tile list is built.
    """
    nd = len(shape)
    tile, overlap, stride = (_per_axis(v, nd, w) for v, w in ((tile, "tile"), (overlap, "overlap"), (stride, "stride")))
    return math.prod(sum(t.size for t in plan_axis(int(L), t, o, s)) for L, t, o, s in zip(shape, tile, overlap, stride))


def waste_ratio(shape, tile, overlap, stride=1) -> float:
    """Computed voxels / output voxels of a tile plan (1.0 = no overlap, no padding).

    The network computes every tile's full input (core plus a margin of `overlap` voxels per
    side, rounded up to the stride) and keeps only the cores, so this is the factor of work
    spent on context. Topaz-Denoise 3D's 96^3 tiles padded by 48 voxels per side compute a
    192^3 window per 96^3 output, a ratio of 8 (Bepler et al. 2020, Nat. Commun. 11, 5208,
    Methods).
    """
    return computed_voxels(shape, tile, overlap, stride) / math.prod(int(L) for L in shape)


@dataclass(frozen=True)
class Geometry:
    """A tile plan's parameters, per axis.

    Attributes
    ----------
    tile : tuple of int
        Core (output) edge per axis, a multiple of the stride (an axis no longer than its core
        gets one tile).
    overlap : tuple of int
        Context margin per side, per axis.
    stride : tuple of int
        Network stride per axis.
    batch : int
        Tiles per forward pass.
    """

    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    stride: tuple[int, ...]
    batch: int = 1

    def tile_shape(self, shape) -> tuple[int, ...]:
        """Network input shape of the largest tile of `shape`'s plan."""
        return tuple(max(t.size for t in plan_axis(int(L), t, o, s))
                     for L, t, o, s in zip(shape, self.tile, self.overlap, self.stride))

    def waste(self, shape) -> float:
        """:func:`waste_ratio` of this geometry over `shape`."""
        return waste_ratio(shape, self.tile, self.overlap, self.stride)

    def n_tiles(self, shape) -> int:
        return math.prod(len(plan_axis(int(L), t, o, s)) for L, t, o, s in zip(shape, self.tile, self.overlap, self.stride))


def _axis_options(length: int, overlap: int, stride: int, max_tiles: int = 512) -> list[tuple[int, int, int]]:
    """Pareto-best ``(input size, computed voxels, core)`` choices for one axis, by size ascending.

    A choice of ``n`` tiles has cores of ``round_up(ceil(length / n), stride)``; ``n = 1`` is one
    tile spanning the axis with reflect context on both sides. Only choices whose computed
    length beats every smaller tile's are kept.
    """
    options = {}
    for n in range(1, min(max_tiles, -(-length // stride)) + 1):
        core = _round_up(-(-length // n), stride)
        if core in options:
            continue
        sizes = [t.size for t in plan_axis(length, core, overlap, stride)]
        options[core] = (max(sizes), sum(sizes), core)
    front, best = [], None
    for size, computed, core in sorted(options.values()):
        if best is None or computed < best:
            front.append((size, computed, core))
            best = computed
    return front


def auto_geometry(
    shape, overlap, stride, *, max_tile_voxels: int, max_core_voxels: int | None = None, max_batch: int = 1,
    batch_voxels: int | None = None, fixed_tile=None,
) -> Geometry:
    """The tile cores that minimise the computed voxels over `shape`, one tile fitting in memory.

    Every per-axis combination of tile counts is considered (Pareto-pruned per axis); the one
    with the fewest computed voxels (:func:`computed_voxels`) whose tile input has at most
    `max_tile_voxels` voxels wins, ties going to fewer, larger tiles. Thin axes thus get one
    tile spanning the whole axis with reflect context rather than several. Then as many tiles
    as fit in the same memory, up to `max_batch` and only as many as needed to reach
    `batch_voxels` input voxels per pass, go into one forward pass (batching helps small tiles,
    e.g. the slices of a 2D stack; big tiles gain nothing from it but memory use).

    Parameters
    ----------
    shape : tuple of int
        Volume shape.
    overlap, stride : tuple of int
        Per-axis context margin and network stride.
    max_tile_voxels : int
        Memory budget of one forward pass, in input voxels (batch included).
    max_core_voxels : int, optional
        Most output voxels per tile (bounds the time of one tile, hence the progress steps).
    max_batch : int, default=1
    batch_voxels : int, optional
        Input voxels per forward pass beyond which tiles are not batched (default: no limit).
    fixed_tile : tuple of (int or None), optional
        Per-axis cores that are not to be chosen (e.g. 1 along the slice axis of a 2D stack).

    Returns
    -------
    Geometry
        If no tile fits the budget, the smallest tiles (one stride per axis).
    """
    nd = len(shape)
    overlap, stride = _per_axis(overlap, nd, "overlap"), _per_axis(stride, nd, "stride")
    fixed_tile = (None,) * nd if fixed_tile is None else tuple(fixed_tile)
    fronts = []
    for L, o, s, f in zip(shape, overlap, stride, fixed_tile):
        if f is not None:
            sizes = [t.size for t in plan_axis(int(L), int(f), o, s)]
            fronts.append([(max(sizes), sum(sizes), int(f))])
        else:
            fronts.append(_axis_options(int(L), o, s))
    budget = max(int(max_tile_voxels), 1)
    core_budget = max_core_voxels if max_core_voxels is not None else math.inf
    best = None
    for combo in itertools.product(*fronts[:-1]):
        size_other = math.prod(c[0] for c in combo)
        core_other = math.prod(c[2] for c in combo)
        room, core_room = budget // size_other, core_budget / core_other
        last = fronts[-1]
        fits = [c for c in last if c[0] <= room and c[2] <= core_room]
        if not fits:
            continue
        pick = fits[-1]  # the front is sorted by size, so the largest fitting tile computes least
        computed = math.prod(c[1] for c in combo) * pick[1]
        key = (computed, -size_other * pick[0])
        if best is None or key < best[0]:
            best = (key, tuple(c[2] for c in combo) + (pick[2],), size_other * pick[0])
    if best is None:
        cores = tuple(f[0][2] for f in fronts)
        tile_voxels = math.prod(f[0][0] for f in fronts)
    else:
        _, cores, tile_voxels = best
    n_tiles = math.prod(len(plan_axis(int(L), t, o, s)) for L, t, o, s in zip(shape, cores, overlap, stride))
    wanted = math.inf if batch_voxels is None else -(-int(batch_voxels) // max(tile_voxels, 1))
    batch = max(1, min(int(max_batch), n_tiles, budget // max(tile_voxels, 1), wanted))
    return Geometry(tile=tuple(cores), overlap=overlap, stride=stride, batch=batch)


def split_tile(tile: Tile, overlap, stride) -> list[Tile]:
    """Cut a tile's core in halves along every axis longer than one stride (for a retry after
    running out of memory).

    The halves keep the margin, and their starts stay on the stride grid, so the stitched result
    is the same. A tile that cannot be cut (every core at most one stride) comes back alone.
    """
    nd = len(tile.axes)
    overlap, stride = _per_axis(overlap, nd, "overlap"), _per_axis(stride, nd, "stride")
    per_axis = []
    for ax, o, s in zip(tile.axes, overlap, stride):
        lo, hi = ax.out.start, ax.out.stop
        length = hi - lo
        if length <= s or lo % s:
            per_axis.append([ax])
            continue
        core = _round_up(-(-length // 2), s)
        per_axis.append([
            AxisTile(t.start + lo, t.size, t.crop, slice(t.out.start + lo, t.out.stop + lo))
            for t in plan_axis(length, core, o, s)
        ])
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


def _mapping(array) -> mmap.mmap | None:
    """The ``mmap`` behind a memory-mapped array (following views to their base), else None."""
    seen = 0
    while array is not None and seen < 32:
        if isinstance(array, mmap.mmap):
            return array
        array = getattr(array, "base", None)
        seen += 1
    return None


def release_pages(array) -> bool:
    """Let go of the resident pages of a memory-mapped array (``madvise(MADV_DONTNEED)``).

    The data stays in the file (written pages of a shared mapping are kept in the page cache and
    written back); the process's resident memory drops, and pages are read again from the cache
    when used. This keeps the peak RSS of streaming a file tile by tile at about a few tiles
    rather than the whole file. A no-op returning False for arrays that are not memory-mapped,
    and where the platform has no ``madvise``.
    """
    mm = _mapping(array)
    if mm is None or not hasattr(mmap, "MADV_DONTNEED") or not hasattr(mm, "madvise"):
        return False
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # closed mapping, or a platform that refuses
        return False
    return True
