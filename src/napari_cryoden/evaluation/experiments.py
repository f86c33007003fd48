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
realistic      3     crowded tomograms of 64 x 128 x 128 voxels (volume fraction 0.15, a vesicle,
                     ice), tilt series ±60° in 3° steps with CTF, dose and shot noise, weighted
                     back-projection (:func:`~napari_cryoden.simulate.simulate_tomogram`)
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
    "EXPERIMENTS", "HELD_OUT", "REALISTIC_SET", "Experiment", "TestItem", "half_sum_noise_std", "micrograph_held_out_set",
    "realistic_held_out_set",
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
    """

    noisy: np.ndarray
    clean: np.ndarray
    noise_std: float


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


def realistic_held_out_set(maps: dict[str, np.ndarray], *, n: int = 4, seed: int = 54321,
                           shape: tuple[int, int, int] = (64, 128, 128), items: bool = False):
    """The fixed realistic held-out set: crowded tomograms of :data:`HELD_OUT` proteins only.

    Volume fraction 0.15, one vesicle, ice, ±60° in 3° steps, defocus 2, 3, 4, 5 µm and dose
    120, 100, 80, 60 e-/Å² (cycled), 10 Å/voxel (:data:`REALISTIC_SET`); see
    :func:`~napari_cryoden.simulate.simulate_tomogram`.

    Returns a list of (noisy, clean) pairs, or of :class:`TestItem` with ``items=True`` (noise
    standard deviation from the even/odd half tomograms).

    Raises
    ------
    ValueError
        If none of the held-out proteins is in `maps`.
    """
    from ..simulate.tomogram import simulate_tomogram

    parts = _held_out(maps)
    out = []
    for i in range(n):
        sim = simulate_tomogram(shape, particles=parts, density=0.15, membranes=1, defocus_um=2.0 + i % 4,
                                dose_total=120.0 - 20 * (i % 4), seed=seed + i)
        out.append(TestItem(sim.noisy, sim.clean, half_sum_noise_std(sim.even, sim.odd, 1, 1)) if items
                   else (sim.noisy, sim.clean))
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
#: adds an offset). The realistic and micrograph sets at offset 0 are the held-out sets of the
#: model cards.
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("control", "Control: single particles (thesis Table 2)", 3, 10.0, 12, 1000,
               lambda maps, n, seed: _thesis_set(maps, n, seed, snr=(0.1, 2.0), tilt=(50.0, 70.0))),
    Experiment("saltpepper", "Salt-and-pepper noise (thesis Table 3)", 3, 10.0, 12, 1001,
               lambda maps, n, seed: _thesis_set(maps, n, seed, noise="salt-and-pepper")),
    Experiment("unseen", "Unseen particle, one protein (thesis Table 4)", 3, 10.0, 12, 1002,
               lambda maps, n, seed: _thesis_set(maps, n, seed, names=("3h84",), snr=0.5, tilt=60.0)),
    Experiment("multiple", "Multiple particles (thesis Table 5)", 3, 10.0, 12, 1003,
               lambda maps, n, seed: _thesis_set(maps, n, seed, n_particles=(10, 40), snr=0.5, tilt=60.0)),
    Experiment("realistic", "Realistic crowded tomograms (tilt series, CTF, dose, WBP)", 3, 10.0, 4, 54321,
               lambda maps, n, seed: realistic_held_out_set(maps, n=n, seed=seed, items=True)),
    Experiment("micrographs", "Simulated micrographs, 2D (even/odd frame sums)", 2, 5.0, 8, 24680,
               lambda maps, n, seed: _micrograph_items(maps, n, seed)),
)}
