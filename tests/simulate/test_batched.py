"""The batched torch simulators (simulate.batched) against the numpy ones, on the CPU.

Statistical agreement at matched parameters: mean and standard deviation of the clean and noisy
volumes, their radially averaged power spectra, and the independence of the even/odd halves'
noise; then shapes, dtypes, devices, determinism and parameter errors. Small volumes (24³-32³).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoden.simulate import blob_particle, simulate_tomogram, thesis_pair
from napari_cryoden.simulate.batched import (
    BatchedStream, ParticleBank, augment, random_rotations, realistic_batch, robust_normalize, thesis_batch,
)
from napari_cryoden.training.data import normalize_pair

from conftest import SHARED_DATA  # tests/conftest.py (tests/ is on sys.path)


@pytest.fixture(scope="module")
def maps() -> dict[str, np.ndarray]:
    """The SHREC maps at 10 Å when present, else 6 procedural particles of similar size."""
    folder = SHARED_DATA / "maps_10A"
    if folder.is_dir():
        from napari_cryoden.simulate import load_particle_maps

        return load_particle_maps(folder)
    rng = np.random.default_rng(0)
    return {f"blob{i}": blob_particle(rng, radius=6) for i in range(6)}


@pytest.fixture(scope="module")
def bank(maps) -> ParticleBank:
    return ParticleBank(maps, "cpu")


def _radial_power(v: np.ndarray) -> np.ndarray:
    """Mean over samples of the radially averaged power spectrum, shells 1 .. n/2 (DC left out)."""
    n = v.shape[-1]
    f = np.fft.fftfreq(n)
    shell = np.rint(n * np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)).astype(int)
    power = np.abs(np.fft.fftn(v, axes=(-3, -2, -1))) ** 2
    return np.stack([power[:, shell == s].mean(1) for s in range(1, n // 2 + 1)], axis=1).mean(0)


def _np(t: torch.Tensor) -> np.ndarray:
    return t[:, 0].double().numpy()


# --------------------------------------------------------------------------------------------
# Statistics against the numpy path


def test_thesis_pairs_agree_with_numpy(maps, bank):
    """Matched parameters (one centred particle, SNR 0.5, tilt 60°, 24³): the mean and std of
    the normalised clean and noisy volumes agree within 15 %, and the power spectra within a
    factor 1.35 in every shell up to 0.4 cycles/voxel (the noise floor and the particles' band)."""
    box, n = 24, 48
    rng = np.random.default_rng(1)
    ref = [normalize_pair(*thesis_pair(list(maps.values()), rng, box=box, n_particles=1, snr=0.5, tilt_max_deg=60.0))
           for _ in range(n)]
    ref_noisy = np.stack([r[0] for r in ref]).astype(np.float64)
    ref_clean = np.stack([r[1] for r in ref]).astype(np.float64)
    g = torch.Generator().manual_seed(1)
    noisy, clean = thesis_batch(bank, n, box, g, p_single=1.0, snr_range=(0.5, 0.5), tilt_range=(60.0, 60.0),
                                augment_=False)
    noisy, clean = _np(noisy), _np(clean)
    for a, b, what in ((noisy, ref_noisy, "noisy"), (clean, ref_clean, "clean")):
        assert abs(a.std() - b.std()) < 0.15 * b.std(), what
        assert abs(a.mean() - b.mean()) < 0.15 * b.std(), what
        ratio = _radial_power(a) / _radial_power(b)
        band = ratio[: int(0.4 * box)]
        assert np.all((band > 1 / 1.35) & (band < 1.35)), (what, np.round(ratio, 2))
    # the degraded volume's noise: SNR 0.5 means var(noise) = 2 var(clean), in both
    assert abs((noisy - clean).var() / clean.var() - (ref_noisy - ref_clean).var() / ref_clean.var()) < 0.25 * 2


def _matched(maps, bank, dose: float = 100.0, **extra):
    """Matched realistic parameters: 3 numpy tomograms of 24×48×48 (4 patches of 24³ each) and
    12 batched patches of 24³, unnormalised, with their even/odd halves. `extra` are fixed
    values of the optional ranges (``detector_correlation``, ``ice_thickness``)."""
    kw = {"density": 0.15, "defocus_um": 3.0, "dose_total": dose, "tilt_range": 60.0, "membranes": 0, **extra}
    ref = {k: [] for k in ("noisy", "clean", "even", "odd")}
    for seed in range(3):
        sim = simulate_tomogram((24, 48, 48), particles=maps, seed=seed, **kw)
        for k in ref:
            v = getattr(sim, k)
            ref[k] += [v[:, y:y + 24, x:x + 24] for y in (0, 24) for x in (0, 24)]
    ref = {k: np.stack(v).astype(np.float64) for k, v in ref.items()}
    g = torch.Generator().manual_seed(2)
    out = realistic_batch(bank, 12, 24, g, shape=(24, 48, 48), density=(0.15, 0.15), defocus_um=(3.0, 3.0),
                          dose_total=(dose, dose), tilt_range=(60.0, 60.0), max_membranes=0,
                          normalize=False, augment_=False, halves=True, **{k: (v, v) for k, v in extra.items()})
    got = dict(zip(("noisy", "clean", "even", "odd"), (_np(t) for t in out)))
    return ref, got


@pytest.fixture(scope="module")
def tomograms(maps, bank):
    """:func:`_matched` at 100 e-/Å², white detector noise, the slab's thickness."""
    return _matched(maps, bank)


def test_realistic_noise_agrees_with_numpy(tomograms):
    """Same dose, CTF and geometry: the shot noise of the reconstruction (noisy - clean) has the
    same standard deviation within 10 % and the same power spectrum within a factor 1.3 in every
    shell up to 0.4 cycles/voxel."""
    ref, got = tomograms
    a, b = got["noisy"] - got["clean"], ref["noisy"] - ref["clean"]
    assert abs(a.std() - b.std()) < 0.10 * b.std()
    assert abs(a.mean()) < 0.05 * b.std() and abs(b.mean()) < 0.05 * b.std()
    ratio = _radial_power(a) / _radial_power(b)
    band = ratio[: int(0.4 * 24)]
    assert np.all((band > 1 / 1.3) & (band < 1.3)), np.round(ratio, 2)


def test_realistic_signal_agrees_with_numpy(tomograms):
    """The clean reconstruction: mean within 1/3 of the numpy std and std within 30 %, power
    spectra within a factor 1.5 per shell over 1-9 cycles per box (particle placements differ by
    design; see the module docstring)."""
    ref, got = tomograms
    a, b = got["clean"], ref["clean"]
    assert abs(a.std() - b.std()) < 0.3 * b.std()
    assert abs(a.mean() - b.mean()) < b.std() / 3
    ratio = _radial_power(a) / _radial_power(b)
    band = ratio[: int(0.4 * 24)]
    assert np.all((band > 1 / 1.5) & (band < 1.5)), np.round(ratio, 2)
    # normalised as the streams do, the noisy volumes have the same robust scale (~1) and the
    # clean ones the same spread relative to the noise, within 30 %
    na, ca = (t.numpy()[:, 0] for t in robust_normalize(torch.from_numpy(got["noisy"])[:, None].float(),
                                                       torch.from_numpy(a)[:, None].float()))
    pairs = [normalize_pair(n.astype(np.float32), c.astype(np.float32)) for n, c in zip(ref["noisy"], b)]
    nb, cb = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    assert abs(na.std() - nb.std()) < 0.3 * nb.std()
    assert abs(ca.std() - cb.std()) < 0.3 * cb.std()


def test_even_odd_halves_are_independent(tomograms):
    """even = clean + n1, odd = clean + n2 with n1, n2 independent: their correlation is ~0
    (|r| < 0.05 over 12 × 24³ voxels), each half's noise variance is twice the full dose's
    (within 10 %), and noisy = (even + odd) / 2 exactly; the numpy path agrees."""
    for data in tomograms:
        n1, n2 = data["even"] - data["clean"], data["odd"] - data["clean"]
        full = data["noisy"] - data["clean"]
        assert abs(np.corrcoef(n1.ravel(), n2.ravel())[0, 1]) < 0.05
        for half in (n1, n2):
            assert abs(half.var() / full.var() - 2.0) < 0.2
        np.testing.assert_allclose(data["noisy"], (data["even"] + data["odd"]) / 2, atol=1e-5 * full.std())


def test_detector_filter_matches_numpy():
    """The batched detector filter (per-item rho) equals physics.correlate_detector_noise."""
    from napari_cryoden.simulate.batched import _detector
    from napari_cryoden.simulate.physics import correlate_detector_noise

    rng = np.random.default_rng(0)
    expected = rng.uniform(20, 40, (3, 2, 16, 20)).astype(np.float32)
    counts = rng.poisson(expected).astype(np.float32)
    rhos = [0.0, 0.3, 0.7]
    got = _detector(torch.from_numpy(counts), torch.from_numpy(expected), torch.tensor(rhos)).numpy()
    for i, rho in enumerate(rhos):
        np.testing.assert_allclose(got[i], correlate_detector_noise(counts[i], expected[i], rho), atol=1e-4)
    assert _detector(torch.from_numpy(counts), torch.from_numpy(expected), None) is not None


@pytest.fixture(scope="module")
def low_dose(maps, bank):
    """:func:`_matched` at 20 e-/Å² with detector correlation 0.5 through 2000 Å of ice."""
    return _matched(maps, bank, dose=20.0, detector_correlation=0.5, ice_thickness=2000.0)


def test_low_dose_noise_agrees_with_numpy(low_dose, tomograms):
    """Correlated detector noise and a thick specimen at 20 e-/Å²: the noise of the two paths
    has the same standard deviation within 10 % and the same power spectrum within a factor 1.3
    per shell up to 0.4 cycles/voxel; the halves stay independent; and the noise is about 2.6x
    that of 100 e-/Å² in a thin slab (5x less dose and exp(-(2000-240)/3500) as many electrons
    give sqrt(8.3) = 2.9x; the detector correlation takes some high-frequency noise away)."""
    ref, got = low_dose
    a, b = got["noisy"] - got["clean"], ref["noisy"] - ref["clean"]
    assert abs(a.std() - b.std()) < 0.10 * b.std()
    ratio = _radial_power(a) / _radial_power(b)
    band = ratio[: int(0.4 * 24)]
    assert np.all((band > 1 / 1.3) & (band < 1.3)), np.round(ratio, 2)
    for data in low_dose:
        n1, n2 = data["even"] - data["clean"], data["odd"] - data["clean"]
        assert abs(np.corrcoef(n1.ravel(), n2.ravel())[0, 1]) < 0.05
    thin = tomograms[1]["noisy"] - tomograms[1]["clean"]
    assert 2.0 < a.std() / thin.std() < 3.2


def test_dose_log_draws_log_uniform_doses(bank):
    """dose_log: the noise variance of items, which goes as 1 / dose, spreads as for doses
    log-uniform in (15, 160): the median item's noise variance is that of ~49 e-/Å² (the
    geometric mean), not of ~88 (the arithmetic one), within 25 %; the draws are reproducible."""
    def noise_var(log: bool) -> np.ndarray:
        g = torch.Generator().manual_seed(7)
        noisy, clean = realistic_batch(bank, 48, 16, g, shape=(16, 32, 32), density=(0.0, 0.0),
                                       dose_total=(15.0, 160.0), dose_log=log, max_membranes=0, ice=False,
                                       normalize=False, augment_=False)
        return ((noisy - clean) ** 2).mean(dim=(1, 2, 3, 4)).double().numpy()

    g = torch.Generator().manual_seed(7)
    fixed = realistic_batch(bank, 8, 16, g, shape=(16, 32, 32), density=(0.0, 0.0), dose_total=(49.0, 49.0),
                            max_membranes=0, ice=False, normalize=False, augment_=False)
    at_49 = float(((fixed[0] - fixed[1]) ** 2).mean())
    logged, uniform = noise_var(True), noise_var(False)
    assert abs(np.median(logged) / at_49 - 1) < 0.25
    assert np.median(uniform) < 0.8 * np.median(logged)
    np.testing.assert_array_equal(noise_var(True), logged)


# --------------------------------------------------------------------------------------------
# Shapes, devices, determinism, the stream


def test_stream_shapes_dtypes_device_and_determinism(maps):
    stream = BatchedStream(maps, batch_size=3, patch=16, device="cpu", seed=5, mix=0.5,
                           realistic={"shape": [32, 48, 48], "weight": 0.5, "patches_per_volume": 32})
    it = iter(stream)
    batches = [next(it) for _ in range(2)]
    for noisy, clean in batches:
        assert noisy.shape == clean.shape == (3, 1, 16, 16, 16)
        assert noisy.dtype == clean.dtype == torch.float32
        assert noisy.device.type == clean.device.type == "cpu"
        assert torch.isfinite(noisy).all() and torch.isfinite(clean).all()
        assert noisy.is_contiguous() and clean.is_contiguous()
    again = iter(stream)  # every iter() restarts from the seed
    for noisy, clean in batches:
        n2, c2 = next(again)
        assert torch.equal(noisy, n2) and torch.equal(clean, c2)
    other = next(iter(BatchedStream(maps, batch_size=3, patch=16, seed=6, mix=0.5)))
    assert not torch.equal(other[0], batches[0][0])
    assert not torch.equal(batches[0][0], batches[1][0])
    params = stream.parameters()
    assert params["mix_realistic"] == 0.5 and params["realistic"]["shape"] == [32, 48, 48]
    assert params["thesis"]["snr_range"] == [0.1, 2.0] and params["device"] == "cpu"


def test_mix_picks_the_kinds(maps):
    """mix=0 gives thesis pairs only (noise is white Gaussian), mix=1 realistic ones only; the
    first batch of a mix=0 stream is the thesis_batch of the same generator after the draw of
    the kinds."""
    thesis_only = BatchedStream(maps, batch_size=2, patch=16, seed=3, mix=0.0)
    noisy, clean = next(iter(thesis_only))
    g = torch.Generator().manual_seed(3)
    torch.rand(2, generator=g)  # the per-item kinds
    ref = thesis_batch(thesis_only.bank, 2, 16, g, **thesis_only.thesis)
    assert torch.equal(noisy, ref[0]) and torch.equal(clean, ref[1])
    real = BatchedStream(maps, batch_size=2, patch=16, seed=3, mix=1.0, realistic={"shape": (32, 48, 48)})
    noisy, clean = next(iter(real))
    g = torch.Generator().manual_seed(3)
    torch.rand(2, generator=g)
    ref = realistic_batch(real.bank, 2, 16, g, **real.realistic)
    assert torch.equal(noisy, ref[0]) and torch.equal(clean, ref[1])


def test_from_recipe_reads_the_recipe_dict(maps):
    r = {"patch": 16, "batch_size": 2, "seed": 4,
         "stream": {"p_single": 0.5, "max_particles": 5, "snr_range": [0.2, 1.0], "tilt_range": [55.0, 60.0]},
         "realistic": {"weight": 0.75, "shape": [32, 48, 48], "patches_per_volume": 32, "density": [0.05, 0.1],
                       "defocus_um": [2.0, 3.0], "dose_total": [50.0, 60.0], "tilt_range": [50.0, 55.0],
                       "max_membranes": 1}}
    names = sorted(maps)[:3]
    s = BatchedStream.from_recipe(r, maps, names)
    assert (s.batch_size, s.patch, s.seed, s.mix) == (2, 16, 4, 0.75)
    assert s.thesis == {"p_single": 0.5, "max_particles": 5, "snr_range": (0.2, 1.0), "tilt_range": (55.0, 60.0)}
    assert s.realistic["dose_total"] == (50.0, 60.0) and s.realistic["max_membranes"] == 1
    assert sorted(s.bank.names) == names
    assert BatchedStream.from_recipe({**r, "realistic": None}, maps, names, seed=9).mix == 0.0


def test_rotations_are_uniform_and_orthonormal():
    g = torch.Generator().manual_seed(0)
    r = random_rotations(4000, g, "cpu")
    eye = torch.eye(3).expand(4000, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(4000), atol=1e-5)
    # uniform in SO(3): the rotated z axis is uniform on the sphere (mean ~0, E[z^2] = 1/3)
    z = r[:, :, 0]
    assert z.mean(0).abs().max() < 0.05
    assert abs(float((z[:, 0] ** 2).mean()) - 1 / 3) < 0.03


def test_rotated_particle_matches_numpy_rotation(maps, bank):
    """ParticleBank.rotated is specimen.rotate_particle (same convention, linear interpolation)."""
    from scipy.ndimage import center_of_mass

    from napari_cryoden.simulate import rotate_particle

    name = sorted(maps)[0]
    g = torch.Generator().manual_seed(7)
    rot = random_rotations(1, g, "cpu")
    which = torch.tensor([bank.names.index(name)])
    cube = bank.rotated(which, rot)[0, 0].double().numpy()
    ref = rotate_particle(np.asarray(maps[name], np.float32) / maps[name].max(), rot[0].double().numpy())
    # the same mass, and the same inertia about the centre of mass (orientation), to 2 %
    assert abs(cube.sum() - ref.sum()) < 0.02 * ref.sum()

    def inertia(v):
        c = np.array(center_of_mass(v))
        idx = np.indices(v.shape).reshape(3, -1).T - c
        w = v.ravel()
        return (idx.T * w) @ idx / w.sum()

    np.testing.assert_allclose(inertia(cube), inertia(ref), atol=0.05 * np.trace(inertia(ref)))


def test_augment_flips_both_alike():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 4, 5, 6)
    a, b = augment(g, x, 2 * x)
    assert torch.equal(b, 2 * a)
    assert not torch.equal(a, x)
    assert torch.allclose(a.abs().sum(dim=(1, 2, 3, 4)), x.abs().sum(dim=(1, 2, 3, 4)))


def test_normalize_matches_normalize_pair():
    rng = np.random.default_rng(0)
    x, y = rng.normal(3, 2, (4, 10, 11, 12)).astype(np.float32), rng.normal(0, 1, (4, 10, 11, 12)).astype(np.float32)
    xs, ys = robust_normalize(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None])
    for i in range(4):
        rx, ry = normalize_pair(x[i], y[i])
        np.testing.assert_allclose(xs[i, 0].numpy(), rx, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ys[i, 0].numpy(), ry, rtol=1e-4, atol=1e-4)
    zero = robust_normalize(torch.zeros(1, 1, 4, 4, 4))[0]  # constant: scale falls back to 1
    assert torch.equal(zero, torch.zeros(1, 1, 4, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_stream_on_cuda(maps):
    noisy, clean = next(iter(BatchedStream(maps, batch_size=4, patch=32, device="cuda", seed=0)))
    assert noisy.device.type == clean.device.type == "cuda" and noisy.shape == (4, 1, 32, 32, 32)


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"),
    ({"patch": 4}, "patch"),
    ({"patch": 16.0}, "patch"),
    ({"mix": 1.5}, "mix"),
    ({"seed": -1}, "seed"),
    ({"thesis": {"snr_range": [0.0, 1.0]}}, "snr_range"),
    ({"thesis": {"tilt_range": [70.0, 50.0]}}, "tilt_range"),
    ({"thesis": {"p_single": -0.1}}, "p_single"),
    ({"thesis": {"max_particles": 0}}, "max_particles"),
    ({"realistic": {"density": [0.1, 1.0]}}, "density"),
    ({"realistic": {"dose_total": [0.0, 10.0]}}, "dose_total"),
    ({"realistic": {"tilt_range": [50.0, 90.0]}}, "tilt_range"),
    ({"realistic": {"defocus_um": "3"}}, "defocus_um"),
    ({"realistic": {"shape": [8, 64, 64]}}, "shape"),
    ({"realistic": {"max_membranes": -1}}, "max_membranes"),
    ({"realistic": {"ice_thickness": [100.0, 200.0]}}, "ice_thickness"),
    ({"realistic": {"detector_correlation": [0.0, 0.9]}}, "detector_correlation"),
])
def test_bad_parameters_raise_one_line(maps, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        BatchedStream(maps, **{"patch": 16, **kwargs})
    assert "\n" not in str(err.value)


def test_bad_particles_raise():
    with pytest.raises(ValueError, match="particles"):
        BatchedStream({}, patch=16)
    with pytest.raises(ValueError, match="particle map"):
        ParticleBank({"flat": np.zeros((4, 4, 4))})
