"""Realistic and mixed training streams, and the recipe table."""

import numpy as np
import pytest

from napari_cryoden.models import ARCHITECTURES, build
from napari_cryoden.simulate import blob_particle
from napari_cryoden.training.data import MixedStream, RealisticStream, ThesisStream
from napari_cryoden.recipes import RECIPES


def _particles(rng):
    return {f"p{i}": blob_particle(rng, radius=3) for i in range(2)}


def _realistic(seed, **kw):
    rng = np.random.default_rng(seed)
    return RealisticStream(_particles(rng), rng, batch_size=2, patch=16, shape=(16, 32, 32), patches_per_volume=3, **kw)


def test_realistic_stream_is_seeded_normalised_and_renews_its_tomogram():
    a, b = _realistic(0), _realistic(0)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    assert xa.shape == ya.shape == (2, 1, 16, 16, 16)
    np.testing.assert_array_equal(xa.numpy(), xb.numpy())
    np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    first = a._volume[0]
    next(iter(a))  # 4 patches drawn in all: the 4th comes from a new tomogram
    assert a._volume[0] is not first
    # normalised with the whole noisy tomogram's median and IQR/1.349
    noisy = a._volume[0]
    q1, med, q3 = np.percentile(noisy, [25, 50, 75])
    assert abs(med) < 0.05 and abs((q3 - q1) / 1.349 - 1) < 0.05


def test_realistic_parameters_stay_in_their_ranges():
    s = _realistic(1, defocus_um=(2.0, 3.0), dose_total=(50.0, 60.0), max_membranes=1)
    for _ in range(20):
        p = s.parameters()
        assert 2 <= p["defocus_um"] <= 3 and 50 <= p["dose_total"] <= 60 and p["membranes"] in (0, 1)


@pytest.mark.parametrize("kw, match", [
    ({"ice_thickness": (100.0, 3000.0)}, r"ice_thickness must be a pair \(low, high\) within \[160, inf\]"),
    ({"ice_thickness": (900.0, 800.0)}, "ice_thickness"),
    ({"detector_correlation": (0.0, 0.9)}, "detector_correlation"),
    ({"detector_correlation": (0.1,)}, "detector_correlation"),
])
def test_bad_optional_ranges_are_refused_when_the_stream_is_built(kw, match):
    """Before any tomogram is simulated: the thickness must hold the 16-voxel slab of 10 Å (160 Å)."""
    with pytest.raises(ValueError, match=match):
        _realistic(0, **kw)


def test_low_dose_ranges_reach_the_simulated_tomograms(monkeypatch):
    """With the optional ranges the stream's tomograms are simulated with the drawn thickness and
    detector correlation (recorded in their params), and the stream stays seeded."""
    import napari_cryoden.simulate.tomogram as tomogram

    seen = []
    real = tomogram.simulate_tomogram

    def spy(*a, **kw):
        seen.append(kw)
        return real(*a, **kw)

    s = _realistic(2, dose_total=(15.0, 160.0), dose_log=True, ice_thickness=(500.0, 900.0),
                   detector_correlation=(0.2, 0.4))
    monkeypatch.setattr(tomogram, "simulate_tomogram", spy)
    x, _ = next(iter(s))
    monkeypatch.undo()
    (kw,) = seen
    assert 500 <= kw["ice_thickness"] <= 900 and 0.2 <= kw["detector_correlation"] <= 0.4
    assert 15 <= kw["dose_total"] <= 160
    again = _realistic(2, dose_total=(15.0, 160.0), dose_log=True, ice_thickness=(500.0, 900.0),
                       detector_correlation=(0.2, 0.4))
    np.testing.assert_array_equal(next(iter(again))[0].numpy(), x.numpy())


def test_patch_larger_than_the_simulated_tomogram_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        RealisticStream({}, np.random.default_rng(0), patch=64, shape=(32, 64, 64))


def test_mixed_stream_draws_from_each_stream_by_weight():
    rng = np.random.default_rng(2)
    thesis = ThesisStream(list(_particles(rng).values()), rng, batch_size=1, patch=16, max_particles=2)

    class Const:
        def sample(self):
            return np.zeros((16, 16, 16), np.float32), np.ones((16, 16, 16), np.float32)

    mixed = MixedStream([Const(), thesis], [1, 0], rng, batch_size=3)
    _, y = next(iter(mixed))
    assert (y.numpy() == 1).all()
    with pytest.raises(ValueError, match="one non-negative weight per stream"):
        MixedStream([Const()], [1, 1], rng)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_name_known_architectures_with_fitting_patches(name):
    r = RECIPES[name]
    assert r["architecture"] in ARCHITECTURES and r["mode"] in ("ae", "gan", "wgangp")
    net = build(r["architecture"], **r["arch_kwargs"])
    assert r["patch"] % net.stride == 0 and r["overlap"] * 2 % net.stride == 0
