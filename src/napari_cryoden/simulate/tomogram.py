"""A physically modelled cryo-ET tomogram: specimen, tilt series, CTF, shot noise, WBP.

:func:`simulate_tomogram` builds a crowded specimen (particles in random orientations, optional
lipid vesicles and a low-frequency ice background), images it as a single-axis tilt series with
the contrast transfer function (CTF) of a 300 kV microscope, radiation damage and Poisson shot
noise at a given electron dose, and reconstructs it by weighted back-projection (WBP). It returns
the noisy tomogram, its even/odd half-dose reconstructions (for Noise2Noise training, as in
cryoCARE) and the noiseless reconstruction of the same tilt geometry and CTF (the clean target).

Model, step by step
-------------------
Specimen
    A dimensionless density ``potential`` (Z, Y, X): 1 is a voxel full of protein, 0 is
    vitreous ice (the background all contrast is relative to). Particles (SHREC maps from
    :func:`~napari_cryoden.simulate.thesis.load_particle_maps` or procedural
    :func:`~napari_cryoden.simulate.thesis.blob_particle` pseudo-proteins) are rotated uniformly
    in SO(3) and placed where their support (density > 0.1) overlaps nothing placed before.
    Particles may be cut by the lateral (Y, X) edges of the field of view, not by the slab
    surfaces (Z). Vesicles are thin spherical shells whose bilayer is two Gaussian leaflets 36 Å
    apart. The ice background is a Gaussian random field smoothed at 100 Å (standard deviation
    0.08).
Tilt series
    Tilts from ``-n*tilt_step`` to ``+n*tilt_step`` (``n*tilt_step <= tilt_range``) about the Y
    axis, beam along Z (the convention of :mod:`napari_cryoden.simulate.thesis`), acquired in a
    dose-symmetric order (0°, +step, -step, +2 step, ...; Hagen, Wan & Briggs 2017, J. Struct.
    Biol. 197:191-198) with ``dose_total`` split evenly over the tilts.
Projection
    Ray-driven line integrals (bilinear samples one voxel apart along each ray) of the density,
    as a sparse matrix per (Z, X) geometry, cached. Contrast is relative to ice, so the uniform
    ice around the box adds none; the detector is wide enough to hold the projection of the
    whole box at every tilt, so no data are truncated. The phase of the projection is ``sigma * contrast_volts *
    voxel_size * sum(density)``, ``sigma`` the interaction constant (Kirkland, Advanced Computing
    in Electron Microscopy, 2020).
Image formation
    Weak-phase-object approximation: the expected intensity, relative to the incident beam, is
    ``1 - 2 * (CTF * E_dose) ⊛ phase``, with the CTF of :func:`torch_ctf.calculate_ctf_2d`
    (positive in its first lobe for underfocus, so protein is dark, as in real data) and the
    radiation-damage filter ``E_dose = exp(-N / (2 N_e(k)))`` of Grant & Grigorieff (2015,
    eLife 4:e06980), ``N`` the exposure the tilt has received (mid-exposure) and ``N_e(k) =
    0.245 k^-1.665 + 2.81`` e-/Å² their fitted critical exposure (300 kV). The beam is attenuated
    by ``exp(-thickness / (mean_free_path * cos(tilt)))`` (inelastic scattering removed by an
    energy filter), so high tilts receive fewer electrons.
Shot noise and halves
    Each tilt's expected electron count per pixel is ``dose_per_tilt * voxel_size**2`` times the
    attenuation and relative intensity. The even and odd halves are two independent Poisson
    draws of half that count (as even and odd movie frames would be); the full-dose image is
    their sum, which is exactly a Poisson draw of the full count. Each image is normalized to
    its expected background count (``counts / expected - 1``), so every half has the same
    expected value as the full image.
Reconstruction
    Phase flipping by the sign of the CTF (``phase_flip=True``, as IMOD's ``ctfphaseflip`` or
    Warp do before reconstruction; the default, because CTF zeros fall inside the band at
    10 Å/voxel and 3 µm defocus), R-weighting by the discrete Ram-Lak filter (Kak & Slaney 1988,
    Principles of Computerized Tomographic Imaging, ch. 3), by default rolled off beyond 0.35
    cycles/pixel like IMOD's radial filter, and pixel-driven back-projection
    with linear interpolation (Radermacher 1992, "Weighted back-projection methods", in
    Electron Tomography, ed. Frank). Values are divided by ``2 * sigma * contrast_volts *
    voxel_size``: a fully transferred protein voxel is -1 (+1 with ``invert=True``).

Why not torch-fourier-slice for the tomogram: its projector and back-projector need a cubic
volume padded twice (a 256³ FFT for a 64×128×128 tomogram); on one CPU core that took 1.7 s per
projection of 41 tilts and 3.6 s per back-projection at a 128³ cube, and 10 s / 21 s at 256³. A
single-axis tilt separates into independent X-Z slices, and sparse real-space operators shared by
all slices take well under a second. The micrograph simulator
(:mod:`napari_cryoden.simulate.micrograph`) uses torch-fourier-slice to project particles.

Relations that hold exactly (by linearity of WBP)::

    noisy == (even + odd) / 2          clean == E[noisy] == E[even] == E[odd]

so ``clean`` is the noiseless reconstruction with the same missing wedge, CTF (phase flipped),
damage and interpolation as the noisy one: a well-defined denoising target. (``E[...]`` is exact
up to the clipping of negative expected intensities, which needs unrealistic contrast.)

Not modelled: the defocus gradient across tilted images, astigmatism, tilt-series alignment
errors, beam-induced motion, the detector's MTF/DQE, multiple scattering and the Ewald sphere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from numbers import Integral, Real
from typing import Any

import numpy as np
from scipy import fft as sfft
from scipy import ndimage, sparse

from .thesis import blob_particle, random_rotation

__all__ = [
    "SimulatedTomogram",
    "critical_exposure",
    "ctf_2d",
    "dose_symmetric_order",
    "electron_wavelength",
    "interaction_constant",
    "procedural_particles",
    "simulate_tomogram",
    "specimen_volume",
    "tilt_angles",
]

#: Support threshold of a particle (fraction of its maximum): supports never overlap.
_SUPPORT = 0.1
#: Half the distance between the two leaflets' density peaks of a lipid bilayer, Å.
_LEAFLET_HALF_SPACING = 18.0
#: Width (standard deviation) of one leaflet's density, Å.
_LEAFLET_SIGMA = 5.0
#: Correlation length (Gaussian sigma) of the ice background, Å, and its standard deviation.
_ICE_SCALE_A = 100.0
_ICE_STD = 0.08


@dataclass(repr=False)
class _Simulated:
    """What both simulators return first: the images and the specimen density (see the subclasses)."""

    noisy: np.ndarray
    even: np.ndarray
    odd: np.ndarray
    clean: np.ndarray
    potential: np.ndarray


@dataclass(repr=False)
class SimulatedTomogram(_Simulated):
    """A simulated tomogram with its even/odd halves and clean target.

    Attributes
    ----------
    noisy, even, odd, clean : (Z, Y, X) ndarray of float32
        Reconstructions of the full-dose, even-half, odd-half and noiseless tilt series.
        ``noisy == (even + odd) / 2``; ``clean`` is the expected value of all three.
    potential : (Z, Y, X) ndarray of float32
        The specimen density before imaging (protein = 1, ice = 0, positive), without missing
        wedge or CTF.
    tilt_angles : (n_tilts,) ndarray of float64
        Tilt angles in degrees, ascending (about Y, beam along Z).
    voxel_size : float
        Å per voxel (isotropic).
    params : dict
        Every input parameter and the derived quantities (``n_tilts``, ``dose_per_tilt``,
        ``electrons_per_pixel_per_tilt``, ``n_particles``, ``volume_fraction``, ...); JSON-safe.
    """

    tilt_angles: np.ndarray
    voxel_size: float
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"SimulatedTomogram(shape={self.noisy.shape}, voxel_size={self.voxel_size:g} Å, "
                f"{len(self.tilt_angles)} tilts, dose {self.params.get('dose_total')} e-/Å²)")


# --------------------------------------------------------------------------------------------
# Physics helpers (shared with the micrograph simulator)


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV (0.0197 Å at 300 kV)."""
    v = voltage_kv * 1e3
    return 12.2643247 / math.sqrt(v * (1 + 0.978476e-6 * v))


def interaction_constant(voltage_kv: float) -> float:
    """Interaction constant sigma in rad / (V·Å): phase shift per volt of potential per Å of path.

    ``sigma = 2 pi / (lambda V) * (m c² + e V) / (2 m c² + e V)`` (Kirkland, Advanced Computing in
    Electron Microscopy, 3rd ed., 2020); 6.5e-4 rad/(V·Å) at 300 kV.
    """
    v = voltage_kv * 1e3
    mc2 = 510998.95  # electron rest energy, eV
    return 2 * math.pi / (electron_wavelength(voltage_kv) * v) * (mc2 + v) / (2 * mc2 + v)


def critical_exposure(k: np.ndarray) -> np.ndarray:
    """Critical exposure N_e(k) in e-/Å² at spatial frequency `k` (1/Å), 300 kV.

    The fit ``N_e = 0.245 k^-1.665 + 2.81`` of Grant & Grigorieff (2015), "Measuring the optimal
    exposure for single particle cryo-EM using a 2.6 Å reconstruction of rotavirus VP6", eLife
    4:e06980. Infinite at ``k == 0``.
    """
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(k > 0, 0.245 * np.power(np.where(k > 0, k, 1.0), -1.665) + 2.81, np.inf)


def _freq_rfft2(shape: tuple[int, int], pixel_size: float) -> np.ndarray:
    """|k| in 1/Å on the ``rfft2`` grid of an image of `shape`."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    return np.sqrt(ky**2 + kx**2) / pixel_size


def ctf_2d(
    shape: tuple[int, int],
    pixel_size: float,
    defocus_um: float | np.ndarray,
    *,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
) -> np.ndarray:
    """The CTF on the (unshifted) ``rfft2`` grid of an image, from :func:`torch_ctf.calculate_ctf_2d`.

    Parameters
    ----------
    shape : (int, int)
        (Y, X) of the image in pixels.
    pixel_size : float
        Å per pixel.
    defocus_um : float or (n,) array
        Defocus in µm, positive is underfocus; one CTF per value.
    voltage_kv, cs_mm, amplitude_contrast : float
        Acceleration voltage (kV), spherical aberration (mm), amplitude contrast fraction.

    Returns
    -------
    ndarray of float32, (Y, X//2+1) or (n, Y, X//2+1)
        ``-sin(chi)`` with the amplitude-contrast phase included: positive in the first lobe
        for underfocus (image intensity is ``1 - 2 CTF ⊛ phase``).
    """
    import torch
    from torch_ctf import calculate_ctf_2d

    defocus = torch.as_tensor(np.asarray(defocus_um, dtype=np.float32))
    ctf = calculate_ctf_2d(
        defocus=defocus, astigmatism=0.0, astigmatism_angle=0.0, voltage=float(voltage_kv),
        spherical_aberration=float(cs_mm), amplitude_contrast=float(amplitude_contrast),
        phase_shift=0.0, pixel_size=float(pixel_size), image_shape=tuple(int(s) for s in shape),
        rfft=True, fftshift=False,
    )
    return ctf.numpy().astype(np.float32, copy=False)


def _ctf_padding(pixel_size: float, defocus_um: float, voltage_kv: float, cs_mm: float) -> int:
    """Pixels of padding that hold the CTF's delocalization at Nyquist (plus a margin)."""
    lam = electron_wavelength(voltage_kv)
    k = 0.5 / pixel_size
    deloc = lam * abs(defocus_um) * 1e4 * k + cs_mm * 1e7 * lam**3 * k**3
    return int(math.ceil(deloc / pixel_size)) + 4


def tilt_angles(tilt_range: float, tilt_step: float) -> np.ndarray:
    """Tilt angles ``tilt_step * (-n..n)`` in degrees, with ``n = floor(tilt_range / tilt_step)``."""
    n = int(math.floor(tilt_range / tilt_step + 1e-9))
    return tilt_step * np.arange(-n, n + 1, dtype=np.float64)


def dose_symmetric_order(angles: np.ndarray) -> np.ndarray:
    """Acquisition rank of each tilt in a dose-symmetric scheme starting at the lowest |angle|.

    Tilts are taken by increasing |angle|, the positive one first at each |angle| (Hagen, Wan &
    Briggs 2017, J. Struct. Biol. 197:191-198, with groups of one tilt).

    Returns
    -------
    (n,) ndarray of int
        ``rank[i]`` is how many tilts were acquired before tilt ``i``.
    """
    angles = np.asarray(angles, dtype=np.float64)
    order = np.lexsort((-angles, np.round(np.abs(angles), 9)))
    rank = np.empty(len(angles), dtype=np.int64)
    rank[order] = np.arange(len(angles))
    return rank


# --------------------------------------------------------------------------------------------
# The specimen


def _check_particles(particles: dict[str, np.ndarray]) -> list[np.ndarray]:
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

    :func:`~napari_cryoden.simulate.thesis.blob_particle` is defined at 10 Å/voxel; other voxel
    sizes zoom it (linear interpolation) so the shapes keep their size in Å.
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


def _radius(p: np.ndarray) -> float:
    """Distance from the box centre to the farthest voxel above 1e-3 of the maximum, plus one."""
    idx = np.argwhere(p > 1e-3 * float(p.max()))
    centre = (np.asarray(p.shape) - 1) / 2
    return float(np.sqrt(((idx - centre) ** 2).sum(1)).max()) + 1.0 if idx.size else 1.0


def _rotate(p: np.ndarray, radius: float, rotation: np.ndarray) -> np.ndarray:
    """`p` rotated about its box centre (linear interpolation), cropped to its support.

    Like :func:`~napari_cryoden.simulate.thesis.rotate_particle`, but the output box is the
    particle's bounding sphere rather than the box's, which is several times cheaper.
    """
    size = 2 * int(math.ceil(radius)) + 1
    offset = (np.asarray(p.shape) - 1) / 2 - rotation @ np.full(3, (size - 1) / 2)
    out = ndimage.affine_transform(p, rotation, offset=offset, output_shape=(size,) * 3, order=1,
                                   mode="constant")
    idx = np.argwhere(out > 1e-3)
    if idx.size == 0:
        return out.astype(np.float32)
    lo, hi = idx.min(0), idx.max(0) + 1
    return np.ascontiguousarray(out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)


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


def _paste_somewhere(
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


def _gaussian_field(
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
    """A zero-mean Gaussian random field with correlation length ~100 Å, std `_ICE_STD`.

    Drawn on a grid coarser by up to 4 per axis and interpolated linearly, which is smooth at
    this scale and much cheaper than filtering a full-size white field.
    """
    return _gaussian_field(shape, _ICE_SCALE_A / voxel_size, _ICE_STD, rng, max_factor=4, white_dtype=np.float32)


def _density_target(density: float | int, what: str) -> tuple[str, float]:
    if isinstance(density, bool) or not isinstance(density, Real):
        raise ValueError(f"density must be a {what} fraction in [0, 1) or a particle count, got {density!r}")
    if isinstance(density, Integral):
        if density < 0:
            raise ValueError(f"density (a particle count) must be >= 0, got {density}")
        return "count", float(density)
    if not 0 <= density < 1:
        raise ValueError(f"density must be a {what} fraction in [0, 1) or an integer count, got {density}")
    return "fraction", float(density)


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
    mode, target = _density_target(density, "volume")
    pool = _check_particles(particles) if particles is not None else procedural_particles(rng, voxel_size)
    if membranes:
        vol, n_membranes = _vesicles(shape, voxel_size, int(membranes), rng)
    else:
        vol, n_membranes = np.zeros(shape, np.float32), 0
    occ = vol > _SUPPORT
    total = float(np.prod(shape))
    filled, n_placed, failures, attempts = 0, 0, 0, 0
    goal = target if mode == "count" else target * total
    radii = [_radius(t) for t in pool]
    while (n_placed if mode == "count" else filled) < goal and failures < max_failures:
        attempts += 1
        if attempts > 20 * (goal if mode == "count" else goal / 50 + 50) + 200:
            break
        which = int(rng.integers(len(pool)))
        p = _rotate(pool[which], radii[which], random_rotation(rng))
        support = p > _SUPPORT * float(p.max())
        if p.shape[0] > shape[0]:
            failures += 1
            continue
        # Z: inside the slab; Y, X: may hang over the field of view by up to half a box.
        added = _paste_somewhere(vol, occ, p, support, rng, inside=1)
        if added is None:
            failures += 1
        else:
            filled += added
            n_placed += 1
            failures = 0
    if ice:
        vol += _ice(shape, voxel_size, rng)
    info = {"n_particles": n_placed, "volume_fraction": filled / total, "n_membranes": n_membranes}
    return vol, info


# --------------------------------------------------------------------------------------------
# Projection and back-projection operators (sparse, per X-Z slice, shared by all Y)


@lru_cache(maxsize=2)
def _projector(nz: int, nx: int, angles: tuple[float, ...], nd: int, nt: int) -> sparse.csr_matrix:
    """(n_tilts*nd, nz*nx) ray-driven projector: bilinear samples one voxel apart along each ray."""
    rows, cols, vals = [], [], []
    cz, cx, cu, ct = (nz - 1) / 2, (nx - 1) / 2, (nd - 1) / 2, (nt - 1) / 2
    u = np.arange(nd) - cu
    t = np.arange(nt) - ct
    for k, theta in enumerate(np.deg2rad(angles)):
        c, s = math.cos(theta), math.sin(theta)
        xx = cx + u[None, :] * c + t[:, None] * s
        zz = cz - u[None, :] * s + t[:, None] * c
        inside = (xx > -1) & (xx < nx) & (zz > -1) & (zz < nz)
        xx, zz = xx[inside], zz[inside]
        row = np.broadcast_to(k * nd + np.arange(nd)[None, :], inside.shape)[inside]
        x0, z0 = np.floor(xx).astype(np.int64), np.floor(zz).astype(np.int64)
        fx, fz = xx - x0, zz - z0
        for dz, dx, w in ((0, 0, (1 - fz) * (1 - fx)), (0, 1, (1 - fz) * fx),
                          (1, 0, fz * (1 - fx)), (1, 1, fz * fx)):
            zi, xi = z0 + dz, x0 + dx
            ok = (zi >= 0) & (zi < nz) & (xi >= 0) & (xi < nx) & (w > 0)
            rows.append(row[ok])
            cols.append(zi[ok] * nx + xi[ok])
            vals.append(w[ok].astype(np.float32))
    m = sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(len(angles) * nd, nz * nx))
    return m.tocsr()


@lru_cache(maxsize=2)
def _backprojector(nz: int, nx: int, angles: tuple[float, ...], nd: int) -> sparse.csr_matrix:
    """(nz*nx, n_tilts*nd) pixel-driven back-projector with linear interpolation on the detector."""
    cz, cx, cu = (nz - 1) / 2, (nx - 1) / 2, (nd - 1) / 2
    z, x = np.meshgrid(np.arange(nz) - cz, np.arange(nx) - cx, indexing="ij")
    vox = np.arange(nz * nx)
    rows, cols, vals = [], [], []
    for k, theta in enumerate(np.deg2rad(angles)):
        uu = (cu + x * math.cos(theta) - z * math.sin(theta)).ravel()
        i0 = np.floor(uu).astype(np.int64)
        f = uu - i0
        for di, w in ((0, 1 - f), (1, f)):
            ii = i0 + di
            ok = (ii >= 0) & (ii < nd)
            rows.append(vox[ok])
            cols.append(k * nd + ii[ok])
            vals.append(w[ok].astype(np.float32))
    m = sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(nz * nx, len(angles) * nd))
    return m.tocsr()


def _ramlak(n: int, cutoff: float | None = None, falloff: float = 0.035) -> np.ndarray:
    """The discrete Ram-Lak (R-weighting) filter on the ``rfft`` grid of length `n`.

    The filter's kernel is defined in real space (Kak & Slaney 1988, ch. 3), which keeps the
    zero frequency right. With `cutoff` (cycles/pixel) it is rolled off beyond the cutoff by a
    Gaussian of standard deviation `falloff`, like the radial filter of IMOD's ``tilt``.
    """
    i = np.arange(n)
    m = np.minimum(i, n - i)
    h = np.zeros(n)
    h[0] = 0.25
    odd = m % 2 == 1
    h[odd] = -1.0 / (np.pi * m[odd]) ** 2
    filt = np.real(np.fft.rfft(h))
    if cutoff is not None:
        k = np.fft.rfftfreq(n)
        filt *= np.where(k > cutoff, np.exp(-0.5 * ((k - cutoff) / falloff) ** 2), 1.0)
    return filt


def _detector_width(nz: int, nx: int, angles: np.ndarray) -> int:
    """Detector pixels that hold the projection of the whole slab at every tilt (parity of nx)."""
    th = np.deg2rad(np.abs(angles))
    need = int(math.ceil(float(np.max(nx * np.cos(th) + nz * np.sin(th))))) + 2
    need = max(need, nx)
    return need + ((need - nx) % 2)


# --------------------------------------------------------------------------------------------
# The simulator


def _image_contrast(
    phase: np.ndarray,
    pixel_size: float,
    defocus_um: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    exposure: np.ndarray | None,
) -> np.ndarray:
    """Relative intensity contrast ``I / I0 - 1 = -2 (CTF * E_dose) ⊛ phase`` of phase images.

    Parameters
    ----------
    phase : (n, H, W) ndarray
        Projected phase in radians.
    exposure : sequence of n floats or 1D arrays, or None
        Exposure (e-/Å²) each image has received, for the damage filter; an array averages
        the filters of several frames (a frame sum). None for no damage.

    Returns
    -------
    (n, H, W) ndarray of float32
    """
    n, h, w = phase.shape
    pad = _ctf_padding(pixel_size, defocus_um, voltage_kv, cs_mm)
    fy = sfft.next_fast_len(h + 2 * pad, real=True)
    fx = sfft.next_fast_len(w + 2 * pad, real=True)
    transfer = -2.0 * ctf_2d((fy, fx), pixel_size, defocus_um, voltage_kv=voltage_kv, cs_mm=cs_mm,
                             amplitude_contrast=amplitude_contrast)
    spec = sfft.rfft2(phase.astype(np.float32, copy=False), s=(fy, fx), axes=(-2, -1))
    if exposure is None:
        spec *= transfer
    else:
        ne = critical_exposure(_freq_rfft2((fy, fx), pixel_size))
        for i in range(n):
            damage = np.zeros(ne.shape)
            frames = np.atleast_1d(np.asarray(exposure[i], dtype=np.float64))
            for e in frames:
                damage += np.exp(-e / (2 * ne))
            spec[i] *= transfer * (damage / len(frames)).astype(np.float32)
    return sfft.irfft2(spec, s=(fy, fx), axes=(-2, -1))[:, :h, :w].astype(np.float32, copy=False)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def simulate_tomogram(
    shape: tuple[int, int, int] = (64, 128, 128),
    *,
    voxel_size: float = 10.0,
    particles: dict[str, np.ndarray] | None = None,
    density: float | int = 0.15,
    membranes: int = 0,
    ice: bool = True,
    tilt_range: float = 60.0,
    tilt_step: float = 3.0,
    defocus_um: float = 3.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    dose_total: float = 100.0,
    phase_flip: bool = True,
    radiation_damage: bool = True,
    radial_cutoff: float | None = 0.35,
    mean_free_path: float | None = 3500.0,
    contrast_volts: float = 2.0,
    invert: bool = False,
    seed: int = 0,
) -> SimulatedTomogram:
    """Simulate a cryo-ET tomogram, its even/odd half-dose reconstructions and its clean target.

    See the module docstring for the physical model.

    Parameters
    ----------
    shape : (Z, Y, X) tuple of int, default=(64, 128, 128)
        Voxels of the reconstruction (= the specimen slab); each at least 8.
    voxel_size : float, default=10
        Å per voxel, also the pixel size of the tilt images.
    particles : dict of name -> (Z, Y, X) ndarray, optional
        Particle maps at `voxel_size` (e.g. ``load_particle_maps(".../maps_10A")``); default:
        procedural pseudo-proteins.
    density : float or int, default=0.15
        Fraction of the volume inside particles (float in [0, 1)) or number of particles (int).
    membranes : int, default=0
        Number of lipid vesicles (thin spherical shells).
    ice : bool, default=True
        Add a low-frequency ice-density background.
    tilt_range : float, default=60
        Maximum |tilt| in degrees, in (0, 90).
    tilt_step : float, default=3
        Degrees between tilts.
    defocus_um : float, default=3
        Defocus in µm (positive = underfocus), the same for every tilt.
    voltage_kv : float, default=300
    cs_mm : float, default=2.7
        Spherical aberration in mm.
    amplitude_contrast : float, default=0.07
        Amplitude contrast fraction in [0, 1).
    dose_total : float, default=100
        Electron dose over the whole tilt series, e-/Å².
    phase_flip : bool, default=True
        Correct the CTF by phase flipping before reconstruction.
    radiation_damage : bool, default=True
        Apply the exposure-dependent damage filter (dose-symmetric acquisition order).
    radial_cutoff : float or None, default=0.35
        Roll the R-weighting off beyond this frequency (cycles/pixel, Nyquist = 0.5) with a
        Gaussian fall-off of sigma 0.035, similar to the default radial filter of IMOD's
        ``tilt``; None for the plain ramp up to Nyquist.
    mean_free_path : float or None, default=3500
        Inelastic mean free path in Å (vitreous ice at 300 kV is of the order of 300-400 nm);
        None for no attenuation.
    contrast_volts : float, default=2.0
        Potential of protein above vitreous ice, in volts (approximate); sets the signal
        relative to the shot noise.
    invert : bool, default=False
        Flip the sign of the tomograms so protein is bright (the raw model has protein dark).
    seed : int, default=0
        Everything (specimen and noise) is reproducible from it.

    Returns
    -------
    SimulatedTomogram
        ``noisy``, ``even``, ``odd``, ``clean`` and ``potential`` (Z, Y, X) float32 arrays,
        ``tilt_angles``, ``voxel_size`` and ``params``.

    Raises
    ------
    ValueError
        On a bad parameter (one line, naming it).

    Examples
    --------
    >>> sim = simulate_tomogram((32, 48, 48), seed=1)
    >>> sim.noisy.shape, sim.noisy.dtype
    ((32, 48, 48), dtype('float32'))
    """
    shape = _check_shape(shape, 3, minimum=8)
    voxel_size = _positive("voxel_size", voxel_size)
    tilt_range, tilt_step = _positive("tilt_range", tilt_range), _positive("tilt_step", tilt_step)
    if tilt_range >= 90:
        raise ValueError(f"tilt_range must be below 90 degrees, got {tilt_range:g}")
    if tilt_step > tilt_range:
        raise ValueError(f"tilt_step ({tilt_step:g}) must not exceed tilt_range ({tilt_range:g})")
    voltage_kv, dose_total, contrast_volts, defocus_um, cs_mm = _check_imaging(
        voltage_kv, dose_total, contrast_volts, defocus_um, cs_mm)
    _check_fraction("amplitude_contrast", amplitude_contrast)
    mean_free_path = _optional_positive("mean_free_path", mean_free_path)
    radial_cutoff = _optional_positive("radial_cutoff", radial_cutoff)
    _check_integer("membranes", membranes)
    _density_target(density, "volume")
    _check_integer("seed", seed)

    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    potential, info = specimen_volume(shape, rng, voxel_size=voxel_size, particles=particles,
                                      density=density, membranes=membranes, ice=ice)

    # --- tilt series geometry and dose
    angles = tilt_angles(tilt_range, tilt_step)
    n_tilts = len(angles)
    dose_tilt = dose_total / n_tilts
    rank = dose_symmetric_order(angles)
    exposure = (rank + 0.5) * dose_tilt  # e-/Å² received at mid-exposure of each tilt
    thickness = nz * voxel_size
    cos_t = np.cos(np.deg2rad(angles))
    atten = np.exp(-thickness / (mean_free_path * cos_t)) if mean_free_path else np.ones(n_tilts)
    e_per_px = dose_tilt * voxel_size**2
    background = e_per_px * atten  # expected counts per pixel where there is only ice

    nd = _detector_width(nz, nx, angles)
    nt = int(math.ceil(math.hypot(nz, nx))) + 2
    nt += (nt - nz) % 2
    key = tuple(float(a) for a in angles)

    # --- projection: phase of each tilt image, (n_tilts, Y, nd)
    sigma = interaction_constant(voltage_kv)
    scale = sigma * contrast_volts * voxel_size  # rad per unit density per voxel of path
    vol_t = np.ascontiguousarray(potential.transpose(0, 2, 1)).reshape(nz * nx, ny)
    proj = (_projector(nz, nx, key, nd, nt) @ vol_t).reshape(n_tilts, nd, ny).transpose(0, 2, 1)
    phase = scale * proj

    # --- image formation: relative intensity contrast c = I / I0 - 1, with CTF and damage
    contrast = _image_contrast(phase, voxel_size, defocus_um, voltage_kv, cs_mm, amplitude_contrast,
                               exposure if radiation_damage else None)

    # --- shot noise: two independent Poisson halves per tilt, normalized to the background
    expected = background[:, None, None] * np.clip(1.0 + contrast, 0.0, None)
    half_bg = background[:, None, None] / 2
    stack = np.empty((3, *contrast.shape), dtype=np.float32)  # even, odd, clean
    stack[0] = rng.poisson(expected / 2) / half_bg - 1.0
    stack[1] = rng.poisson(expected / 2) / half_bg - 1.0
    stack[2] = contrast
    del expected

    # --- CTF correction, R-weighting, back-projection of the three channels at once
    fy = sfft.next_fast_len(ny + 2 * _ctf_padding(voxel_size, defocus_um, voltage_kv, cs_mm), real=True)
    fd = sfft.next_fast_len(2 * nd, real=True)  # zero padding for the ramp filter
    filt = np.broadcast_to(_ramlak(fd, radial_cutoff).astype(np.float32), (fy, fd // 2 + 1))
    if phase_flip:
        filt = np.sign(ctf_2d((fy, fd), voxel_size, defocus_um, voltage_kv=voltage_kv, cs_mm=cs_mm,
                              amplitude_contrast=amplitude_contrast)) * filt
    spec = sfft.rfft2(stack, s=(fy, fd), axes=(-2, -1))
    spec *= filt
    filtered = sfft.irfft2(spec, s=(fy, fd), axes=(-2, -1))[..., :ny, :nd]
    del spec, stack
    weight = np.float32(np.deg2rad(tilt_step) / (2.0 * scale))  # uniform angular spacing; units
    q = np.ascontiguousarray(filtered.transpose(1, 3, 0, 2)).reshape(n_tilts * nd, 3 * ny)
    q *= -weight if invert else weight
    rec = _backprojector(nz, nx, key, nd) @ q  # (Z*X, 3*Y)
    rec = rec.reshape(nz, nx, 3, ny).transpose(2, 0, 3, 1)  # (3, Z, Y, X)
    even, odd, clean = (np.ascontiguousarray(r, dtype=np.float32) for r in rec)
    noisy = ((even.astype(np.float64) + odd) / 2).astype(np.float32)

    params = {
        "kind": "tomogram",
        "shape": list(shape), "voxel_size": voxel_size,
        "particles": sorted(particles) if particles is not None else "procedural",
        "density": density, "membranes": int(membranes), "ice": bool(ice),
        "tilt_range": tilt_range, "tilt_step": tilt_step, "defocus_um": defocus_um,
        "voltage_kv": voltage_kv, "cs_mm": cs_mm, "amplitude_contrast": float(amplitude_contrast),
        "dose_total": dose_total, "phase_flip": bool(phase_flip),
        "radiation_damage": bool(radiation_damage), "radial_cutoff": radial_cutoff,
        "mean_free_path": mean_free_path,
        "contrast_volts": contrast_volts, "invert": bool(invert), "seed": int(seed),
        "n_tilts": n_tilts, "dose_per_tilt": dose_tilt, "electrons_per_pixel_per_tilt": e_per_px,
        "tilt_order": "dose-symmetric", "detector_width": nd,
        "interaction_constant": sigma, "relation": "noisy = (even + odd) / 2; clean = E[noisy]",
        **info,
    }
    return SimulatedTomogram(noisy=noisy, even=even, odd=odd, clean=clean, potential=potential,
                             tilt_angles=angles, voxel_size=voxel_size, params=params)


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _optional_positive(name: str, value: float | None) -> float | None:
    return None if value is None else _positive(name, value)


def _check_integer(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _check_imaging(
    voltage_kv: float, dose_total: float, contrast_volts: float, defocus_um: float, cs_mm: float
) -> tuple[float, float, float, float, float]:
    """The imaging parameters both simulators share, checked and as floats, in this order."""
    return (_positive("voltage_kv", voltage_kv), _positive("dose_total", dose_total),
            _positive("contrast_volts", contrast_volts), _non_negative("defocus_um", defocus_um),
            _non_negative("cs_mm", cs_mm))


def _check_shape(shape, ndim: int, *, minimum: int) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
        ok = len(out) == ndim and all(o == s for o, s in zip(out, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(out) < minimum:
        raise ValueError(f"shape must be {ndim} integers >= {minimum}, got {shape!r}")
    return out
