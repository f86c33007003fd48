"""The physically modelled tomogram simulator: reproducibility, halves, wedge, dose, physics helpers."""

import math

import numpy as np
import pytest

from napari_cryoden.simulate import SimulatedTomogram, simulate_tomogram
from napari_cryoden.simulate import physics, specimen
from napari_cryoden.simulate import tomogram as T

from conftest import corr, psnr  # tests/conftest.py (tests/ is on sys.path)

# Tiny and anisotropic so (Z, Y, X) mix-ups show; 6° steps keep it fast.
SHAPE = (24, 32, 40)
FAST = {"tilt_step": 6.0}


@pytest.fixture(scope="module")
def sim() -> SimulatedTomogram:
    return simulate_tomogram(SHAPE, seed=3, membranes=1, **FAST)


def test_shapes_dtypes_and_params(sim):
    for name in ("noisy", "even", "odd", "clean", "potential"):
        a = getattr(sim, name)
        assert a.shape == SHAPE and a.dtype == np.float32, name
        assert np.isfinite(a).all(), name
    np.testing.assert_allclose(sim.tilt_angles, np.arange(-60, 61, 6.0))
    p = sim.params
    assert p["n_tilts"] == 21 and p["seed"] == 3 and p["voxel_size"] == sim.voxel_size == 10.0
    assert p["dose_per_tilt"] == pytest.approx(100.0 / 21)
    assert p["electrons_per_pixel_per_tilt"] == pytest.approx(100.0 / 21 * 100)
    assert p["n_particles"] > 0 and p["membranes"] == p["n_membranes"] == 1
    assert "SimulatedTomogram(shape=(24, 32, 40)" in repr(sim)


def test_reproducible_from_seed(sim):
    again = simulate_tomogram(SHAPE, seed=3, membranes=1, **FAST)
    for name in ("noisy", "even", "odd", "clean", "potential"):
        np.testing.assert_array_equal(getattr(sim, name), getattr(again, name))
    assert again.params == sim.params
    other = simulate_tomogram(SHAPE, seed=4, membranes=1, **FAST)
    assert not np.array_equal(other.noisy, sim.noisy)


def test_halves_average_to_noisy_and_have_independent_noise(sim):
    np.testing.assert_allclose(sim.noisy, (sim.even + sim.odd) / 2, atol=1e-6)
    # Independent Poisson halves: their deviations from the clean target do not correlate.
    assert abs(corr(sim.even - sim.clean, sim.odd - sim.clean)) < 0.06
    # Both halves carry the same signal: at a high dose they correlate strongly.
    high = simulate_tomogram(SHAPE, seed=3, dose_total=1e4, radiation_damage=False, **FAST)
    assert abs(corr(high.even - high.clean, high.odd - high.clean)) < 0.06
    assert corr(high.even, high.odd) > 0.5
    # The noise is unbiased: clean is the expected value of the halves.
    assert abs(float((high.even - high.clean).mean())) < 0.01 * float(high.clean.std()) + 1e-4


def test_more_dose_gives_higher_psnr():
    # Without damage, 4x the dose quarters the shot-noise variance: +6 dB.
    low = simulate_tomogram(SHAPE, seed=1, dose_total=100.0, radiation_damage=False, **FAST)
    high = simulate_tomogram(SHAPE, seed=1, dose_total=400.0, radiation_damage=False, **FAST)
    np.testing.assert_array_equal(low.clean, high.clean)  # same specimen and geometry
    gain = psnr(high.noisy, high.clean) - psnr(low.noisy, low.clean)
    assert 4.5 < gain < 7.5
    assert psnr(low.noisy, low.clean) > psnr(low.even, low.clean)  # a half has half the dose


def _wedge_power_ratio(volume, tilt_max):
    """Mean Fourier power inside the missing wedge over that in the measured region (mid band)."""
    power = np.abs(np.fft.fftn(volume)) ** 2
    kz = np.fft.fftfreq(volume.shape[0])[:, None, None]
    ky = np.fft.fftfreq(volume.shape[1])[None, :, None]
    kx = np.fft.fftfreq(volume.shape[2])[None, None, :]
    angle = np.degrees(np.arctan2(np.abs(kz), np.abs(kx)))  # 0 on the kx axis, 90 along the beam
    band = (np.hypot(kz, kx) > 0.05) & (np.hypot(kz, kx) < 0.3) & (np.abs(ky) < 0.3)
    missing = np.broadcast_to(band & (angle > tilt_max + 10), power.shape)
    measured = np.broadcast_to(band & (angle < tilt_max - 5), power.shape)
    return power[missing].mean() / power[measured].mean()


def test_missing_wedge_is_empty_in_clean():
    s = simulate_tomogram((40, 16, 48), seed=2, density=0.2, tilt_range=45.0, tilt_step=5.0)
    assert _wedge_power_ratio(s.potential, 45) > 0.3   # the specimen fills Fourier space
    assert _wedge_power_ratio(s.clean, 45) < 0.05      # the reconstruction lacks the wedge
    assert _wedge_power_ratio(s.noisy, 45) < 0.05      # so does its noise


def test_protein_is_dark_unless_inverted(sim):
    assert corr(sim.clean, sim.potential) < -0.3
    inv = simulate_tomogram(SHAPE, seed=3, membranes=1, invert=True, **FAST)
    np.testing.assert_allclose(inv.clean, -sim.clean, atol=1e-6)
    np.testing.assert_allclose(inv.noisy, -sim.noisy, atol=1e-6)


def test_specimen_crowding_counts_and_overlap():
    rng = np.random.default_rng(0)
    vol, info = specimen.specimen_volume((32, 48, 48), rng, density=0.25, ice=False)
    assert info["volume_fraction"] == pytest.approx(0.25, abs=0.05)
    assert vol.max() < 1.2  # supports never overlap (only faint tails may add up)
    vol, info = specimen.specimen_volume((32, 48, 48), np.random.default_rng(1), density=5, ice=False)
    assert info["n_particles"] == 5
    maps = {"cube": np.pad(np.ones((5, 5, 5), np.float32), 1)}
    vol, info = specimen.specimen_volume((16, 24, 24), np.random.default_rng(2), particles=maps, density=3, ice=False)
    assert info["n_particles"] == 3
    assert vol.max() < 1.15  # uniform cubes: an overlap of two would reach 2


def test_weighted_backprojection_recovers_the_volume_with_full_tilt_range():
    rng = np.random.default_rng(0)
    vol, _ = specimen.specimen_volume((24, 8, 40), rng, density=0.2, ice=False)
    nz, ny, nx = vol.shape
    angles = T.tilt_angles(89.0, 1.0)
    key = tuple(float(a) for a in angles)
    nd = T._detector_width(nz, nx, angles)
    nt = int(math.ceil(math.hypot(nz, nx))) + 2
    proj = T._projector(nz, nx, key, nd, nt) @ vol.transpose(0, 2, 1).reshape(nz * nx, ny)
    np.testing.assert_allclose(proj.reshape(len(angles), nd, ny).sum(axis=(1, 2)), vol.sum(), rtol=1e-3)
    n = 2 * nd
    filtered = np.fft.irfft(np.fft.rfft(proj.reshape(len(angles), nd, ny), n=n, axis=1)
                            * T._ramlak(n)[None, :, None], n=n, axis=1)[:, :nd]
    rec = (T._backprojector(nz, nx, key, nd) @ filtered.reshape(-1, ny)).reshape(nz, nx, ny).transpose(0, 2, 1)
    rec *= np.deg2rad(1.0)
    slope = np.polyfit(vol.ravel(), rec.ravel(), 1)[0]
    assert 0.85 < slope < 1.05 and corr(rec, vol) > 0.99


def test_physics_helpers():
    assert physics.electron_wavelength(300.0) == pytest.approx(0.019687, rel=1e-4)
    assert physics.interaction_constant(300.0) == pytest.approx(6.526e-4, rel=1e-3)
    assert physics.critical_exposure(np.array([0.0]))[0] == np.inf
    assert physics.critical_exposure(np.array([1 / 3.0]))[0] == pytest.approx(0.245 * 3**1.665 + 2.81)
    np.testing.assert_allclose(T.tilt_angles(10.0, 3.0), [-9, -6, -3, 0, 3, 6, 9])
    rank = T.dose_symmetric_order(np.array([-6.0, -3.0, 0.0, 3.0, 6.0]))
    np.testing.assert_array_equal(rank, [4, 2, 0, 1, 3])
    ctf = physics.ctf_2d((16, 16), 10.0, 3.0)
    assert ctf.shape == (16, 9) and ctf[0, 0] == pytest.approx(0.07, abs=1e-3)  # amplitude contrast at k=0


@pytest.mark.parametrize("rho", [0.0, 0.2, 0.5, 0.7])
def test_detector_kernel_gives_the_neighbour_correlation(rho):
    """White noise through correlate_detector_noise: variance kept (within 2 %), neighbours along
    Y and along X correlated by rho and diagonal neighbours by rho² (within 0.02), mean kept."""
    rng = np.random.default_rng(0)
    expected = np.full((4, 256, 256), 50.0)
    counts = rng.poisson(expected)
    out = physics.correlate_detector_noise(counts, expected, rho)
    noise = (out - expected)[:, 2:-2, 2:-2]  # away from the edges
    white = (counts - expected)[:, 2:-2, 2:-2]
    assert out.dtype == np.float32 and abs(noise.var() / white.var() - 1) < 0.02
    assert abs(noise.mean()) < 0.02 * noise.std()
    assert abs(corr(noise[:, 1:], noise[:, :-1]) - rho) < 0.02
    assert abs(corr(noise[:, :, 1:], noise[:, :, :-1]) - rho) < 0.02
    assert abs(corr(noise[:, 1:, 1:], noise[:, :-1, :-1]) - rho**2) < 0.02
    assert np.sum(physics.detector_kernel(rho) ** 2) == pytest.approx(1.0)
    if rho == 0:
        np.testing.assert_array_equal(out, counts.astype(np.float32))


def test_detector_correlation_and_thick_ice_change_only_the_noise():
    """Same seed and specimen: the clean target is unchanged by correlated detector noise (the
    expectation is), the halves stay independent, and the noise gains low-frequency power; a
    4× thicker specimen lets fewer electrons through, so the noise grows and the clean volume
    stays the same."""
    kw = {"shape": (24, 48, 48), "seed": 3, "dose_total": 80.0}
    base = simulate_tomogram(**kw)
    correlated = simulate_tomogram(detector_correlation=0.5, **kw)
    thick = simulate_tomogram(ice_thickness=4 * 24 * 10.0, **kw)
    np.testing.assert_array_equal(correlated.clean, base.clean)
    np.testing.assert_array_equal(thick.clean, base.clean)
    assert correlated.params["detector_correlation"] == 0.5 and base.params["ice_thickness"] == 240.0
    n1, n2 = correlated.even - correlated.clean, correlated.odd - correlated.clean
    assert abs(corr(n1, n2)) < 0.05
    np.testing.assert_allclose(correlated.noisy, (correlated.even + correlated.odd) / 2, atol=1e-5 * n1.std())

    def low_fraction(v):  # share of the noise power below a quarter of Nyquist, in Y-X planes
        p = np.abs(np.fft.fft2(v)) ** 2
        k = np.hypot(*np.meshgrid(np.fft.fftfreq(v.shape[1]), np.fft.fftfreq(v.shape[2]), indexing="ij"))
        return p[:, k < 0.125].sum() / p.sum()

    assert low_fraction(correlated.noisy - correlated.clean) > 1.3 * low_fraction(base.noisy - base.clean)
    # attenuation exp(-t / 3500 Å): 4x the 240 Å slab passes exp(-720/3500) = 0.81 as many electrons
    ratio = (thick.noisy - thick.clean).std() / (base.noisy - base.clean).std()
    assert ratio == pytest.approx(np.exp(720 / 3500 / 2), rel=0.05)


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (4, 32, 32)}, "shape"),
    ({"shape": (16, 32)}, "shape"),
    ({"tilt_range": 95.0}, "tilt_range"),
    ({"tilt_step": 0.0}, "tilt_step"),
    ({"dose_total": -1.0}, "dose_total"),
    ({"density": 1.5}, "density"),
    ({"density": -2}, "density"),
    ({"membranes": -1}, "membranes"),
    ({"amplitude_contrast": 1.0}, "amplitude_contrast"),
    ({"seed": -1}, "seed"),
    ({"ice_thickness": 100.0}, "ice_thickness"),
    ({"ice_thickness": -1.0}, "ice_thickness"),
    ({"detector_correlation": 0.8}, "detector_correlation"),
    ({"detector_correlation": -0.1}, "detector_correlation"),
])
def test_bad_parameters_raise_one_line_value_errors(kwargs, match):
    kwargs = {"shape": (16, 16, 16), **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        simulate_tomogram(**kwargs)
    assert "\n" not in str(info.value)
