"""Fourier shell / ring correlation: identical data, independent noise, a known cutoff, voxel sizes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import napari_cryoden.metrics.fsc as fsc_mod
from napari_cryoden.metrics import FSCCurve, fourier_shell_correlation, frc_per_slice

# Non-cubic on purpose; the anisotropic voxel size takes the NumPy back end.
CASES_3D = [((24, 32, 28), 5.0), ((20, 24, 32), (15.0, 10.0, 10.0))]


def _lowpass(shape, voxel_size, cutoff_A, rng) -> np.ndarray:
    """Unit white noise with every Fourier component finer than `cutoff_A` (Å) set to zero.

    Below the cutoff each Fourier voxel keeps the power of unit white noise, so adding noise of
    standard deviation ``sigma`` gives a spectral SNR of ``1 / sigma**2`` there and 0 above.
    """
    spacing = np.broadcast_to(np.asarray(voxel_size, float), (len(shape),))
    grids = np.meshgrid(*(np.fft.fftfreq(n, d) for n, d in zip(shape, spacing)), indexing="ij", sparse=True)
    k = np.sqrt(sum(g**2 for g in grids))
    spectrum = np.fft.fftn(rng.normal(size=shape))
    spectrum[k > 1.0 / cutoff_A] = 0
    return np.fft.ifftn(spectrum).real


# ------------------------------------------------------------------------------ identical data
@pytest.mark.parametrize("shape, voxel_size", CASES_3D + [((40, 52), 2.0)])
@pytest.mark.parametrize("method", ["auto", "numpy"])
def test_identical_data_give_one_in_every_shell(rng, shape, voxel_size, method):
    vol = rng.normal(size=shape).astype(np.float32)
    curve = fourier_shell_correlation(vol, vol.copy(), voxel_size=voxel_size, method=method)
    np.testing.assert_allclose(curve.fsc, 1.0, atol=1e-6)
    assert curve.crossing(0.5) is None and curve.crossing(0.143) is None


# ------------------------------------------------------------------------------ noise
@pytest.mark.parametrize("shape, voxel_size", CASES_3D + [((64, 72), 3.0)])
def test_independent_noise_is_within_three_sigma_of_zero(rng, shape, voxel_size):
    a, b = rng.normal(size=(2, *shape)).astype(np.float32)
    curve = fourier_shell_correlation(a, b, voxel_size=voxel_size)
    bound = 3.0 / np.sqrt(curve.n_voxels[1:])
    assert np.all(np.abs(curve.fsc[1:]) <= bound), np.c_[curve.fsc[1:], bound]


def test_shell_counts_follow_the_sphere_surface():
    curve = fourier_shell_correlation(np.ones((32, 32, 32)), np.ones((32, 32, 32)), voxel_size=1.0)
    k = np.arange(4, 15)
    np.testing.assert_allclose(curve.n_voxels[k], 4 * np.pi * k**2, rtol=0.15)
    assert curve.n_voxels[0] == 1


# ------------------------------------------------------------------------------ known cutoff
@pytest.mark.parametrize(
    "shape, voxel_size, cutoff_A",
    [
        ((32, 32, 32), 5.0, 20.0),  # cutoff at shell 8 of 16 (torch back end)
        ((32, 32, 32), 12.0, 48.0),  # the same data at another voxel size
        ((28, 32, 36), 4.0, 22.0),  # non-cubic, cutoff between shells
        ((24, 32, 32), (15.0, 10.0, 10.0), 40.0),  # anisotropic voxels (NumPy back end)
        ((64, 48), 2.0, 8.0),  # 2D: FRC
    ],
)
@pytest.mark.parametrize("pairing", ["half maps", "noisy vs clean"])
def test_fsc_half_crossing_is_within_one_shell_of_a_sharp_cutoff(shape, voxel_size, cutoff_A, pairing):
    rng = np.random.default_rng(7)
    signal = _lowpass(shape, voxel_size, cutoff_A, rng)
    sigma = 0.5  # SNR 4 below the cutoff: FSC 4/5 between half maps, sqrt(4/5) against the clean map
    if pairing == "half maps":
        a, b = signal + sigma * rng.normal(size=(2, *shape))
    else:
        a, b = signal + sigma * rng.normal(size=shape), signal
    curve = fourier_shell_correlation(a, b, voxel_size=voxel_size)

    res = curve.crossing(0.5)
    assert res is not None
    assert abs(1.0 / res - 1.0 / cutoff_A) <= curve.shell_width, (res, cutoff_A)
    below = curve.frequency < 1.0 / cutoff_A - curve.shell_width
    above = curve.frequency > 1.0 / cutoff_A + curve.shell_width
    assert curve.fsc[below].min() > 0.6
    assert np.abs(curve.fsc[above]).max() < 0.25


def test_resolution_follows_the_voxel_size():
    rng = np.random.default_rng(3)
    signal = _lowpass((32, 32, 32), 1.0, 4.0, rng)  # cutoff 4 voxels
    a, b = signal + 0.5 * rng.normal(size=(2, 32, 32, 32))
    res = {v: fourier_shell_correlation(a, b, voxel_size=v) for v in (1.0, 5.0, 10.52)}
    for v, curve in res.items():
        np.testing.assert_allclose(curve.fsc, res[1.0].fsc)
        np.testing.assert_allclose(curve.resolution[1:], res[1.0].resolution[1:] * v)
        assert curve.crossing(0.5) == pytest.approx(res[1.0].crossing(0.5) * v)
        assert curve.nyquist == pytest.approx(2 * v)


# ------------------------------------------------------------------------------ back ends
@pytest.mark.parametrize("shape", [(17, 23, 30), (24, 24, 24), (33, 40)])
def test_numpy_back_end_matches_torch_fourier_shell_correlation(rng, shape):
    a = rng.normal(size=shape).astype(np.float32)
    b = (a + rng.normal(size=shape)).astype(np.float32)
    via_torch = fourier_shell_correlation(a, b, voxel_size=3.0, method="torch")
    via_numpy = fourier_shell_correlation(a, b, voxel_size=3.0, method="numpy")
    np.testing.assert_allclose(via_numpy.fsc, via_torch.fsc, atol=1e-5)
    np.testing.assert_array_equal(via_numpy.n_voxels, via_torch.n_voxels)


def test_auto_picks_numpy_for_anisotropic_or_large_volumes(rng, monkeypatch):
    calls = []
    real = fsc_mod._torch_fsc
    monkeypatch.setattr(fsc_mod, "_torch_fsc", lambda *a: calls.append(a[2]) or real(*a))
    vol = rng.normal(size=(8, 12, 12))
    fourier_shell_correlation(vol, vol, voxel_size=2.0)
    fourier_shell_correlation(vol, vol, voxel_size=(3.0, 2.0, 2.0))
    monkeypatch.setattr(fsc_mod, "TORCH_MAX_VOXELS", vol.size - 1)
    fourier_shell_correlation(vol, vol, voxel_size=2.0)
    assert calls == [(8, 12, 12)]


def test_large_volumes_get_no_whole_volume_copies(tmp_path, rng, monkeypatch):
    """Read-only memory maps go in as they are; only the two half spectra are whole-volume sized."""
    monkeypatch.setattr(fsc_mod, "_BLOCK", 512)  # one plane at a time, as for a big tomogram
    shape = (32, 48, 48)
    for name in "ab":
        np.save(tmp_path / f"{name}.npy", rng.normal(size=shape).astype(np.float32))
    a, b = (np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in "ab")
    fourier_shell_correlation(a, b, method="numpy")  # warm up imports and caches
    tracemalloc.start()
    try:
        fourier_shell_correlation(a, b, method="numpy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    spectra = 2 * shape[0] * shape[1] * (shape[2] // 2 + 1) * np.dtype(np.complex64).itemsize
    assert peak < spectra + 0.5 * a.nbytes, (peak / a.nbytes, spectra / a.nbytes)


# ------------------------------------------------------------------------------ per slice
def test_frc_per_slice_scores_each_slice(rng):
    clean = rng.normal(size=(4, 32, 40))
    noise = np.array([0.0, 0.5, 1.0, 2.0])[:, None, None] * rng.normal(size=clean.shape)
    curves = frc_per_slice(clean + noise, clean, voxel_size=(30.0, 2.0, 2.0))
    assert len(curves) == 4
    np.testing.assert_allclose(curves[0].fsc, 1.0, atol=1e-6)
    means = [c.fsc[1:].mean() for c in curves]
    assert means == sorted(means, reverse=True)
    for i, c in enumerate(curves):
        assert c.voxel_size == (2.0, 2.0)
        assert c.nyquist == pytest.approx(4.0)
        np.testing.assert_allclose(c.fsc, fourier_shell_correlation(clean[i] + noise[i], clean[i], voxel_size=2.0).fsc)
    via_numpy = frc_per_slice(clean + noise, clean, voxel_size=2.0, method="numpy")
    np.testing.assert_allclose([c.fsc for c in via_numpy], [c.fsc for c in curves], atol=1e-5)


# ------------------------------------------------------------------------------ crossings
def test_crossing_interpolates_between_shells():
    curve = FSCCurve(
        frequency=np.array([0.0, 0.1, 0.2, 0.3]), fsc=np.array([1.0, 0.8, 0.4, 0.1]),
        n_voxels=np.array([1, 10, 40, 90]), voxel_size=(1.0,),
    )
    assert curve.crossing(0.5) == pytest.approx(1 / 0.175)
    assert curve.crossing(0.143) == pytest.approx(1 / (0.2 + 0.1 * 0.257 / 0.3))
    assert curve.crossing(0.05) is None
    assert curve.pairs() == [[10.0, 0.8], [5.0, 0.4], [pytest.approx(1 / 0.3), 0.1]]
    assert curve.resolution[0] == np.inf


# ------------------------------------------------------------------------------ errors
def test_different_shapes_are_a_clear_error(rng):
    with pytest.raises(ValueError, match=r"image shape \(16, 20, 20\) differs from reference shape \(16, 20, 21\)"):
        fourier_shell_correlation(rng.normal(size=(16, 20, 20)), rng.normal(size=(16, 20, 21)))
    with pytest.raises(ValueError, match="differs"):
        frc_per_slice(rng.normal(size=(3, 20, 20)), rng.normal(size=(4, 20, 20)))


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((2, 8, 8, 8), {}, "2D image or a 3D volume"),
        ((2, 16, 16), {}, "at least 4 voxels"),
        ((8, 16, 16), {"voxel_size": 0.0}, "positive"),
        ((8, 16, 16), {"voxel_size": (1.0, 1.0)}, "fewer than 3"),
        ((8, 16, 16), {"method": "fast"}, "method"),
        ((8, 16, 16), {"method": "torch", "voxel_size": (2.0, 1.0, 1.0)}, "isotropic"),
    ],
)
def test_bad_input_names_the_problem(rng, shape, kwargs, match):
    vol = rng.normal(size=shape)
    with pytest.raises(ValueError, match=match):
        fourier_shell_correlation(vol, vol, **kwargs)


def test_complex_input_is_refused(rng):
    vol = rng.normal(size=(8, 8, 8)) + 0j
    with pytest.raises(ValueError, match="real-valued"):
        fourier_shell_correlation(vol, vol)
