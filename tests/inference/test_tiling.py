import numpy as np
import pytest

import itertools
import math

from napari_cryoden.inference import Cancelled, auto_geometry, denoise, plan_tiles, read_tile, waste_ratio
from napari_cryoden.inference.tiling import computed_voxels, plan_axis, reflect_indices, split_tile


@pytest.mark.parametrize("length, tile, overlap, stride", [(37, 16, 4, 8), (5, 16, 4, 8), (160, 64, 24, 8), (1, 8, 0, 8), (100, 24, 0, 8), (96, 96, 24, 8)])
def test_axis_cores_partition_and_align(length, tile, overlap, stride):
    tiles = plan_axis(length, tile, overlap, stride)
    covered = np.zeros(length, int)
    for t in tiles:
        covered[t.out] += 1
        assert t.size % stride == 0 and t.size <= tile + 2 * overlap + stride
        assert (t.start + overlap) % stride == 0  # aligned to the stride in the padded frame
        assert t.crop.stop - t.crop.start == t.out.stop - t.out.start
    assert (covered == 1).all()


def test_bad_geometry_names_argument():
    with pytest.raises(ValueError, match="tile"):
        plan_axis(100, 20, 0, 8)
    with pytest.raises(ValueError, match="overlap"):
        plan_axis(100, 64, 3, 8)
    with pytest.raises(ValueError, match="tile"):
        plan_axis(100, 0, 0, 8)


def test_reflect_indices():
    np.testing.assert_array_equal(reflect_indices(-3, 10, 5), [3, 2, 1, 0, 1, 2, 3, 4, 3, 2])
    np.testing.assert_array_equal(reflect_indices(-2, 4, 1), [0, 0, 0, 0])


def test_read_tile_matches_np_pad(aniso_volume):
    padded = np.pad(aniso_volume, 16, mode="reflect")
    for t in plan_tiles(aniso_volume.shape, (8, 16, 16), (2, 4, 4), 4):
        block = read_tile(aniso_volume, t)
        sl = tuple(slice(a.start + 16, a.start + 16 + a.size) for a in t.axes)
        np.testing.assert_array_equal(block, padded[sl])


@pytest.mark.parametrize("tile, overlap", [((16, 16, 16), (4, 4, 4)), ((8, 64, 64), (0, 0, 0)), (24, 8), (64, 0)])
def test_identity_round_trip(identity_model, tile, overlap):
    vol = np.arange(5 * 37 * 41, dtype=np.float32).reshape(5, 37, 41)
    out = denoise(vol, identity_model, tile=tile, overlap=overlap, device="cpu", precision="fp32")
    assert out.dtype == np.float32 and out.shape == vol.shape
    np.testing.assert_allclose(out, vol, rtol=1e-6, atol=1e-3)


def test_memmap_and_integer_input(identity_model, tmp_path):
    vol = (np.arange(6 * 20 * 30) % 251).astype(np.uint16).reshape(6, 20, 30)
    mm = np.memmap(tmp_path / "v.raw", dtype=np.uint16, mode="w+", shape=vol.shape)
    mm[:] = vol
    out = denoise(mm, identity_model, tile=16, overlap=4, device="cpu", precision="fp32")
    np.testing.assert_allclose(out, vol, rtol=1e-5, atol=1e-3)


def test_progress_and_cancel(identity_model, aniso_volume):
    seen = []
    denoise(aniso_volume, identity_model, tile=16, overlap=4, device="cpu", progress=lambda d, t: seen.append((d, t)))
    total = seen[-1][1]
    assert seen[0] == (0, total) and seen[-1] == (total, total) and total > 1
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        denoise(aniso_volume, identity_model, tile=16, overlap=4, device="cpu", cancel=lambda: next(calls) >= 2)


def test_input_is_not_modified_and_nan_is_contained(identity_model, aniso_volume):
    vol = aniso_volume.copy()
    vol[2, 3, 4] = np.nan
    before = vol.copy()
    out = denoise(vol, identity_model, tile=16, overlap=4, device="cpu", precision="fp32")
    np.testing.assert_array_equal(vol, before)
    assert np.isfinite(out).all()


def test_2d_input_with_3d_model_gets_clear_message(identity_model):
    with pytest.raises(ValueError, match="3D tomogram model and the input is a 2D image"):
        denoise(np.zeros((32, 32), np.float32), identity_model, device="cpu")


def test_bad_device_and_precision(identity_model, aniso_volume):
    with pytest.raises(ValueError, match="device"):
        denoise(aniso_volume, identity_model, device="tpu")
    with pytest.raises(ValueError, match="precision"):
        denoise(aniso_volume, identity_model, device="cpu", precision="int8")


def test_grad_mode_is_not_leaked_by_a_suspended_or_cancelled_run(identity_model, aniso_volume):
    import torch

    from napari_cryoden.inference import iter_denoise

    gen = iter_denoise(aniso_volume, identity_model, tile=16, overlap=4, device="cpu")
    next(gen)
    next(gen)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    gen.close()
    with pytest.raises(Cancelled):
        denoise(aniso_volume, identity_model, tile=16, overlap=4, device="cpu", cancel=lambda: True)
    assert torch.is_grad_enabled()


def test_denormal_spread_does_not_divide_by_zero(identity_model):
    """Found by hypothesis: a volume of 0 and 1e-45 gave a float32 scale of 0."""
    vol = np.array([[[0.0, 1e-45]]], dtype=np.float32)
    out = denoise(vol, identity_model, tile=8, overlap=0, device="cpu", precision="fp32")
    assert np.isfinite(out).all()


# ------------------------------------------------------------------------------ waste and auto geometry
def test_waste_ratio_known_values():
    # cores of 96 with 24 voxels of context per side: 144^3 computed per 96^3 kept
    assert waste_ratio((192, 192, 192), 96, 24, 8) == pytest.approx((144 / 96) ** 3)
    # Topaz-Denoise 3D: 96^3 tiles padded by 48 per side, a 192^3 window per 96^3 output
    assert waste_ratio((192, 192, 192), 96, 48, 1) == pytest.approx(8.0)
    # a thin axis gets one tile: 36 + 2 * 24 rounded up to the stride 8 = 88
    assert waste_ratio((36, 96, 96), (96, 96, 96), 24, 8) == pytest.approx(88 / 36 * (144 / 96) ** 2)
    shape, tile, overlap = (37, 50, 61), (16, 24, 32), (4, 8, 0)
    brute = sum(math.prod(t.shape) for t in plan_tiles(shape, tile, overlap, 8))
    assert computed_voxels(shape, tile, overlap, 8) == brute


def _brute_best(shape, overlap, stride, budget):
    """Fewest computed voxels over every per-axis core (multiples of the stride up to the axis)."""
    best = None
    choices = [range(stride, -(-L // stride) * stride + 1, stride) for L in shape]
    for cores in itertools.product(*choices):
        tiles = plan_tiles(shape, cores, overlap, stride)
        if max(math.prod(t.shape) for t in tiles) > budget:
            continue
        c = computed_voxels(shape, cores, overlap, stride)
        best = c if best is None else min(best, c)
    return best


@pytest.mark.parametrize("shape, budget", [((20, 70, 45), 40**3), ((36, 64, 100), 10**9), ((50, 50, 50), 30**3)])
def test_auto_geometry_is_the_least_computing_plan_that_fits(shape, budget):
    g = auto_geometry(shape, (8, 8, 8), (8, 8, 8), max_tile_voxels=budget)
    assert math.prod(g.tile_shape(shape)) <= budget
    assert computed_voxels(shape, g.tile, g.overlap, g.stride) == _brute_best(shape, 8, 8, budget)


def test_auto_geometry_gives_a_thin_axis_one_tile():
    # Z = 36: one tile spanning Z with reflect context, the memory going to Y and X
    g = auto_geometry((36, 512, 512), (24, 24, 24), (8, 8, 8), max_tile_voxels=88 * 300 * 300)
    assert len(plan_axis(36, g.tile[0], 24, 8)) == 1
    assert g.tile_shape((36, 512, 512))[0] == 88
    assert g.waste((36, 512, 512)) < waste_ratio((36, 512, 512), 32, 24, 8)


def test_auto_geometry_batches_what_fits_and_respects_fixed_axes():
    g = auto_geometry((10, 64, 64), (0, 16, 16), (1, 8, 8), max_tile_voxels=10**6, max_batch=4,
                      fixed_tile=(1, None, None))
    assert g.tile == (1, 64, 64) and g.batch == 4
    g = auto_geometry((10, 64, 64), (0, 16, 16), (1, 8, 8), max_tile_voxels=2 * 96 * 96, max_batch=8,
                      fixed_tile=(1, None, None))
    assert g.batch == 2
    # the core limit bounds the tile even with memory to spare
    g = auto_geometry((64, 64, 64), (0, 0, 0), (8, 8, 8), max_tile_voxels=10**9, max_core_voxels=32**3)
    assert math.prod(g.tile) <= 32**3


def test_split_tile_halves_the_core_and_keeps_the_grid():
    shape, overlap, stride = (40, 70, 33), (8, 8, 4), 8
    for tile in plan_tiles(shape, (40, 64, 32), overlap, stride):
        pieces = split_tile(tile, overlap, stride)
        covered = np.zeros(shape, int)
        covered[tile.out] -= 1
        for p in pieces:
            covered[p.out] += 1
            assert all(a.size % stride == 0 and (a.start + o) % stride == 0 for a, o in zip(p.axes, overlap))
            assert all(c.stop - c.start == o.stop - o.start for c, o in zip(p.crop, p.out))
        assert not covered.any()
        assert max(math.prod(p.shape) for p in pieces) < math.prod(tile.shape)
