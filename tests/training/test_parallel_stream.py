"""Training batches made in DataLoader worker processes (parallel_stream) and the recipes' --workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from napari_cryoden.simulate import blob_particle
from napari_cryoden import recipes
from napari_cryoden.training.data import ThesisStream, parallel_stream, worker_seeds
from napari_cryoden.recipes import RECIPES, recipe_stream

PATCH, BATCH = 16, 4


def _maps() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {f"p{i}": blob_particle(rng, radius=3) for i in range(3)}


def _small_recipe(name: str = "upsampleunet48-gan") -> dict:
    """A 3D recipe's stream (thesis mixed with realistic tomograms) at test sizes."""
    r = RECIPES[name]
    return {**r, "patch": PATCH, "batch_size": BATCH,
            "realistic": {**r["realistic"], "shape": [16, 32, 32], "patches_per_volume": 2, "density": [0.05, 0.1]}}


def _take(stream, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def _thesis(seed: int, workers: int, **kw):
    return parallel_stream(ThesisStream, list(_maps().values()), seed=seed, workers=workers, batch_size=BATCH,
                           patch=PATCH, max_particles=4, **kw)


class _ThreadProbe:
    """A stream whose batches report the worker's torch thread count and its first random draw."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def __iter__(self):
        while True:
            yield (torch.full((1, 1, 2, 2, 2), float(torch.get_num_threads())),
                   torch.full((1, 1, 2, 2, 2), float(self.rng.random())))


def test_no_workers_is_the_serial_stream_bit_for_bit():
    maps, r = _maps(), _small_recipe()
    names = sorted(maps)
    serial = recipe_stream(r, maps, names, np.random.default_rng(7))
    wrapped = parallel_stream(recipe_stream, r, maps, names, seed=7, workers=0)
    assert type(wrapped) is type(serial)
    for (xa, ya), (xb, yb) in zip(_take(serial, 6), _take(wrapped, 6)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_workers_give_distinct_batches_of_the_right_format_and_are_reproducible():
    a = _take(_thesis(11, 2), 6)
    for x, y in a:
        assert x.shape == y.shape == (BATCH, 1, PATCH, PATCH, PATCH)
        assert x.dtype == y.dtype == torch.float32
    samples = [s.numpy().tobytes() for x, _ in a for s in x]
    assert len(set(samples)) == len(samples), "two samples repeat (workers seeded alike?)"
    # batch k comes from worker k mod 2: the same seed gives the same run, another seed another one
    b = _take(_thesis(11, 2), 6)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    c = _take(_thesis(12, 2), 6)
    assert not any(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    # and the workers do not replay the in-process stream of the same seed
    serial = {s.numpy().tobytes() for x, _ in _take(_thesis(11, 0), 6) for s in x}
    assert serial.isdisjoint(samples)


def test_worker_seeds_are_independent_children_of_the_base_seed():
    seeds = worker_seeds(5, 3)
    draws = [np.random.default_rng(s).integers(2**62, size=4).tolist() for s in seeds]
    assert len({tuple(d) for d in draws}) == 3
    assert draws == [np.random.default_rng(s).integers(2**62, size=4).tolist() for s in worker_seeds(5, 3)]
    assert np.random.default_rng(5).integers(2**62, size=4).tolist() not in draws


def test_each_worker_runs_torch_on_one_thread_with_its_own_seed():
    batches = _take(parallel_stream(_ThreadProbe, seed=0, workers=2), 2)
    assert [float(t[0].flatten()[0]) for t in batches] == [1.0, 1.0]
    expected = [np.random.default_rng(s).random() for s in worker_seeds(0, 2)]
    np.testing.assert_allclose([float(t[1].flatten()[0]) for t in batches], expected, rtol=1e-6)


def test_spawned_workers_unpickle_the_stream():
    loader = _thesis(3, 1, context="spawn")
    pickle.loads(pickle.dumps(loader.dataset))  # a module-level factory and plain arguments
    x, y = _take(loader, 1)[0]
    assert x.shape == (BATCH, 1, PATCH, PATCH, PATCH)
    expected = _take(_thesis(3, 1), 1)[0]  # fork or spawn: the same seed, the same batch
    assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])


@pytest.mark.parametrize("workers", [-1, 1.5, True])
def test_bad_worker_counts_are_refused(workers):
    with pytest.raises(ValueError, match="workers must be a non-negative integer"):
        parallel_stream(ThesisStream, [], seed=0, workers=workers)


def _radial_power(v: np.ndarray) -> np.ndarray:
    """Per sample, the radially averaged power spectrum, shells 1 .. n/2 (DC left out).

    Not its log: some clean patches of the sparse test tomograms are constant (zero power)."""
    n = v.shape[-1]
    f = np.fft.fftfreq(n)
    shell = np.rint(n * np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)).astype(int)
    power = np.abs(np.fft.fftn(v, axes=(-3, -2, -1))) ** 2
    return np.stack([power[:, shell == s].mean(1) for s in range(1, n // 2 + 1)], axis=1)


def _per_sample_stats(batches) -> dict[str, np.ndarray]:
    """Per sample: mean, standard deviation and radial power spectrum of the noisy and the clean patch."""
    out = {}
    for name, k in (("noisy", 0), ("clean", 1)):
        v = torch.cat([b[k] for b in batches]).numpy()[:, 0].astype(np.float64)
        out[f"{name} mean"] = v.mean(axis=(1, 2, 3))[:, None]
        out[f"{name} std"] = v.std(axis=(1, 2, 3))[:, None]
        out[f"{name} power"] = _radial_power(v)
    return out


def test_workers_agree_statistically_with_the_serial_stream():
    """The recipe stream made by 2 workers against the serial one: each statistic's mean over
    192 samples differs by less than 4 standard errors (the runs are seeded: no flakiness)."""
    maps, r = _maps(), _small_recipe()
    names = sorted(maps)
    n = 48  # batches of 4 patches of 16^3 each way
    serial = _per_sample_stats(_take(parallel_stream(recipe_stream, r, maps, names, seed=0, workers=0), n))
    parallel = _per_sample_stats(_take(parallel_stream(recipe_stream, r, maps, names, seed=0, workers=2), n))
    for key, a in serial.items():
        b = parallel[key]
        assert a.shape == b.shape == (n * BATCH, a.shape[1])
        se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
        z = np.abs(a.mean(0) - b.mean(0)) / se
        assert (z < 4).all(), f"{key}: serial {a.mean(0)}, 2 workers {b.mean(0)}, z {z}"


def test_recipe_workers_reach_training_and_the_card(monkeypatch, tmp_path):
    """run_recipe(workers=N) trains on a worker stream and hands N on to the card (its command);
    workers=0 trains on exactly the stream of today's recipe."""
    from conftest import write_particle_maps  # tests/conftest.py (tests/ is on sys.path)

    maps_dir = write_particle_maps(tmp_path / "maps", ("aaa1", "bbb2", *recipes.HELD_OUT), 10.0)
    name = "unet48-ae"  # no discriminator: it would need 32^3 patches
    small = {**_small_recipe(name), "arch_kwargs": {**RECIPES[name]["arch_kwargs"], "ch": 8}}
    monkeypatch.setitem(RECIPES, name, small)
    seen = {}

    real_stepper = recipes.supervised_stepper

    class Recording:
        """The recipe's own stepper, but its one step records two batches instead of training."""

        def __init__(self, *a, **kw):
            self.real = real_stepper(*a, **kw)

        def __getattr__(self, key):
            return getattr(self.real, key)

        def __call__(self, next_batch):
            seen["batches"] = [next_batch(), next_batch()]
            return {"content": 0.0}

    def fake_save(name, gen, result, maps, out_dir, **kw):
        seen["save"] = kw
        return tmp_path / "card.json"

    monkeypatch.setattr(recipes, "supervised_stepper", Recording)
    monkeypatch.setattr(recipes, "save_recipe_model", fake_save)
    recipes.run_recipe(name, maps_dir, tmp_path, steps=1, workers=0)
    maps = recipes.load_particle_maps(maps_dir)
    today = _take(recipe_stream(RECIPES[name], maps, ["aaa1", "bbb2"], np.random.default_rng(0)), 2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(seen["batches"], today))
    assert seen["save"]["workers"] == 0

    recipes.run_recipe(name, maps_dir, tmp_path, steps=1, workers=2)
    assert seen["save"]["workers"] == 2
    samples = {s.numpy().tobytes() for x, _ in seen["batches"] for s in x}
    assert len(samples) == 2 * BATCH and samples.isdisjoint(s.numpy().tobytes() for x, _ in today for s in x)

    with pytest.raises(ValueError, match="3D recipes only"):
        recipes.run_recipe("n2n-unet-2d", maps_dir, tmp_path, workers=1)


def test_recipes_command_line_passes_workers(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(recipes, "run_recipe", lambda *a, **kw: calls.append(kw) or "card.json")
    assert recipes.main(["upsampleunet48-gan", "--workers", "3"]) == 0
    assert recipes.main(["upsampleunet48-gan"]) == 0
    assert [c["workers"] for c in calls] == [3, 0]
    for argv in (["n2n-unet-2d", "--workers", "2"], ["unet48-ae", "--workers", "-1"]):
        with pytest.raises(SystemExit):
            recipes.main(argv)
    assert "--workers" in capsys.readouterr().err



def test_the_card_command_names_the_workers_and_steps_only_when_not_the_defaults():
    name = "upsampleunet48-gan"
    base = f"python -m napari_cryoden.recipes {name} --maps ../shared/data/maps_10A --out models"
    assert recipes._train_command(name, RECIPES[name]["steps"], 0) == base
    assert recipes._train_command(name, 7, 4) == base + " --steps 7 --workers 4"
