"""A physically modelled cryo-EM micrograph (a dose-fractionated movie's frame sums).

:func:`simulate_micrograph` projects particles in random orientations (with torch-fourier-slice),
places them without overlap on a low-frequency ice background, applies the CTF
(torch-ctf) and per-frame radiation damage, and draws Poisson shot noise for the sum of the even
frames and the sum of the odd frames of a movie (independent halves, as used for Noise2Noise
denoising of micrographs, e.g. Topaz-Denoise). The full frame sum is their sum.

The physics (weak-phase-object image formation, interaction constant, the damage filter of
Grant & Grigorieff 2015) is the one of :mod:`napari_cryoden.simulate.physics`, the particles and
the ice those of :mod:`napari_cryoden.simulate.specimen`; attenuation by inelastic scattering
is modelled as for the tomogram (:mod:`napari_cryoden.simulate.tomogram`).

All images are normalized to the expected background count of their own dose
(``counts / expected - 1``), so they share one expected value up to radiation damage::

    noisy == (n_even * even + n_odd * odd) / n_frames     (== (even + odd) / 2 for even n_frames)
    clean == E[noisy]

Protein is dark (underfocus, as in real micrographs) unless ``invert=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np

from ._checks import (
    check_fraction, check_imaging, check_integer, check_shape, density_target, non_negative, optional_positive,
    positive,
)
from .physics import Simulated, image_contrast, interaction_constant
from .specimen import (
    ICE_SCALE_A, ICE_STD, Placement, check_particles, gaussian_field, particle_radius, paste_somewhere,
    procedural_particles, random_rotation,
)

__all__ = ["SimulatedMicrograph", "project_particles", "simulate_micrograph"]

#: Support of a particle's projection: above this fraction of its maximum.
_SUPPORT_2D = 0.05


@dataclass(repr=False)
class SimulatedMicrograph(Simulated):
    """A simulated micrograph with its even/odd frame sums and clean target.

    Attributes
    ----------
    noisy, even, odd, clean : (Y, X) ndarray of float32
        Full frame sum, even-frame sum, odd-frame sum (relative contrast, see the module
        docstring) and the noiseless expected image.
    potential : (Y, X) ndarray of float32
        Projected specimen density (sum along the beam of protein-voxel units), before CTF.
    pixel_size : float
        Å per pixel.
    params : dict
        Every input parameter and derived quantities (``electrons_per_pixel``,
        ``n_particles``, ``area_fraction``, ...); JSON-safe.
    """

    pixel_size: float
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"SimulatedMicrograph(shape={self.noisy.shape}, pixel_size={self.pixel_size:g} Å, "
                f"dose {self.params.get('dose_total')} e-/Å² in {self.params.get('n_frames')} frames)")


def project_particles(template: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Projections of a 3D map in the given orientations, by the Fourier slice theorem.

    Uses :func:`torch_fourier_slice.project_3d_to_2d` (2x padding, trilinear slice extraction
    with sinc² correction). The map is centred in a cube that holds it in every orientation.

    Parameters
    ----------
    template : (Z, Y, X) ndarray
        Non-negative density map.
    rotations : (n, 3, 3) ndarray
        Rotation matrices (acting on xyz column vectors).

    Returns
    -------
    (n, d, d) ndarray of float32
        Line integrals along the beam in voxel units (sum of voxel values), clipped at 0.
    """
    import torch
    from torch_fourier_slice import project_3d_to_2d

    d = max(16, 2 * int(math.ceil(particle_radius(template))) + 4)
    cube = np.zeros((d, d, d), dtype=np.float32)
    lo = [(d - s) // 2 for s in template.shape]
    cube[lo[0]:lo[0] + template.shape[0], lo[1]:lo[1] + template.shape[1],
         lo[2]:lo[2] + template.shape[2]] = template
    with torch.no_grad():
        proj = project_3d_to_2d(torch.from_numpy(cube),
                                torch.as_tensor(np.asarray(rotations), dtype=torch.float32))
    return np.clip(proj.numpy(), 0, None).astype(np.float32, copy=False)


def _ice_2d(shape: tuple[int, int], pixel_size: float, thickness: float, rng: np.random.Generator) -> np.ndarray:
    """Projected ice-density fluctuations: the line integral of the 3D ice field of the tomogram model.

    A 3D field of std ``s`` and Gaussian filter width ``l`` integrated over ``thickness`` has a
    standard deviation of ``s * sqrt(2 sqrt(pi) l thickness)``; in voxel units, divided by the
    pixel size.
    """
    target = ICE_STD * math.sqrt(2 * math.sqrt(math.pi) * ICE_SCALE_A * thickness) / pixel_size
    return gaussian_field(shape, ICE_SCALE_A / pixel_size, target, rng, max_factor=8)


def _place_projections(
    shape: tuple[int, int],
    pool: list[np.ndarray],
    rng: np.random.Generator,
    mode: str,
    target: float,
    max_failures: int = 60,
) -> tuple[np.ndarray, int, float]:
    """Non-overlapping projections of randomly rotated particles; (image, count, area fraction)."""
    image = np.zeros(shape, dtype=np.float32)
    occ = np.zeros(shape, dtype=bool)
    total = float(np.prod(shape))
    placement = Placement(mode, target, total, max_failures)
    goal, batches = placement.goal, 0
    # Projected area of a roughly round particle of V support voxels: ~1.2 V^(2/3) pixels.
    area_guess = float(np.mean([1.5 * float((t > 0.1 * t.max()).sum()) ** (2 / 3) for t in pool]))
    while not placement.done and batches < 200:
        batches += 1
        # Draw a batch of (template, orientation) pairs sized to what is still missing, and
        # project each template once per batch (one FFT of its padded cube).
        missing = goal - placement.n_placed if mode == "count" else (goal - placement.filled) / max(area_guess, 1.0)
        which = rng.integers(len(pool), size=int(np.clip(1.3 * missing + 4, 8, 1024)))
        rots = np.stack([random_rotation(rng) for _ in which])
        projections: list[np.ndarray | None] = [None] * len(which)
        for t in np.unique(which):
            idx = np.flatnonzero(which == t)
            for i, p in zip(idx, project_particles(pool[int(t)], rots[idx])):
                projections[i] = p
        for p in projections:
            if placement.done:
                break
            support = p > _SUPPORT_2D * float(p.max())
            placement.record(paste_somewhere(image, occ, p, support, rng))
    return image, placement.n_placed, placement.filled / total


def simulate_micrograph(
    shape: tuple[int, int] = (512, 512),
    *,
    pixel_size: float = 5.0,
    particles: dict[str, np.ndarray] | None = None,
    density: float | int = 0.2,
    defocus_um: float = 1.5,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    dose_total: float = 40.0,
    n_frames: int = 40,
    ice: bool = True,
    ice_thickness: float = 500.0,
    radiation_damage: bool = True,
    mean_free_path: float | None = 3500.0,
    contrast_volts: float = 2.0,
    invert: bool = False,
    seed: int = 0,
) -> SimulatedMicrograph:
    """Simulate a micrograph (full frame sum), its even/odd frame sums and its clean target.

    Parameters
    ----------
    shape : (Y, X) tuple of int, default=(512, 512)
        Pixels; each at least 16.
    pixel_size : float, default=5
        Å per pixel; particle maps must be at this voxel size (e.g. ``maps_5A``). Procedural
        particles are rendered at it (below ~2 Å their boxes get large and slow).
    particles : dict of name -> (Z, Y, X) ndarray, optional
        3D maps to project; default: procedural pseudo-proteins 30-80 Å in radius.
    density : float or int, default=0.2
        Fraction of the image covered by particle projections (float in [0, 1)) or number of
        particles (int).
    defocus_um : float, default=1.5
        Defocus in µm, positive is underfocus.
    voltage_kv, cs_mm, amplitude_contrast : float
        300 kV, 2.7 mm, 0.07 by default.
    dose_total : float, default=40
        Electron dose of the whole movie, e-/Å².
    n_frames : int, default=40
        Movie frames (at least 2); frame ``j`` (0-based) goes to the even sum if ``j`` is even.
    ice : bool, default=True
        Add low-frequency ice-density fluctuations.
    ice_thickness : float, default=500
        Ice thickness in Å (attenuation and the strength of the ice fluctuations).
    radiation_damage : bool, default=True
        Per-frame exposure filter (Grant & Grigorieff 2015): later frames carry less
        high-resolution signal, so E[odd] differs slightly from E[even].
    mean_free_path : float or None, default=3500
        Inelastic mean free path in Å (None: no attenuation).
    contrast_volts : float, default=2.0
        Potential of protein above vitreous ice, volts (approximate).
    invert : bool, default=False
        Flip the sign so protein is bright.
    seed : int, default=0

    Returns
    -------
    SimulatedMicrograph
        ``noisy``, ``even``, ``odd``, ``clean``, ``potential`` (Y, X) float32 arrays,
        ``pixel_size`` and ``params``.

    Raises
    ------
    ValueError
        On a bad parameter (one line, naming it).

    Examples
    --------
    >>> sim = simulate_micrograph((64, 64), seed=1)
    >>> sim.noisy.shape, sim.noisy.dtype
    ((64, 64), dtype('float32'))
    """
    shape = check_shape(shape, 2, minimum=16)
    pixel_size = positive("pixel_size", pixel_size)
    voltage_kv, dose_total, contrast_volts, defocus_um, cs_mm = check_imaging(
        voltage_kv, dose_total, contrast_volts, defocus_um, cs_mm)
    ice_thickness = non_negative("ice_thickness", ice_thickness)
    check_fraction("amplitude_contrast", amplitude_contrast)
    if isinstance(n_frames, bool) or not isinstance(n_frames, Integral) or n_frames < 2:
        raise ValueError(f"n_frames must be an integer >= 2 (even and odd frames), got {n_frames!r}")
    mean_free_path = optional_positive("mean_free_path", mean_free_path)
    check_integer("seed", seed)
    mode, target = density_target(density, "area")

    rng = np.random.default_rng(seed)
    pool = check_particles(particles) if particles is not None else procedural_particles(rng, pixel_size)
    potential, n_placed, area = _place_projections(shape, pool, rng, mode, target)
    if ice:
        potential += _ice_2d(shape, pixel_size, ice_thickness, rng)

    # --- frames: dose, damage, expected counts of the even and odd sums
    n_frames = int(n_frames)
    dose_frame = dose_total / n_frames
    exposure = (np.arange(n_frames) + 0.5) * dose_frame
    halves = [exposure[0::2], exposure[1::2]]
    n_half = np.array([len(h) for h in halves], dtype=np.float64)
    atten = math.exp(-ice_thickness / mean_free_path) if mean_free_path else 1.0
    e_px_frame = dose_frame * pixel_size**2 * atten  # expected background counts per frame

    sigma = interaction_constant(voltage_kv)
    phase = (sigma * contrast_volts * pixel_size) * potential
    contrast = image_contrast(np.stack([phase, phase]), pixel_size, defocus_um, voltage_kv, cs_mm,
                               amplitude_contrast, halves if radiation_damage else None)
    expected = (e_px_frame * n_half)[:, None, None] * np.clip(1.0 + contrast, 0.0, None)
    counts = rng.poisson(expected)
    halves_img = counts / (e_px_frame * n_half)[:, None, None] - 1.0
    w = n_half / n_frames
    noisy = w[0] * halves_img[0] + w[1] * halves_img[1]
    clean = w[0] * contrast[0] + w[1] * contrast[1]
    # Normalized to protein-voxel units like the tomogram: a fully transferred voxel is -1.
    unit = 2.0 * sigma * contrast_volts * pixel_size
    sign = -1.0 if invert else 1.0
    out = [np.ascontiguousarray(sign * a / unit, dtype=np.float32)
           for a in (noisy, halves_img[0], halves_img[1], clean)]

    params = {
        "kind": "micrograph",
        "shape": list(shape), "pixel_size": pixel_size,
        "particles": sorted(particles) if particles is not None else "procedural",
        "density": density, "defocus_um": defocus_um, "voltage_kv": voltage_kv, "cs_mm": cs_mm,
        "amplitude_contrast": float(amplitude_contrast), "dose_total": dose_total,
        "n_frames": n_frames, "ice": bool(ice), "ice_thickness": ice_thickness,
        "radiation_damage": bool(radiation_damage), "mean_free_path": mean_free_path,
        "contrast_volts": contrast_volts, "invert": bool(invert), "seed": int(seed),
        "dose_per_frame": dose_frame, "electrons_per_pixel": dose_total * pixel_size**2 * atten,
        "n_even_frames": int(n_half[0]), "n_odd_frames": int(n_half[1]),
        "interaction_constant": sigma, "n_particles": n_placed, "area_fraction": area,
        "relation": "noisy = (n_even * even + n_odd * odd) / n_frames; clean = E[noisy]",
    }
    return SimulatedMicrograph(noisy=out[0], even=out[1], odd=out[2], clean=out[3],
                               potential=potential.astype(np.float32), pixel_size=pixel_size, params=params)
