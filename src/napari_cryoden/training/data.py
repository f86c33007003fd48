"""Batches of (noisy, clean) training patches, normalised as at inference time."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..inference.normalize import robust_stats
from ..simulate.physics import MAX_DETECTOR_CORRELATION
from ..simulate.thesis import thesis_pair
from .patches import apply_symmetry, draw_flips, draw_square, stack_batch

__all__ = ["MicrographPairs", "MixedStream", "RealisticStream", "ThesisStream", "normalize_pair", "parallel_stream", "worker_seeds"]


def normalize_pair(noisy: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise both volumes with the noisy volume's robust statistics (as inference does).

    The network then learns to output the clean signal in the noisy input's normalised units,
    so that :func:`~napari_cryoden.inference.denoise` can map it back to the input's scale.
    """
    center, scale = robust_stats(noisy)
    return (noisy - center) / scale, (clean - center) / scale


class ThesisStream:
    """Endless batches of the thesis dataset (van Gijn 2019, section 3.1), made on the fly.

    Each sample is a cube of `patch` voxels with one centred particle (probability
    `p_single`) or 2-`max_particles` randomly placed ones, a missing wedge of a tilt series with
    maximum tilt drawn from `tilt_range`, and Gaussian noise with an SNR drawn log-uniformly from
    `snr_range`. Augmentation: flips along Z, Y, X (they keep the wedge about Y) and a random
    contrast sign (dark or bright particles).

    Parameters
    ----------
    particles : sequence of ndarray
        Particle maps (see :func:`~napari_cryoden.simulate.load_particle_maps`).
    rng : numpy.random.Generator
    batch_size, patch : int
    p_single : float, default=0.3
    max_particles : int, default=40
    snr_range : (float, float), default=(0.1, 2.0)
    tilt_range : (float, float), default=(50, 70)
        Degrees.

    Yields
    ------
    noisy, clean : torch.Tensor of shape (batch_size, 1, patch, patch, patch), float32
    """

    def __init__(
        self,
        particles: Sequence[np.ndarray],
        rng: np.random.Generator,
        *,
        batch_size: int = 4,
        patch: int = 32,
        p_single: float = 0.3,
        max_particles: int = 40,
        snr_range: tuple[float, float] = (0.1, 2.0),
        tilt_range: tuple[float, float] = (50.0, 70.0),
    ):
        self.particles = list(particles)
        self.rng = rng
        self.batch_size, self.patch = batch_size, patch
        self.p_single, self.max_particles = p_single, max_particles
        self.snr_range, self.tilt_range = snr_range, tilt_range

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        n = 1 if rng.random() < self.p_single else int(rng.integers(2, self.max_particles + 1))
        snr = float(np.exp(rng.uniform(*np.log(self.snr_range))))
        tilt = float(rng.uniform(*self.tilt_range))
        noisy, clean = thesis_pair(self.particles, rng, box=self.patch, n_particles=n, snr=snr, tilt_max_deg=tilt)
        return _augment(*normalize_pair(noisy, clean), rng)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return _batches(self.sample, self.batch_size)


class RealisticStream:
    """Endless batches of patches of realistic simulated tomograms (noisy, clean target).

    Every `volumes_every` patches a new tomogram is simulated with
    :func:`~napari_cryoden.simulate.simulate_tomogram` (crowded particles, vesicles, ice, a tilt
    series with CTF, radiation damage and shot noise, weighted back-projection), with its
    imaging parameters drawn from the ranges below. Both volumes are normalised with the whole
    noisy tomogram's robust statistics, as :func:`~napari_cryoden.inference.denoise` does, and
    random cubes are cut from them. Augmentation: flips along Z, Y, X (they keep the tilt axis)
    and a random contrast sign.

    Parameters
    ----------
    particles : dict of name -> ndarray
        Particle maps at `voxel_size`.
    rng : numpy.random.Generator
    batch_size, patch : int
    shape : (Z, Y, X) tuple of int, default=(64, 128, 128)
        Size of each simulated tomogram.
    patches_per_volume : int, default=16
    voxel_size : float, default=10
        Å per voxel.
    density, defocus_um, dose_total, tilt_range : (float, float)
        Uniform ranges: particle volume fraction, defocus (µm), total dose (e-/Å²), maximum tilt (°).
    max_membranes : int, default=2
    dose_log : bool, default=False
        Draw the total dose log-uniformly in `dose_total` (as many low-dose tomograms between 15
        and 30 e-/Å² as between 80 and 160).
    ice_thickness : (float, float), optional
        Uniform range of the specimen thickness in Å that the beam crosses (at least the slab's,
        ``shape[0] * voxel_size``; see :func:`~napari_cryoden.simulate.simulate_tomogram`).
        None: the slab's.
    detector_correlation : (float, float), optional
        Uniform range of the detector noise's neighbour correlation, in [0, 0.7]. None: white.

    The optional ranges draw no random numbers when they are None, so a stream without them
    makes the same batches as before they existed.

    Yields
    ------
    noisy, clean : torch.Tensor of shape (batch_size, 1, patch, patch, patch), float32
    """

    def __init__(
        self,
        particles: dict[str, np.ndarray],
        rng: np.random.Generator,
        *,
        batch_size: int = 8,
        patch: int = 32,
        shape: tuple[int, int, int] = (64, 128, 128),
        patches_per_volume: int = 16,
        voxel_size: float = 10.0,
        density: tuple[float, float] = (0.05, 0.25),
        defocus_um: tuple[float, float] = (1.5, 5.0),
        dose_total: tuple[float, float] = (40.0, 160.0),
        tilt_range: tuple[float, float] = (50.0, 65.0),
        max_membranes: int = 2,
        dose_log: bool = False,
        ice_thickness: tuple[float, float] | None = None,
        detector_correlation: tuple[float, float] | None = None,
    ):
        if min(shape) < patch:
            raise ValueError(f"patch {patch} does not fit in simulated tomograms of shape {shape}")
        self.particles, self.rng = dict(particles), rng
        self.batch_size, self.patch, self.shape = batch_size, patch, tuple(shape)
        self.patches_per_volume, self.voxel_size = patches_per_volume, voxel_size
        self.ranges = {"density": density, "defocus_um": defocus_um, "dose_total": dose_total, "tilt_range": tilt_range}
        slab = shape[0] * voxel_size
        for key, value, lo, hi in (("ice_thickness", ice_thickness, slab, math.inf),
                                   ("detector_correlation", detector_correlation, 0.0, MAX_DETECTOR_CORRELATION)):
            if value is not None:
                pair = tuple(float(v) for v in value)
                if len(pair) != 2 or not lo - 1e-6 <= pair[0] <= pair[1] <= hi:
                    raise ValueError(f"{key} must be a pair (low, high) within [{lo:g}, {hi:g}], got {value!r}")
                self.ranges[key] = pair
        self.max_membranes, self.dose_log = max_membranes, bool(dose_log)
        self._volume: tuple[np.ndarray, np.ndarray] | None = None
        self._left = 0

    def parameters(self) -> dict:
        """Draw the imaging parameters of the next tomogram."""
        rng = self.rng
        kw = {}
        for k, (lo, hi) in self.ranges.items():
            if k == "dose_total" and self.dose_log:
                kw[k] = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            else:
                kw[k] = float(rng.uniform(lo, hi))
        kw["membranes"] = int(rng.integers(0, self.max_membranes + 1))
        kw["seed"] = int(rng.integers(2**31))
        return kw

    def _new_volume(self) -> None:
        from ..simulate.tomogram import simulate_tomogram

        sim = simulate_tomogram(self.shape, voxel_size=self.voxel_size, particles=self.particles, **self.parameters())
        self._volume = normalize_pair(sim.noisy, sim.clean)
        self._left = self.patches_per_volume

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        if self._left <= 0:
            self._new_volume()
        self._left -= 1
        noisy, clean = self._volume
        rng, p = self.rng, self.patch
        lo = [int(rng.integers(0, n - p + 1)) for n in noisy.shape]
        sl = tuple(slice(a, a + p) for a in lo)
        return _augment(noisy[sl], clean[sl], rng)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return _batches(self.sample, self.batch_size)


class MixedStream:
    """Batches whose samples come from several streams, each picked with a given probability.

    Parameters
    ----------
    streams : sequence of objects with a ``sample()`` method
    weights : sequence of float
        Relative probabilities.
    rng : numpy.random.Generator
    batch_size : int
    """

    def __init__(self, streams, weights, rng: np.random.Generator, *, batch_size: int = 8):
        w = np.asarray(weights, dtype=float)
        if len(w) != len(streams) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("give one non-negative weight per stream, not all zero")
        self.streams, self.p, self.rng, self.batch_size = list(streams), w / w.sum(), rng, batch_size

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        return self.streams[int(self.rng.choice(len(self.streams), p=self.p))].sample()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return _batches(self.sample, self.batch_size)


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random flips along Z, Y, X (they keep a tilt axis along Y) and contrast sign."""
    flips = draw_flips(rng, 3)
    sign = -1.0 if rng.random() < 0.5 else 1.0
    x, y = apply_symmetry((x, y), flips=flips, sign=sign)
    return x, y


def _batches(sample, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield stack_batch([sample() for _ in range(batch_size)])


# --------------------------------------------------------------------------------------------
# Parallel generation: one independent copy of a stream in each DataLoader worker process


def worker_seeds(seed: int, workers: int) -> list[np.random.SeedSequence]:
    """The independent seeds of `workers` generator processes, derived from one base `seed`.

    ``numpy.random.SeedSequence(seed).spawn(workers)``: child sequences whose streams do not
    overlap each other nor the base sequence's (NumPy's documented way to seed parallel work).

    Returns
    -------
    list of numpy.random.SeedSequence
        One per worker, in worker order.
    """
    return np.random.SeedSequence(int(seed)).spawn(int(workers))


class _WorkerStream(IterableDataset):
    """``factory(*args, rng=..., **kwargs)`` iterated in each DataLoader worker with that worker's seed.

    A module-level class holding only the factory and plain arguments, so that it pickles for the
    ``spawn`` start method as well as ``fork``.
    """

    def __init__(self, factory: Callable[..., Iterable], args: tuple, kwargs: dict, seed: int):
        self.factory, self.args, self.kwargs, self.seed = factory, tuple(args), dict(kwargs), int(seed)

    def __iter__(self):
        info = get_worker_info()
        if info is None:
            raise RuntimeError("_WorkerStream runs in DataLoader worker processes only (workers >= 1)")
        torch.set_num_threads(1)  # each worker one thread: N workers must not each take every core
        rng = np.random.default_rng(worker_seeds(self.seed, info.num_workers)[info.id])
        return iter(self.factory(*self.args, rng=rng, **self.kwargs))


def parallel_stream(factory: Callable[..., Iterable], *args: Any, seed: int, workers: int = 0,
                    prefetch: int = 2, pin_memory: bool = False, context: str | None = None,
                    **kwargs: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """A training stream made in `workers` processes, each with its own seed (or in-process with 0).

    The stream is ``factory(*args, rng=rng, **kwargs)``, e.g. :class:`ThesisStream`,
    :class:`RealisticStream` or the recipes' mixed stream
    (:func:`napari_cryoden.recipes.recipe_stream`); it must be an endless iterable of
    batches. With ``workers=0`` it is built once in this process with
    ``rng = numpy.random.default_rng(seed)`` and returned as it is, so the batches are the same
    as building it by hand. With ``workers=N`` every worker of a
    :class:`torch.utils.data.DataLoader` builds its own copy with the generator seeded by
    :func:`worker_seeds` ``(seed, N)[worker]`` and runs torch on one thread; the loader takes
    the batches from the workers in turn (batch k from worker k mod N), so a run is reproducible
    for a given `seed` and `N`, and the workers' batches are independent draws. They are not the
    batches of ``workers=0`` (other seeds), but follow the same distribution.

    Parameters
    ----------
    factory : callable
        Called as ``factory(*args, rng=numpy.random.Generator, **kwargs)``; returns an endless
        iterable of ``(noisy, clean)`` float32 tensors of shape (N, 1, Z, Y, X). For
        ``workers >= 1`` it and its arguments must pickle (a module-level function or class and
        plain data such as arrays, dicts and numbers; no lambda) when the start method is
        ``spawn``.
    *args, **kwargs
        Passed to `factory`.
    seed : int
        Base seed.
    workers : int, default=0
        Worker processes; 0 builds the stream in this process.
    prefetch : int, default=2
        Batches each worker prepares ahead (``prefetch_factor``).
    pin_memory : bool, default=False
        Put the batches in page-locked memory (faster copies to a CUDA device).
    context : {None, "fork", "spawn", "forkserver"}
        Start method of the workers (default: the platform's).

    Returns
    -------
    iterable of (noisy, clean) torch.Tensor
        ``workers=0``: the stream object itself. Otherwise a DataLoader whose every ``iter()``
        starts the workers afresh from the same seeds.

    Raises
    ------
    ValueError
        If `workers` is not an integer >= 0 or `prefetch` not an integer >= 1.
    """
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 1:
        raise ValueError(f"prefetch must be a positive integer, got {prefetch!r}")
    if workers == 0:
        return factory(*args, rng=np.random.default_rng(seed), **kwargs)
    return DataLoader(
        _WorkerStream(factory, args, kwargs, seed), batch_size=None, num_workers=int(workers),
        prefetch_factor=int(prefetch), pin_memory=pin_memory, multiprocessing_context=context,
        # the loader's own base seed comes from this generator, not from torch's global one
        generator=torch.Generator().manual_seed(int(seed)),
    )


# --------------------------------------------------------------------------------------------
# Simulated micrographs: Noise2Noise pairs of even/odd frame sums


class MicrographPairs:
    """Endless Noise2Noise batches: patches of the even and odd frame sums of simulated micrographs.

    Every `patches_per_micrograph` patches a new micrograph is simulated with
    :func:`~napari_cryoden.simulate.simulate_micrograph`, its imaging parameters drawn from
    `ranges` (uniform; the dose log-uniform). For each patch one half is drawn at random as the
    input, the other is the target. Both are normalised with the robust statistics (median,
    IQR / 1.349) of the whole *input half*, as :func:`~napari_cryoden.inference.denoise`
    normalises the image it is given, so the network learns E[target] = the clean image in its
    input's units. Augmentation: the same random rotation by a multiple of 90°, flip and contrast
    sign for input and target (the 16 symmetries keep E[target | input] = clean).

    With ``target="clean"`` the target is the noiseless image instead (supervised training, for
    diagnostics that compare Noise2Noise with what clean targets would give; no recipe uses it).
    """

    def __init__(self, particles: dict[str, np.ndarray], rng: np.random.Generator, *, batch_size: int, patch: int,
                 shape, patches_per_micrograph: int, density, defocus_um, dose_total, ice_thickness,
                 n_frames: int, pixel_size: float, target: str = "half"):
        if target not in ("half", "clean"):
            raise ValueError(f"target must be 'half' or 'clean', got {target!r}")
        shape = tuple(int(n) for n in shape)
        if min(shape) < patch:
            raise ValueError(f"patch {patch} does not fit in simulated micrographs of shape {shape}")
        self.particles, self.rng = dict(particles), rng
        self.batch_size, self.patch, self.shape = int(batch_size), int(patch), shape
        self.per_micrograph, self.n_frames, self.pixel_size = int(patches_per_micrograph), int(n_frames), pixel_size
        self.ranges = {"density": density, "defocus_um": defocus_um, "dose_total": dose_total,
                       "ice_thickness": ice_thickness}
        self.micrographs, self.simulation_seconds = 0, 0.0
        self._halves: list[tuple[np.ndarray, float, float]] = []
        self._clean: np.ndarray | None = None
        self.target = target
        self._left = 0

    @classmethod
    def from_recipe(cls, r: dict, particles: dict[str, np.ndarray], rng: np.random.Generator,
                    target: str = "half") -> "MicrographPairs":
        """The stream a 2D recipe `r` (an entry of :data:`RECIPES`) trains on."""
        m = r["micrographs"]
        return cls(particles, rng, batch_size=r["batch_size"], patch=r["patch"], shape=m["shape"],
                   patches_per_micrograph=m["patches_per_micrograph"], density=m["density"],
                   defocus_um=m["defocus_um"], dose_total=m["dose_total"], ice_thickness=m["ice_thickness"],
                   n_frames=m["n_frames"], pixel_size=r["pixel_size"], target=target)

    def parameters(self) -> dict:
        """Draw the imaging parameters of the next micrograph."""
        rng = self.rng
        kw = {k: float(rng.uniform(*r)) for k, r in self.ranges.items() if k != "dose_total"}
        lo, hi = np.log(self.ranges["dose_total"])
        kw["dose_total"] = float(np.exp(rng.uniform(lo, hi)))
        kw["seed"] = int(rng.integers(2**31))
        return kw

    def _new_micrograph(self) -> None:
        from ..inference.normalize import robust_stats
        from ..simulate import simulate_micrograph

        t0 = time.perf_counter()
        sim = simulate_micrograph(self.shape, pixel_size=self.pixel_size, particles=self.particles,
                                  n_frames=self.n_frames, **self.parameters())
        self._halves = [(h, *robust_stats(h)) for h in (sim.even, sim.odd)]
        self._clean = sim.clean if self.target == "clean" else None
        self._left = self.per_micrograph
        self.micrographs += 1
        self.simulation_seconds += time.perf_counter() - t0

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        if self._left <= 0:
            self._new_micrograph()
        self._left -= 1
        rng, p = self.rng, self.patch
        y0, x0 = (int(rng.integers(0, n - p + 1)) for n in self.shape)
        first = int(rng.integers(2))
        (src, center, scale), (tgt, _, _) = self._halves[first], self._halves[1 - first]
        if self._clean is not None:
            tgt = self._clean
        x = (src[y0:y0 + p, x0:x0 + p] - np.float32(center)) / np.float32(scale)
        y = (tgt[y0:y0 + p, x0:x0 + p] - np.float32(center)) / np.float32(scale)
        k, flip = draw_square(rng)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        x, y = apply_symmetry((x, y), k=k, flip=flip, sign=sign)
        return x, y

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: (input, target) tensors of shape (batch_size, 1, patch, patch), float32."""
        return stack_batch([self.sample() for _ in range(self.batch_size)])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.batch()
