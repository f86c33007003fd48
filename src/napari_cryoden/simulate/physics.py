"""The physics both simulators share: electron optics, the CTF, radiation damage, image formation.

:mod:`napari_cryoden.simulate.tomogram` (a tilt series) and
:mod:`napari_cryoden.simulate.micrograph` (the frame sums of a movie) image the specimen density
of :mod:`napari_cryoden.simulate.specimen` with the functions here.

Phase
    The phase of a projection is ``sigma * contrast_volts * voxel_size * sum(density)``,
    ``sigma`` the interaction constant (:func:`interaction_constant`; Kirkland, Advanced
    Computing in Electron Microscopy, 2020) and the sum running along the beam.
Image formation
    Weak-phase-object approximation (:func:`image_contrast`): the expected intensity, relative
    to the incident beam, is ``1 - 2 * (CTF * E_dose) ⊛ phase``, with the CTF of
    :func:`torch_ctf.calculate_ctf_2d` (:func:`ctf_2d`; positive in its first lobe for
    underfocus, so protein is dark, as in real data) and the radiation-damage filter
    ``E_dose = exp(-N / (2 N_e(k)))`` of Grant & Grigorieff (2015, eLife 4:e06980), ``N`` the
    exposure the image has received (mid-exposure) and ``N_e(k) = 0.245 k^-1.665 + 2.81``
    e-/Å² their fitted critical exposure at 300 kV (:func:`critical_exposure`).

Detector noise
    Counting detectors spread some electrons' charge over neighbouring pixels, so their noise is
    not white. With a ``detector_correlation`` rho > 0 the shot noise of each image (the counts
    minus their expectation) is filtered along Y and X by the 3-tap kernel of
    :func:`detector_kernel`, which keeps its variance and mean and gives neighbouring pixels the
    correlation rho (diagonal neighbours rho²); the expected image is untouched, so a clean
    target stays the expectation of the noisy image, and independent halves stay independent.

Arrays are (Y, X) images or (n, Y, X) stacks; lengths are in Å, defocus in µm, voltage in kV,
spherical aberration in mm and exposure in e-/Å².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

__all__ = [
    "Simulated",
    "correlate_detector_noise",
    "critical_exposure",
    "ctf_2d",
    "detector_kernel",
    "detector_tap",
    "ctf_padding",
    "electron_wavelength",
    "image_contrast",
    "interaction_constant",
]


@dataclass(repr=False)
class Simulated:
    """What both simulators return first: the images and the specimen density.

    See :class:`~napari_cryoden.simulate.SimulatedTomogram` ((Z, Y, X) arrays) and
    :class:`~napari_cryoden.simulate.SimulatedMicrograph` ((Y, X) arrays), all float32.
    """

    noisy: np.ndarray
    even: np.ndarray
    odd: np.ndarray
    clean: np.ndarray
    potential: np.ndarray


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


def ctf_padding(pixel_size: float, defocus_um: float, voltage_kv: float, cs_mm: float) -> int:
    """Pixels of padding that hold the CTF's delocalization at Nyquist (plus a margin).

    `pixel_size` in Å, `defocus_um` in µm, `voltage_kv` in kV, `cs_mm` in mm; an int >= 4.
    """
    lam = electron_wavelength(voltage_kv)
    k = 0.5 / pixel_size
    deloc = lam * abs(defocus_um) * 1e4 * k + cs_mm * 1e7 * lam**3 * k**3
    return int(math.ceil(deloc / pixel_size)) + 4


def image_contrast(
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
    pixel_size : float
        Å per pixel.
    defocus_um, voltage_kv, cs_mm, amplitude_contrast : float
        The microscope, as for :func:`ctf_2d`.
    exposure : sequence of n floats or 1D arrays, or None
        Exposure (e-/Å²) each image has received, for the damage filter; an array averages
        the filters of several frames (a frame sum). None for no damage.

    Returns
    -------
    (n, H, W) ndarray of float32
        Computed with the images zero-padded to at least ``H + 2 * ctf_padding(...)`` (and
        likewise W), so the CTF's delocalization does not wrap around, then cropped back.
    """
    n, h, w = phase.shape
    pad = ctf_padding(pixel_size, defocus_um, voltage_kv, cs_mm)
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


#: Largest neighbour correlation a 3-tap kernel (a, 1, a) can give: 1/sqrt(2), at a = 1/sqrt(2).
MAX_DETECTOR_CORRELATION = 0.7


def detector_tap(rho):
    """The outer tap `a` of the 3-tap filter ``(a, 1, a)`` whose filtered white noise has the
    neighbour correlation `rho`: the smaller root of ``2a / (1 + 2a²) = rho``, written
    ``rho / (1 + sqrt(1 - 2 rho²))`` so that it is 0 at rho = 0.

    `rho` is a float, a numpy array or a torch tensor (the batched simulator's per-item values),
    in [0, 0.7]; the result has its type. Not checked here (see :func:`detector_kernel`).
    """
    return rho / (1 + (1 - 2 * rho * rho) ** 0.5)


def detector_kernel(correlation: float) -> np.ndarray:
    """The 3-tap filter ``(a, 1, a) / sqrt(1 + 2 a²)`` that gives white noise the neighbour `correlation`.

    The lag-1 autocorrelation of white noise filtered by ``(a, 1, a)`` is ``2a / (1 + 2a²)``; `a`
    is its smaller root for `correlation` (:func:`detector_tap`), and the normalisation keeps the
    variance.

    Parameters
    ----------
    correlation : float
        Correlation coefficient between neighbouring pixels, in [0, 0.7].

    Returns
    -------
    (3,) ndarray of float64
        Sums of squares to 1.

    Raises
    ------
    ValueError
        If `correlation` is outside [0, 0.7].
    """
    rho = float(correlation)
    if not 0.0 <= rho <= MAX_DETECTOR_CORRELATION:
        raise ValueError(f"detector_correlation must be in [0, {MAX_DETECTOR_CORRELATION}], got {correlation!r}")
    a = detector_tap(rho)
    return np.array([a, 1.0, a]) / math.sqrt(1.0 + 2.0 * a * a)


def correlate_detector_noise(counts: np.ndarray, expected: np.ndarray, correlation: float) -> np.ndarray:
    """Counts whose noise is correlated between neighbouring detector pixels.

    ``expected + k_y ⊛ k_x ⊛ (counts - expected)``, ``k`` the :func:`detector_kernel` of
    `correlation` along the last two axes (Y, X), edges extended by their nearest pixel.

    Parameters
    ----------
    counts, expected : (..., Y, X) ndarray
        Poisson draws and their expectations (electrons per pixel).
    correlation : float
        Neighbour correlation of the noise, in [0, 0.7]; 0 returns `counts` as float32.

    Returns
    -------
    (..., Y, X) ndarray of float32
        Same mean and noise variance as `counts` (away from the edges); no longer integers.
    """
    from scipy.ndimage import correlate1d

    k = detector_kernel(correlation)
    noise = np.asarray(counts, dtype=np.float32) - expected
    if k[0] > 0:
        noise = correlate1d(correlate1d(noise, k, axis=-1, mode="nearest"), k, axis=-2, mode="nearest")
    return (expected + noise).astype(np.float32, copy=False)
