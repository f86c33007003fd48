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
    A dimensionless density ``potential`` (Z, Y, X), protein = 1 and vitreous ice = 0, from
    :func:`~napari_cryoden.simulate.specimen.specimen_volume` (particles, vesicles, ice; see
    :mod:`napari_cryoden.simulate.specimen`).
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
    Weak-phase-object approximation with the CTF and the radiation-damage filter of Grant &
    Grigorieff (2015) for the exposure each tilt has received by its mid-exposure, in the
    dose-symmetric order (:mod:`napari_cryoden.simulate.physics`). The beam is attenuated by
    ``exp(-thickness / (mean_free_path * cos(tilt)))`` (inelastic scattering removed by an
    energy filter), so high tilts receive fewer electrons; ``thickness`` is the slab's unless
    a thicker ``ice_thickness`` is given.
Shot noise and halves
    Each tilt's expected electron count per pixel is ``dose_per_tilt * voxel_size**2`` times the
    attenuation and relative intensity. The even and odd halves are two independent Poisson
    draws of half that count (as even and odd movie frames would be); the full-dose image is
    their sum, which is exactly a Poisson draw of the full count. Each image is normalized to
    its expected background count (``counts / expected - 1``), so every half has the same
    expected value as the full image. With ``detector_correlation`` each half's noise is
    correlated between neighbouring pixels (:mod:`napari_cryoden.simulate.physics`).
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
from typing import Any

import numpy as np
from scipy import fft as sfft
from scipy import sparse

from ._checks import (
    check_fraction, check_imaging, check_integer, check_shape, density_target, optional_positive, positive,
)
from .physics import (
    Simulated, correlate_detector_noise, ctf_2d, ctf_padding, detector_kernel, image_contrast, interaction_constant,
)
from .specimen import specimen_volume

__all__ = [
    "SimulatedTomogram",
    "dose_symmetric_order",
    "simulate_tomogram",
    "tilt_angles",
]


@dataclass(repr=False)
class SimulatedTomogram(Simulated):
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
    ice_thickness: float | None = None,
    detector_correlation: float = 0.0,
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
    ice_thickness : float or None, default=None
        Thickness in Å of the specimen the beam crosses at 0° tilt, ice above and below the slab
        included (at tilt t the path is ``ice_thickness / cos(t)``); at least the slab's,
        ``Z * voxel_size``. None: the slab's. Thicker ice attenuates the beam more, so fewer
        electrons reach the detector at the same dose (thick specimens, lamellae).
    detector_correlation : float, default=0
        Correlation of the shot noise between neighbouring detector pixels, in [0, 0.7]
        (:func:`~napari_cryoden.simulate.physics.correlate_detector_noise`); each half is
        filtered on its own, so the halves stay independent.
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
    shape = check_shape(shape, 3, minimum=8)
    voxel_size = positive("voxel_size", voxel_size)
    tilt_range, tilt_step = positive("tilt_range", tilt_range), positive("tilt_step", tilt_step)
    if tilt_range >= 90:
        raise ValueError(f"tilt_range must be below 90 degrees, got {tilt_range:g}")
    if tilt_step > tilt_range:
        raise ValueError(f"tilt_step ({tilt_step:g}) must not exceed tilt_range ({tilt_range:g})")
    voltage_kv, dose_total, contrast_volts, defocus_um, cs_mm = check_imaging(
        voltage_kv, dose_total, contrast_volts, defocus_um, cs_mm)
    check_fraction("amplitude_contrast", amplitude_contrast)
    mean_free_path = optional_positive("mean_free_path", mean_free_path)
    slab = shape[0] * voxel_size
    ice_thickness = optional_positive("ice_thickness", ice_thickness)
    if ice_thickness is not None and ice_thickness < slab - 1e-6:
        raise ValueError(f"ice_thickness ({ice_thickness:g} Å) must be at least the slab's ({slab:g} Å)")
    detector_kernel(detector_correlation)  # checks it
    detector_correlation = float(detector_correlation)
    radial_cutoff = optional_positive("radial_cutoff", radial_cutoff)
    check_integer("membranes", membranes)
    density_target(density, "volume")
    check_integer("seed", seed)

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
    thickness = slab if ice_thickness is None else ice_thickness
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
    contrast = image_contrast(phase, voxel_size, defocus_um, voltage_kv, cs_mm, amplitude_contrast,
                               exposure if radiation_damage else None)

    # --- shot noise: two independent Poisson halves per tilt, normalized to the background
    expected = background[:, None, None] * np.clip(1.0 + contrast, 0.0, None)
    half_bg = background[:, None, None] / 2
    stack = np.empty((3, *contrast.shape), dtype=np.float32)  # even, odd, clean
    for i in (0, 1):
        counts = rng.poisson(expected / 2)
        if detector_correlation:
            counts = correlate_detector_noise(counts, expected / 2, detector_correlation)
        stack[i] = counts / half_bg - 1.0
    stack[2] = contrast
    del expected

    # --- CTF correction, R-weighting, back-projection of the three channels at once
    fy = sfft.next_fast_len(ny + 2 * ctf_padding(voxel_size, defocus_um, voltage_kv, cs_mm), real=True)
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
        "mean_free_path": mean_free_path, "ice_thickness": thickness,
        "detector_correlation": detector_correlation,
        "contrast_volts": contrast_volts, "invert": bool(invert), "seed": int(seed),
        "n_tilts": n_tilts, "dose_per_tilt": dose_tilt, "electrons_per_pixel_per_tilt": e_per_px,
        "tilt_order": "dose-symmetric", "detector_width": nd,
        "interaction_constant": sigma, "relation": "noisy = (even + odd) / 2; clean = E[noisy]",
        **info,
    }
    return SimulatedTomogram(noisy=noisy, even=even, odd=odd, clean=clean, potential=potential,
                             tilt_angles=angles, voxel_size=voxel_size, params=params)
