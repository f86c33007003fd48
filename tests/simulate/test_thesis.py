import numpy as np
import pytest
from conftest import SHARED_DATA

from napari_cryoden.simulate import (
    apply_missing_wedge, blob_particle, load_particle_maps, missing_wedge_mask, salt_and_pepper,
    sample_tomogram, thesis_pair,
)


def test_missing_wedge_mask_geometry():
    m = missing_wedge_mask((32, 8, 32), 60.0)
    assert m[0, 0, 0] == 1                       # zero frequency kept
    assert m[0, 0, 5] == 1                       # kx axis (0 deg tilt) measured
    assert m[5, 0, 0] == 0                       # kz axis (90 deg) missing
    assert m[5, 0, 3] == 1 and m[10, 0, 3] == 0  # 59 deg kept, 73 deg missing
    frac = 1 - m.mean()
    assert 0.25 < frac < 0.40                    # ~ (90-60)/90 of directions


def test_wedge_is_linear_and_keeps_mean(rng):
    v = rng.normal(size=(16, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(apply_missing_wedge(2 * v), 2 * apply_missing_wedge(v), rtol=1e-4, atol=1e-5)
    assert apply_missing_wedge(v).mean() == pytest.approx(v.mean(), abs=1e-5)


def test_thesis_pair_snr_and_reproducible():
    parts = [blob_particle(np.random.default_rng(i), radius=5) for i in range(3)]
    a = thesis_pair(parts, np.random.default_rng(3), box=32, n_particles=1, snr=0.5, tilt_max_deg=None)
    b = thesis_pair(parts, np.random.default_rng(3), box=32, n_particles=1, snr=0.5, tilt_max_deg=None)
    np.testing.assert_array_equal(a[0], b[0])
    noisy, clean = a
    snr = clean.var() / (noisy - clean).var()
    assert snr == pytest.approx(0.5, rel=0.1)
    com = np.array(np.nonzero(clean > 0.1)).mean(1)
    np.testing.assert_allclose(com, 15.5, atol=3)  # single particle is centred


def test_salt_and_pepper_fraction(rng):
    v = rng.normal(size=(20, 20, 20)).astype(np.float32)
    sp = salt_and_pepper(v, rng, fraction=0.1)
    hit = (sp == v.max()) | (sp == v.min())
    assert 0.08 < hit.mean() < 0.12


def test_sample_tomogram_is_crowded_and_seeded():
    noisy, clean, vs = sample_tomogram(seed=1, shape=(24, 48, 48), n_particles=12)
    noisy2, _, _ = sample_tomogram(seed=1, shape=(24, 48, 48), n_particles=12)
    np.testing.assert_array_equal(noisy, noisy2)
    assert vs == 10.0 and (clean > 0.1).mean() > 0.005


@pytest.mark.skipif(not (SHARED_DATA / "maps_10A").is_dir(), reason="shared particle maps not available")
def test_load_particle_maps_crops_and_scales():
    maps = load_particle_maps(SHARED_DATA / "maps_10A", ["1qvr", "3qm1"])
    assert sorted(maps) == ["1qvr", "3qm1"]
    for m in maps.values():
        assert m.max() == pytest.approx(1.0) and max(m.shape) < 40
