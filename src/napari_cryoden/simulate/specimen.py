"""The specimen: particles, lipid vesicles and the ice background, as a density (Z, Y, X).

:func:`specimen_volume` builds the crowded specimen of
:func:`~napari_cryoden.simulate.simulate_tomogram`; the micrograph simulator
(:mod:`napari_cryoden.simulate.micrograph`) places projections of the same particles on a
projection of the same ice. The density is dimensionless: 1 is a voxel full of protein, 0 is
vitreous ice (the background all contrast is relative to).

Particles
    Density maps (:func:`load_particle_maps`, e.g. the SHREC proteins in
    ``shared/data/maps_10A``) or procedural pseudo-proteins made of Gaussian pseudo-atoms
    (:func:`blob_particle`, :func:`procedural_particles`), which need no data files. They are
    rotated uniformly in SO(3) (:func:`random_rotation`, :func:`rotate_particle`) and placed where
    their support (density > 0.1 of the maximum) overlaps nothing placed before. In a tomogram
    they may be cut by the lateral (Y, X) edges of the field of view, not by the slab surfaces
    (Z).
Vesicles
    Thin spherical shells whose bilayer is two Gaussian leaflets 36 Å apart.
Ice
    A Gaussian random field smoothed at 100 Å (standard deviation 0.08).

Arrays are (Z, Y, X); lengths are in voxels unless named in Å. Every function that draws takes a
``numpy.random.Generator`` and is reproducible from its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ._checks import density_target

__all__ = [
    "ICE_SCALE_A",
    "ICE_STD",
    "Placement",
    "blob_particle",
    "check_particles",
    "gaussian_field",
    "load_particle_maps",
    "particle_radius",
    "paste_somewhere",
    "procedural_particles",
    "random_rotation",
    "rotate_particle",
    "specimen_volume",
]

#: Support threshold of a particle (fraction of its maximum): supports never overlap.
_SUPPORT = 0.1
#: Half the distance between the two leaflets' density peaks of a lipid bilayer, Å.
_LEAFLET_HALF_SPACING = 18.0
#: Width (standard deviation) of one leaflet's density, Å.
_LEAFLET_SIGMA = 5.0
#: Correlation length (Gaussian sigma) of the ice background, Å, and its standard deviation.
ICE_SCALE_A = 100.0
ICE_STD = 0.08


def load_particle_maps(folder: str | Path, names: list[str] | None = None, *, threshold: float = 0.01) -> dict[str, np.ndarray]:
    """Read particle density maps (``*.mrc``) and crop each to its support.

    Parameters
    ----------
    folder : path-like
        Folder of positive-density maps, all at one voxel size.
    names : list of str, optional
        File stems to load (default: all).
    threshold : float, default=0.01
        Voxels above ``threshold * max`` define the support; a 2-voxel margin is kept.

    Returns
    -------
    dict
        Stem -> float32 (Z, Y, X) map scaled to a maximum of 1.

    Raises
    ------
    FileNotFoundError
        If the folder holds none of the requested maps.
    """
    from ..io import read_mrc

    folder = Path(folder)
    paths = sorted(folder.glob("*.mrc"))
    if names is not None:
        paths = [p for p in paths if p.stem in set(names)]
    if not paths:
        raise FileNotFoundError(f"{folder}: no particle maps{' named ' + ', '.join(names) if names else ''}")
    maps = {}
    for p in paths:
        m = np.asarray(read_mrc(p).data, dtype=np.float32)
        m = np.clip(m, 0, None)
        m /= m.max()
        idx = np.argwhere(m > threshold)
        lo = np.maximum(idx.min(0) - 2, 0)
        hi = np.minimum(idx.max(0) + 3, m.shape)
        maps[p.stem] = np.ascontiguousarray(m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    return maps


def blob_particle(rng: np.random.Generator, radius: float = 8.0, n_atoms: int | None = None) -> np.ndarray:
    """A procedural pseudo-protein: Gaussian pseudo-atoms scattered in an ellipsoid.

    Parameters
    ----------
    rng : numpy.random.Generator
    radius : float, default=8.0
        Mean radius in voxels.
    n_atoms : int, optional
        Number of pseudo-atoms (default: random, 8-40).

    Returns
    -------
    (Z, Y, X) ndarray of float32, maximum 1.
    """
    n_atoms = int(rng.integers(8, 41)) if n_atoms is None else n_atoms
    axes = radius * rng.uniform(0.6, 1.3, size=3)
    size = int(np.ceil(2 * axes.max() + 8))
    pts = rng.normal(size=(n_atoms, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    pts *= rng.uniform(0, 1, size=(n_atoms, 1)) ** (1 / 3)
    pts = pts * axes + size / 2
    vol = np.zeros((size,) * 3, dtype=np.float32)
    idx = np.clip(np.round(pts).astype(int), 0, size - 1)
    np.add.at(vol, tuple(idx.T), rng.uniform(0.5, 1.0, size=n_atoms).astype(np.float32))
    vol = ndimage.gaussian_filter(vol, sigma=rng.uniform(1.2, 2.2))
    return vol / vol.max()


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3)."""
    return Rotation.random(random_state=rng).as_matrix()


def rotate_particle(particle: np.ndarray, rotation: np.ndarray, *, radius: float | None = None) -> np.ndarray:
    """Rotate a particle about its box centre (linear interpolation), cropped to its support.

    Parameters
    ----------
    particle : (Z, Y, X) ndarray
        Density map, zero outside the particle.
    rotation : (3, 3) ndarray
        Rotation matrix (e.g. :func:`random_rotation`): the output voxel at offset ``d`` (voxels,
        (z, y, x)) from the centre of the output box samples the input at offset ``rotation @ d``
        from the centre of the input box.
    radius : float, optional
        Radius in voxels of the particle about its box centre (:func:`particle_radius`). The
        rotation is then computed in a cube of ``2 * ceil(radius) + 1`` voxels, the particle's
        bounding sphere, several times cheaper than the default cube that holds the whole input
        box in every orientation (``ceil(sqrt(3) * max(particle.shape))`` voxels, made odd).
        Both cubes share their centre, so the voxels they have in common get the same values.

    Returns
    -------
    (Z', Y', X') ndarray of float32
        The rotated map cropped to the voxels above 1e-3 (the whole cube if there are none).
    """
    if radius is None:
        size = int(np.ceil(np.sqrt(3) * max(particle.shape))) | 1
    else:
        size = 2 * int(math.ceil(radius)) + 1
    offset = (np.asarray(particle.shape) - 1) / 2 - rotation @ np.full(3, (size - 1) / 2)
    out = ndimage.affine_transform(particle, rotation, offset=offset, output_shape=(size,) * 3, order=1,
                                   mode="constant")
    idx = np.argwhere(out > 1e-3)
    if idx.size == 0:
        return out.astype(np.float32)
    lo, hi = idx.min(0), idx.max(0) + 1
    return np.ascontiguousarray(out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)


def check_particles(particles: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The maps of `particles` as float32 arrays, negative density clipped to 0, maximum 1.

    Raises ValueError unless `particles` is a non-empty dict of finite 3D arrays with positive
    density.
    """
    if not isinstance(particles, dict) or not particles:
        raise ValueError("particles must be a non-empty dict of name -> 3D map (see load_particle_maps)")
    out = []
    for name, m in particles.items():
        a = np.asarray(m, dtype=np.float32)
        if a.ndim == 3 and a.size:
            a = np.clip(a, 0, None)  # densities are non-negative
        if a.ndim != 3 or min(a.shape) < 1 or not np.isfinite(a).all() or a.max() <= 0:
            raise ValueError(f"particle map {name!r} must be a finite 3D array with positive density")
        out.append(a / a.max())
    return out


def procedural_particles(rng: np.random.Generator, voxel_size: float, n: int = 8) -> list[np.ndarray]:
    """`n` procedural pseudo-proteins 30-80 Å in radius, rendered at `voxel_size` Å/voxel.

    :func:`blob_particle` is defined at 10 Å/voxel; other voxel sizes zoom it (linear
    interpolation) so the shapes keep their size in Å.
    """
    out = []
    for _ in range(n):
        p = blob_particle(rng, radius=float(rng.uniform(3.0, 8.0)))
        zoom = 10.0 / voxel_size
        if abs(zoom - 1) > 1e-6:
            p = ndimage.zoom(p, zoom, order=1)
            p = np.clip(p, 0, None)
            p /= max(float(p.max()), 1e-12)
        out.append(p.astype(np.float32))
    return out


def particle_radius(p: np.ndarray) -> float:
    """Distance from the box centre to the farthest voxel above 1e-3 of the maximum, plus one."""
    idx = np.argwhere(p > 1e-3 * float(p.max()))
    centre = (np.asarray(p.shape) - 1) / 2
    return float(np.sqrt(((idx - centre) ** 2).sum(1)).max()) + 1.0 if idx.size else 1.0


def _paste(vol: np.ndarray, occ: np.ndarray, p: np.ndarray, support: np.ndarray, lo: np.ndarray) -> int | None:
    """Add `p` at corner `lo` (may hang over the edges) if its support is free; voxels added or None."""
    src, dst = [], []
    for a, (start, size, full) in enumerate(zip(lo, p.shape, vol.shape)):
        s0, s1 = max(0, -start), min(size, full - start)
        if s1 <= s0:
            return None
        src.append(slice(s0, s1))
        dst.append(slice(start + s0, start + s1))
    src, dst = tuple(src), tuple(dst)
    sup = support[src]
    if np.any(occ[dst] & sup):
        return None
    vol[dst] += p[src]
    occ[dst] |= sup
    return int(sup.sum())


def paste_somewhere(
    vol: np.ndarray, occ: np.ndarray, p: np.ndarray, support: np.ndarray, rng: np.random.Generator, *,
    inside: int = 0, tries: int = 20,
) -> int | None:
    """:func:`_paste` `p` at the first free one of `tries` random corners; voxels added or None.

    Along the first `inside` axes `p` stays inside `vol`; along the others it may hang over each
    edge by up to half its box.
    """
    sizes = list(enumerate(zip(np.asarray(vol.shape), np.asarray(p.shape))))
    for _ in range(tries):
        lo = np.array([rng.integers(0, s - q + 1) if axis < inside
                       else rng.integers(-(q // 2), s - q + q // 2 + 1) for axis, (s, q) in sizes])
        added = _paste(vol, occ, p, support, lo)
        if added is not None:
            return added
    return None


@dataclass
class Placement:
    """Progress of placing particles one by one toward a target density (see ``density_target``).

    The goal is `target` particles (``mode == "count"``) or `target` times `total` support voxels
    or pixels (``mode == "fraction"``, `total` the voxels of the volume or pixels of the image).
    Placing stops when the goal is reached or `max_failures` particles in a row found no place.
    """

    mode: str
    target: float
    total: float
    max_failures: int
    filled: int = 0
    n_placed: int = 0
    failures: int = 0

    @property
    def goal(self) -> float:
        return self.target if self.mode == "count" else self.target * self.total

    @property
    def done(self) -> bool:
        return ((self.n_placed if self.mode == "count" else self.filled) >= self.goal
                or self.failures >= self.max_failures)

    def record(self, added: int | None) -> None:
        """Count a particle placed with `added` support voxels, or one that found no place (None)."""
        if added is None:
            self.failures += 1
        else:
            self.filled += added
            self.n_placed += 1
            self.failures = 0


def _vesicles(shape: tuple[int, int, int], voxel_size: float, count: int,
              rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Up to `count` non-overlapping lipid vesicles (bilayer shells), density peaking near 1.

    Returns the density and the number of vesicles placed.
    """
    vol = np.zeros(shape, dtype=np.float32)
    shape_a = np.asarray(shape, dtype=np.float64)
    lateral = min(shape[1], shape[2]) * voxel_size
    r_lo, r_hi = 120.0, max(150.0, 0.4 * lateral)
    sigma = max(_LEAFLET_SIGMA / voxel_size, 0.7)
    half = _LEAFLET_HALF_SPACING / voxel_size
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(count):
        for _try in range(50):
            radius = float(rng.uniform(r_lo, r_hi)) / voxel_size
            centre = rng.uniform(0, 1, size=3) * (shape_a - 1)
            if all(np.linalg.norm(centre - c) > radius + r + 4 for c, r in placed):
                break
        else:
            continue
        placed.append((centre, radius))
        reach = radius + half + 4 * sigma
        lo = np.maximum(np.floor(centre - reach).astype(int), 0)
        hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        shell = (np.exp(-0.5 * ((d - radius - half) / sigma) ** 2)
                 + np.exp(-0.5 * ((d - radius + half) / sigma) ** 2))
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        vol[sl] = np.maximum(vol[sl], 0.9 * shell.astype(np.float32))
    return vol, len(placed)


def _upsample_periodic(field_: np.ndarray, factor: int, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of a periodic coarse grid onto a `factor` times finer one, cropped to `shape`.

    Separable (one axis at a time) and much cheaper than :func:`scipy.ndimage.zoom` on large volumes.
    """
    out = field_
    for axis, size in enumerate(shape):
        n = out.shape[axis]
        pos = (np.arange(size) + 0.5) / factor - 0.5  # fine-voxel centres in coarse units
        i0 = np.floor(pos).astype(np.int64)
        w = (pos - i0).astype(np.float32)
        view = [1] * out.ndim
        view[axis] = size
        out = (np.take(out, i0 % n, axis=axis) * (1 - w).reshape(view)
               + np.take(out, (i0 + 1) % n, axis=axis) * w.reshape(view))
    return out


def gaussian_field(
    shape: tuple[int, ...], sigma: float, target_std: float, rng: np.random.Generator, *,
    max_factor: int, white_dtype: type = np.float64,
) -> np.ndarray:
    """A zero-mean periodic Gaussian random field (white noise smoothed by a Gaussian of `sigma`
    voxels) with standard deviation `target_std`, as float32.

    Drawn on a grid coarser by up to `max_factor` per axis and interpolated linearly, which is
    smooth at this scale and much cheaper than filtering a full-size white field.
    """
    factor = int(max(1, min(max_factor, sigma // 2)))
    coarse = tuple(-(-s // factor) for s in shape)
    white = rng.standard_normal(coarse).astype(white_dtype, copy=False)
    field_ = ndimage.gaussian_filter(white, sigma=sigma / factor, mode="wrap")
    if factor > 1:
        field_ = _upsample_periodic(field_, factor, shape)
    field_ = field_ - field_.mean()
    std = float(field_.std())
    return (field_ * (target_std / std if std > 0 else 0.0)).astype(np.float32)


def _ice(shape: tuple[int, ...], voxel_size: float, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean Gaussian random field with correlation length ~100 Å, std `ICE_STD`.

    Drawn on a grid coarser by up to 4 per axis and interpolated linearly, which is smooth at
    this scale and much cheaper than filtering a full-size white field.
    """
    return gaussian_field(shape, ICE_SCALE_A / voxel_size, ICE_STD, rng, max_factor=4, white_dtype=np.float32)


def specimen_volume(
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    voxel_size: float = 10.0,
    particles: dict[str, np.ndarray] | None = None,
    density: float | int = 0.15,
    membranes: int = 0,
    ice: bool = True,
    max_failures: int = 60,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A crowded specimen: non-overlapping particles, optional vesicles and ice background.

    Parameters
    ----------
    shape : (Z, Y, X) tuple of int
    rng : numpy.random.Generator
    voxel_size : float, default=10
        Å per voxel; particle maps must be at this voxel size.
    particles : dict of name -> (Z, Y, X) ndarray, optional
        Maps to draw from (uniformly); default: 8 procedural pseudo-proteins.
    density : float or int, default=0.15
        A float in [0, 1) is the target fraction of the volume inside particle supports
        (crowded cytoplasm is ~0.2-0.3); an int is the number of particles.
    membranes : int, default=0
        Number of vesicles.
    ice : bool, default=True
        Add the low-frequency ice background.
    max_failures : int, default=60
        Stop after this many particles in a row found no free place (20 positions each).

    Returns
    -------
    potential : (Z, Y, X) ndarray of float32
        Protein = 1, ice = 0.
    info : dict
        ``n_particles``, ``volume_fraction`` (of particle supports), ``n_membranes`` (placed).
    """
    mode, target = density_target(density, "volume")
    pool = check_particles(particles) if particles is not None else procedural_particles(rng, voxel_size)
    if membranes:
        vol, n_membranes = _vesicles(shape, voxel_size, int(membranes), rng)
    else:
        vol, n_membranes = np.zeros(shape, np.float32), 0
    occ = vol > _SUPPORT
    total = float(np.prod(shape))
    placement = Placement(mode, target, total, max_failures)
    goal, attempts = placement.goal, 0
    radii = [particle_radius(t) for t in pool]
    while not placement.done:
        attempts += 1
        if attempts > 20 * (goal if mode == "count" else goal / 50 + 50) + 200:
            break
        which = int(rng.integers(len(pool)))
        p = rotate_particle(pool[which], random_rotation(rng), radius=radii[which])
        support = p > _SUPPORT * float(p.max())
        if p.shape[0] > shape[0]:
            placement.record(None)
            continue
        # Z: inside the slab; Y, X: may hang over the field of view by up to half a box.
        placement.record(paste_somewhere(vol, occ, p, support, rng, inside=1))
    if ice:
        vol += _ice(shape, voxel_size, rng)
    info = {"n_particles": placement.n_placed, "volume_fraction": placement.filled / total,
            "n_membranes": n_membranes}
    return vol, info
