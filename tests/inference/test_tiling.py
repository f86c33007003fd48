import numpy as np
import pytest

from napari_cryoden.inference import Cancelled, denoise, plan_tiles, read_tile
from napari_cryoden.inference.tiling import plan_axis, reflect_indices


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
    with pytest.raises(ValueError, match="no 2D micrograph model"):
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
