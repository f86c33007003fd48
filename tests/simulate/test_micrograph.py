"""The micrograph simulator: reproducibility, even/odd frame sums, dose, particle projections."""

import numpy as np
import pytest

from napari_cryoden.simulate import SimulatedMicrograph, simulate_micrograph
from napari_cryoden.simulate.micrograph import project_particles
from napari_cryoden.simulate.specimen import blob_particle

from conftest import corr, psnr  # tests/conftest.py (tests/ is on sys.path)

SHAPE = (64, 80)


@pytest.fixture(scope="module")
def mic() -> SimulatedMicrograph:
    return simulate_micrograph(SHAPE, seed=5, n_frames=10)


def test_shapes_dtypes_params_and_reproducible(mic):
    for name in ("noisy", "even", "odd", "clean", "potential"):
        a = getattr(mic, name)
        assert a.shape == SHAPE and a.dtype == np.float32 and np.isfinite(a).all(), name
    p = mic.params
    assert p["n_frames"] == 10 and p["n_even_frames"] == p["n_odd_frames"] == 5
    assert p["n_particles"] > 0 and mic.pixel_size == 5.0
    again = simulate_micrograph(SHAPE, seed=5, n_frames=10)
    for name in ("noisy", "even", "odd", "clean", "potential"):
        np.testing.assert_array_equal(getattr(mic, name), getattr(again, name))
    assert not np.array_equal(simulate_micrograph(SHAPE, seed=6, n_frames=10).noisy, mic.noisy)


def test_frame_sums_relate_to_the_full_sum(mic):
    np.testing.assert_allclose(mic.noisy, (mic.even + mic.odd) / 2, atol=1e-5)
    odd_frames = simulate_micrograph(SHAPE, seed=5, n_frames=5)  # 3 even frames, 2 odd
    np.testing.assert_allclose(odd_frames.noisy, (3 * odd_frames.even + 2 * odd_frames.odd) / 5, atol=1e-5)


def test_even_and_odd_noise_independent_signal_shared():
    m = simulate_micrograph((96, 96), seed=2, dose_total=400.0, radiation_damage=False)
    assert abs(corr(m.even - m.clean, m.odd - m.clean)) < 0.05
    assert corr(m.even, m.odd) > 0.3
    assert corr(m.clean, m.potential) < -0.3  # protein dark (underfocus)
    inv = simulate_micrograph((96, 96), seed=2, dose_total=400.0, radiation_damage=False, invert=True)
    np.testing.assert_allclose(inv.noisy, -m.noisy, atol=1e-5)


def test_more_dose_gives_higher_psnr():
    low = simulate_micrograph(SHAPE, seed=1, dose_total=20.0, radiation_damage=False)
    high = simulate_micrograph(SHAPE, seed=1, dose_total=80.0, radiation_damage=False)
    np.testing.assert_array_equal(low.clean, high.clean)
    assert 4.5 < psnr(high.noisy, high.clean) - psnr(low.noisy, low.clean) < 7.5


def test_particle_count_and_projection_of_maps():
    maps = {"a": blob_particle(np.random.default_rng(0), radius=3.0),
            "b": blob_particle(np.random.default_rng(1), radius=3.0)}
    m = simulate_micrograph((64, 64), pixel_size=10.0, particles=maps, density=4, ice=False, seed=0)
    assert m.params["n_particles"] == 4 and m.params["particles"] == ["a", "b"]
    # Identity orientation projects along Z: the (Y, X) sum of the map, centred in the box.
    p = np.pad(blob_particle(np.random.default_rng(2), radius=5.0), ((0, 0), (0, 0), (3, 0)))
    proj = project_particles(p, np.eye(3)[None])[0]
    d = proj.shape[0]
    ref = np.zeros((d, d))
    lo = [(d - s) // 2 for s in p.shape]
    ref[lo[1]:lo[1] + p.shape[1], lo[2]:lo[2] + p.shape[2]] = p.sum(0)
    assert corr(proj, ref) > 0.999
    assert proj.sum() == pytest.approx(p.sum(), rel=0.05)


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (8, 64)}, "shape"),
    ({"shape": (32, 32, 32)}, "shape"),
    ({"n_frames": 1}, "n_frames"),
    ({"pixel_size": 0.0}, "pixel_size"),
    ({"density": 2.0}, "density"),
    ({"dose_total": 0.0}, "dose_total"),
])
def test_bad_parameters_raise_one_line_value_errors(kwargs, match):
    kwargs = {"shape": (32, 32), **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        simulate_micrograph(**kwargs)
    assert "\n" not in str(info.value)
