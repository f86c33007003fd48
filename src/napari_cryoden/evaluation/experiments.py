"""The test sets of ``cryoden benchmark``: the four experiments of van Gijn (2019, section 4), a
realistic crowded-tomogram experiment and simulated micrographs.

Every test set is made only from the :data:`HELD_OUT` proteins, which no shipped model was
trained on, and is fixed by its seed. Each item carries the noisy input, the clean target and
the noise standard deviation handed to BM4D/BM3D.

=============  ====  ===========================================================================
experiment     ndim  test set (all 64^3 at 10 Å/voxel unless stated)
=============  ====  ===========================================================================
control        3     thesis 4.1 / Table 2: one centred particle, missing wedge of a single-axis
                     tilt series to ±[50, 70]° and Gaussian noise at SNR log-uniform in
                     [0.1, 2] (the degradations of the training set, sec. 3.1)
saltpepper     3     thesis 4.2 / Table 3: one centred particle, 10 % salt and pepper instead
                     of the wedge and the Gaussian noise
unseen         3     thesis 4.3 / Table 4: one protein (3h84) in random orientations, ±60°
                     wedge, SNR 0.5 (one fixed degradation, as in the thesis)
multiple       3     thesis 4.4 / Table 5: 10-40 non-overlapping particles, ±60° wedge, SNR 0.5
realistic      3     12 crowded tomograms of 64 x 128 x 128 voxels (volume fraction 0.15, a vesicle,
                     ice), tilt series ±60° in 3° steps with CTF, dose and shot noise, weighted
                     back-projection (:func:`~napari_cryoden.simulate.simulate_tomogram`), in
                     three dose bands of 4 (:data:`DOSE_BANDS`: 15-30, 40-80 and 100-160 e-/Å²
                     total), defocus 2-5 µm (:func:`realistic_dose_band_set`)
micrographs    2     512 x 512 micrographs at 5 Å/pixel with CTF and shot noise, 40 frames
                     (:func:`~napari_cryoden.simulate.simulate_micrograph`)
=============  ====  ===========================================================================

The thesis's control set was a test split of its training particles; here every experiment uses
unseen proteins, so "control" differs from "unseen" only by its spread of degradations and by
mixing both held-out proteins.

References
----------
.. [1] van Gijn, D. (2019). Denoising Cryo-Electron Tomograms Using Deep Learning. Master's
   thesis, Utrecht University, sections 3.1 and 4.1-4.4, tables 2-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [
    "DOSE_BANDS", "EXPERIMENTS", "HELD_OUT", "REALISTIC_SET", "Experiment", "TestItem", "half_sum_noise_std",
    "micrograph_held_out_set", "realistic_dose_band_set", "realistic_held_out_set",
]

#: Proteins never used in training; every test set is made from these alone.
HELD_OUT = ("1u6g", "3h84")


@dataclass
class TestItem:
    """One test volume (or image).

    Attributes
    ----------
    noisy, clean : (Z, Y, X) or (Y, X) ndarray of float32
    noise_std : float
        Standard deviation handed to BM4D/BM3D as ``sigma_psd``: for thesis pairs the standard
        deviation of ``noisy - clean`` (an oracle), for simulated tomograms and micrographs the
        estimate from the even/odd halves (:func:`half_sum_noise_std`).
    dose : float or None
        Total dose of the tilt series, e-/Å² (simulated tomograms only).
    defocus_um : float or None
        Defocus in µm (simulated tomograms only).
    band : str or None
        Dose band of the item (:data:`DOSE_BANDS`; items of :func:`realistic_dose_band_set`
        only). ``cryoden benchmark`` reports medians per band and runs BM4D on the first items
        of each band.
    """

    noisy: np.ndarray
    clean: np.ndarray
    noise_std: float
    dose: float | None = None
    defocus_um: float | None = None
    band: str | None = None


@dataclass(frozen=True)
class Experiment:
    """One experiment of ``cryoden benchmark``.

    Attributes
    ----------
    name : str
    title : str
        Heading in the report, with the thesis table it mirrors.
    ndim : int
        3 for tomograms (3D models, BM4D), 2 for micrographs (2D models, BM3D).
    voxel_size : float
        Å per voxel of the test set (and of the particle maps it needs).
    default_n : int
        Test items when ``n`` is not given.
    seed : int
        Base seed of the test set.
    make : callable(maps, n, seed) -> list of TestItem
    """

    name: str
    title: str
    ndim: int
    voxel_size: float
    default_n: int
    seed: int
    make: Callable[[dict, int, int], list]


def _held_out(maps: dict[str, np.ndarray], names=HELD_OUT) -> dict[str, np.ndarray]:
    parts = {k: maps[k] for k in names if k in maps}
    if not parts:
        raise ValueError(f"none of the held-out particles {', '.join(names)} is in the maps folder")
    return parts


def _oracle_item(noisy: np.ndarray, clean: np.ndarray) -> TestItem:
    return TestItem(noisy, clean, float(np.std(noisy.astype(np.float64) - clean)))


def _thesis_set(maps, n, seed, *, names=HELD_OUT, n_particles=(1, 1), snr=None, tilt=None, noise="gaussian"):
    from ..simulate import thesis_pair

    parts = list(_held_out(maps, names).values())
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(n_particles[0], n_particles[1] + 1))
        s = float(np.exp(rng.uniform(math.log(snr[0]), math.log(snr[1])))) if isinstance(snr, tuple) else snr
        t = float(rng.uniform(*tilt)) if isinstance(tilt, tuple) else tilt
        # alternate the proteins of single-particle sets so both are always present
        pool = [parts[i % len(parts)]] if k == 1 else parts
        out.append(_oracle_item(*thesis_pair(pool, rng, box=64, n_particles=k, snr=s, tilt_max_deg=t, noise=noise)))
    return out


def half_sum_noise_std(even: np.ndarray, odd: np.ndarray, n_even: int, n_odd: int) -> float:
    """Noise standard deviation of the full sum, from its even and odd half sums.

    With half sums normalised per frame (``noisy = (n_even * even + n_odd * odd) / n``, as the
    simulators write them), the halves hold the same signal and independent noise of variance
    c / n_even and c / n_odd, so ``var(even - odd) = c n / (n_even n_odd)`` and the full sum's
    noise variance ``c / n`` is ``var(even - odd) n_even n_odd / n²``: ``std(even - odd) / 2``
    for equal halves.
    """
    n = n_even + n_odd
    return float(np.std(np.asarray(even, np.float64) - np.asarray(odd, np.float64)) * math.sqrt(n_even * n_odd) / n)


#: The realistic held-out set in words (model cards).
REALISTIC_SET = ("Volume fraction 0.15, one vesicle, ice, ±60° in 3° steps, defocus 2, 3, 4, 5 µm and dose "
                 "120, 100, 80, 60 e-/Å² (cycled), 10 Å/voxel; see :func:`~napari_cryoden.simulate.simulate_tomogram`.")

#: Dose bands of the realistic benchmark set (:func:`realistic_dose_band_set`): band name ->
#: the total doses (e-/Å², whole tilt series) of its tomograms, lowest band first.
DOSE_BANDS: dict[str, tuple[float, ...]] = {
    "low": (15.0, 20.0, 25.0, 30.0),
    "mid": (40.0, 50.0, 65.0, 80.0),
    "high": (100.0, 120.0, 140.0, 160.0),
}

#: Defoci (µm) that the items of each dose band cycle through.
_BAND_DEFOCI = (2.0, 3.0, 4.0, 5.0)


def _realistic_item(parts: dict[str, np.ndarray], shape: tuple[int, int, int], *, dose: float, defocus_um: float,
                    seed: int, band: str | None = None) -> TestItem:
    """One realistic tomogram of the held-out set: the single home of its simulation settings."""
    from ..simulate.tomogram import simulate_tomogram

    sim = simulate_tomogram(tuple(shape), particles=parts, density=0.15, membranes=1, defocus_um=defocus_um,
                            dose_total=dose, seed=seed)
    return TestItem(sim.noisy, sim.clean, half_sum_noise_std(sim.even, sim.odd, 1, 1), dose=dose,
                    defocus_um=defocus_um, band=band)


def realistic_held_out_set(maps: dict[str, np.ndarray], *, n: int = 4, seed: int = 54321,
                           shape: tuple[int, int, int] = (64, 128, 128), items: bool = False):
    """The fixed realistic held-out set of the model cards: crowded tomograms of :data:`HELD_OUT` proteins only.

    Tomogram i (of `n`): volume fraction 0.15, one vesicle, ice, ±60° in 3° steps, defocus
    2, 3, 4, 5 µm and total dose 120, 100, 80, 60 e-/Å² (both i mod 4), 10 Å/voxel, seed
    ``seed + i`` (:data:`REALISTIC_SET`); see :func:`~napari_cryoden.simulate.simulate_tomogram`.
    ``cryoden benchmark`` uses the larger :func:`realistic_dose_band_set`, made by the same code.

    Parameters
    ----------
    maps : dict of name -> (Z, Y, X) ndarray
        Particle maps at 10 Å/voxel (``load_particle_maps``); only :data:`HELD_OUT` ones are used.
    n : int, default=4
        Number of tomograms.
    seed : int, default=54321
        Seed of tomogram 0.
    shape : (Z, Y, X) tuple of int, default=(64, 128, 128)
        Voxels of each tomogram.
    items : bool, default=False
        Return :class:`TestItem` instead of pairs.

    Returns
    -------
    list
        `n` (noisy, clean) pairs of (Z, Y, X) float32 arrays, or with ``items=True`` :class:`TestItem`
        with the noise standard deviation from the even/odd half tomograms, the dose (e-/Å²) and
        the defocus (µm).

    Raises
    ------
    ValueError
        If none of the held-out proteins is in `maps`.
    """
    parts = _held_out(maps)
    out = []
    for i in range(n):
        it = _realistic_item(parts, shape, dose=120.0 - 20 * (i % 4), defocus_um=2.0 + i % 4, seed=seed + i)
        out.append(it if items else (it.noisy, it.clean))
    return out


def realistic_dose_band_set(maps: dict[str, np.ndarray], *, n: int = 12, seed: int = 54321,
                            shape: tuple[int, int, int] = (64, 128, 128),
                            bands: dict[str, tuple[float, ...]] | None = None) -> list[TestItem]:
    """The realistic benchmark set: crowded tomograms of :data:`HELD_OUT` proteins in dose bands.

    Tomograms as in :func:`realistic_held_out_set` (volume fraction 0.15, one vesicle, ice, ±60°
    in 3° steps, 10 Å/voxel), but spread over the dose bands: with B bands, tomogram i (of `n`)
    is in band ``b = i mod B`` and takes the band's dose ``j mod len(doses)`` with ``j = i // B``,
    defocus ``(2, 3, 4, 5)[(j + b) mod 4]`` µm (each band sees every defocus, paired with
    different doses), seed ``seed + i``. By default (:data:`DOSE_BANDS`, ``n=12``): 4 tomograms
    per band, total doses low 15-30, mid 40-80 and high 100-160 e-/Å².

    Parameters
    ----------
    maps : dict of name -> (Z, Y, X) ndarray
        Particle maps at 10 Å/voxel; only :data:`HELD_OUT` ones are used.
    n : int, default=12
        Number of tomograms (bands are cycled, so ``n`` a multiple of the band count keeps them even).
    seed : int, default=54321
        Seed of tomogram 0.
    shape : (Z, Y, X) tuple of int, default=(64, 128, 128)
        Voxels of each tomogram.
    bands : dict of str -> tuple of float, optional
        Band name -> total doses in e-/Å² (default :data:`DOSE_BANDS`).

    Returns
    -------
    list of TestItem
        (Z, Y, X) float32 ``noisy`` and ``clean``, the noise standard deviation from the even/odd
        half tomograms, ``dose`` (e-/Å²), ``defocus_um`` and ``band``.

    Raises
    ------
    ValueError
        If none of the held-out proteins is in `maps`, `bands` is empty, a band has no dose, or a
        dose is not positive.
    """
    bands = DOSE_BANDS if bands is None else bands
    if not bands or any(not doses for doses in bands.values()):
        raise ValueError("bands must name at least one band, each with at least one dose")
    if any(d <= 0 for doses in bands.values() for d in doses):
        raise ValueError(f"doses must be positive e-/Å², got {bands}")
    parts = _held_out(maps)
    names = list(bands)
    out = []
    for i in range(n):
        b, j = i % len(names), i // len(names)
        doses = bands[names[b]]
        out.append(_realistic_item(parts, shape, dose=float(doses[j % len(doses)]),
                                   defocus_um=_BAND_DEFOCI[(j + b) % len(_BAND_DEFOCI)], seed=seed + i,
                                   band=names[b]))
    return out


def micrograph_held_out_set(maps: dict[str, np.ndarray], *, n: int = 8, seed: int = 24680,
                            shape: tuple[int, int] = (512, 512), pixel_size: float = 5.0):
    """The fixed held-out set of micrographs: :data:`HELD_OUT` proteins only.

    Micrograph i (of `n`): 512 x 512 pixels at 5 Å/pixel, dose 20, 30, 40, 60 e-/Å² (i mod 4) in
    40 frames, defocus 1.0, 1.5, 2.0, 2.5 µm (i // 2 mod 4), particle area fraction 0.1, 0.2,
    0.3 (i mod 3), ice 500 Å, seed 24680 + i; see :func:`~napari_cryoden.simulate.simulate_micrograph`.

    Returns
    -------
    list of SimulatedMicrograph
        With ``noisy`` (full frame sum), ``even``, ``odd`` and ``clean``.

    Raises
    ------
    ValueError
        If none of the held-out proteins is in `maps`.
    """
    from ..simulate import simulate_micrograph

    parts = _held_out(maps)
    return [simulate_micrograph(tuple(shape), pixel_size=pixel_size, particles=parts, density=(0.1, 0.2, 0.3)[i % 3],
                                defocus_um=(1.0, 1.5, 2.0, 2.5)[(i // 2) % 4], dose_total=(20.0, 30.0, 40.0, 60.0)[i % 4],
                                n_frames=40, seed=seed + i)
            for i in range(n)]


def _micrograph_items(maps, n, seed):
    return [TestItem(s.noisy, s.clean, half_sum_noise_std(s.even, s.odd, s.params["n_even_frames"],
                                                          s.params["n_odd_frames"]))
            for s in micrograph_held_out_set(maps, n=n, seed=seed)]


#: The experiments, in report order, each with its own base seed (``cryoden benchmark --seed``
#: adds an offset). The micrograph set at offset 0 is the held-out set of the model cards; the
#: realistic experiment is the dose-band set (:func:`realistic_dose_band_set`), larger than the
#: cards' :func:`realistic_held_out_set` but simulated by the same code.
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("control", "Control: single particles (thesis Table 2)", 3, 10.0, 12, 1000,
               lambda maps, n, seed: _thesis_set(maps, n, seed, snr=(0.1, 2.0), tilt=(50.0, 70.0))),
    Experiment("saltpepper", "Salt-and-pepper noise (thesis Table 3)", 3, 10.0, 12, 1001,
               lambda maps, n, seed: _thesis_set(maps, n, seed, noise="salt-and-pepper")),
    Experiment("unseen", "Unseen particle, one protein (thesis Table 4)", 3, 10.0, 12, 1002,
               lambda maps, n, seed: _thesis_set(maps, n, seed, names=("3h84",), snr=0.5, tilt=60.0)),
    Experiment("multiple", "Multiple particles (thesis Table 5)", 3, 10.0, 12, 1003,
               lambda maps, n, seed: _thesis_set(maps, n, seed, n_particles=(10, 40), snr=0.5, tilt=60.0)),
    Experiment("realistic", "Realistic crowded tomograms in three dose bands (tilt series, CTF, dose, WBP)", 3, 10.0,
               12, 54321, lambda maps, n, seed: realistic_dose_band_set(maps, n=n, seed=seed)),
    Experiment("micrographs", "Simulated micrographs, 2D (even/odd frame sums)", 2, 5.0, 8, 24680,
               lambda maps, n, seed: _micrograph_items(maps, n, seed)),
)}
