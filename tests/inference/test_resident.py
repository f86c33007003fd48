"""The resident path (whole volume on the device; the GPU's default) against the tile-by-tile path.

CI has no GPU, so the resident path runs here on the CPU: the same tiles, normalisation,
stitching and statistics, computed with torch on the device instead of numpy on the host, must
give the result of the host path. The CUDA-only parts (pinned staging buffers, events) are thin
and covered by ``benchmarks/inference.py`` on a GPU.
"""

from __future__ import annotations

import logging
import os

import mrcfile
import numpy as np
import pytest
import torch

from napari_cryoden.inference import resident as resident_module
from napari_cryoden.inference.engine import iter_denoise
from napari_cryoden.inference.resident import gather_tile, tensor_stats, to_device, to_host
from napari_cryoden.inference.normalize import robust_stats, robust_stats_tensor
from napari_cryoden.inference.stream import denoise_file, header_stats
from napari_cryoden.inference.tiling import plan_tiles, read_tile
from napari_cryoden.inference.timing import STAGES
from napari_cryoden.models.fast import FastUNet3D
from napari_cryoden.models.networks import N2NUNet2D
from napari_cryoden.models.registry import LoadedModel


def _drive(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


@pytest.fixture(scope="module")
def net3d():
    torch.manual_seed(0)
    return FastUNet3D().eval()


@pytest.fixture(scope="module")
def net2d():
    torch.manual_seed(0)
    return LoadedModel.from_module(N2NUNet2D(), name="n2n-2d-test", ndim=2)


def _volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * 3 + 10).astype(np.float32)


def test_gather_tile_matches_read_tile():
    vol = _volume((13, 21, 17))
    tensor = torch.from_numpy(vol)
    tiles = plan_tiles(vol.shape, (8, 8, 8), (4, 6, 5), (1, 2, 1))
    assert any(ax.start < 0 for t in tiles for ax in t.axes)  # border tiles are reflected
    for t in tiles:
        np.testing.assert_array_equal(gather_tile(tensor, t).numpy(), read_tile(vol, t))


def test_robust_stats_tensor_matches_numpy():
    vol = _volume((40, 64, 64))
    vol[3, 4, 5] = np.nan
    vol[7, 8, 9] = np.inf
    for max_samples in (1 << 22, 5000):
        expected = robust_stats(vol, max_samples=max_samples)
        got = robust_stats_tensor(torch.from_numpy(vol), max_samples=max_samples)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    # a constant volume falls back to a scale of 1, as the numpy version does
    assert robust_stats_tensor(torch.full((4, 5, 6), 2.5)) == robust_stats(np.full((4, 5, 6), 2.5)) == (2.5, 1.0)
    with pytest.raises(ValueError, match="no finite values"):
        robust_stats_tensor(torch.full((3, 3), float("nan")))


def test_tensor_stats_match_header_stats():
    vol = _volume((9, 30, 31))
    got = tensor_stats(torch.from_numpy(vol))
    np.testing.assert_allclose(got, header_stats(vol), rtol=1e-6)


def test_to_device_and_back_on_cpu(tmp_path):
    vol = (np.arange(5 * 6 * 7) % 251).astype(np.int16).reshape(5, 6, 7)
    tensor = to_device(vol, torch.device("cpu"))
    assert tensor.dtype == torch.float32 and tensor.shape == vol.shape
    np.testing.assert_array_equal(tensor.numpy(), vol.astype(np.float32))
    out = np.zeros(vol.shape, dtype=np.float32)
    to_host(tensor * 2, out)
    np.testing.assert_array_equal(out, 2 * vol.astype(np.float32))


@pytest.mark.parametrize("shape, tile", [((20, 36, 44), (16, 16, 16)), ((9, 24, 24), None)])
def test_resident_equals_tile_by_tile_3d(net3d, shape, tile):
    vol = _volume(shape)
    vol[2, 3, 4] = np.nan  # replaced by the median on both paths
    info_host, info_res, timings = {}, {}, {}
    host = _drive(iter_denoise(vol, net3d, tile=tile, overlap=8, device="cpu", precision="fp32",
                               resident=False, info=info_host))
    res = _drive(iter_denoise(vol, net3d, tile=tile, overlap=8, device="cpu", precision="fp32",
                              resident=True, info=info_res, timings=timings))
    assert info_res["resident"] and not info_host["resident"]
    assert info_res["tiles"] == info_host["tiles"] and info_res["nonfinite"] == info_host["nonfinite"] == 1
    np.testing.assert_allclose(res, host, rtol=1e-5, atol=1e-5 * float(np.abs(host).max()))
    np.testing.assert_allclose(info_res["header_stats"], header_stats(res), rtol=1e-5)
    assert set(timings) <= set(STAGES) and {"read", "stats", "network", "stitch", "d2h"} <= set(timings)
    assert all(v >= 0 for v in timings.values())


@pytest.mark.parametrize("shape", [(40, 72), (3, 40, 72)])
def test_resident_equals_tile_by_tile_2d(net2d, shape):
    vol = _volume(shape, seed=1)
    host = _drive(iter_denoise(vol, net2d, device="cpu", precision="fp32", resident=False, overlap=32))
    res = _drive(iter_denoise(vol, net2d, device="cpu", precision="fp32", resident=True, overlap=32))
    assert res.shape == vol.shape and res.dtype == np.float32
    np.testing.assert_allclose(res, host, rtol=1e-5, atol=1e-5 * float(np.abs(host).max()))


def test_resident_out_of_memory_splits_tiles(net3d, monkeypatch, caplog):
    """A forward pass that runs out of memory is retried on halves, on the resident path as on
    the host path, with the same result."""
    vol = _volume((16, 32, 32))
    forward = net3d.forward
    calls = {"n": 0}

    def flaky(x):
        if x.shape[-1] > 24 and calls["n"] < 1:
            calls["n"] += 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x)

    monkeypatch.setattr(net3d, "forward", flaky)
    results = {}
    for resident in (False, True):
        calls["n"] = 0
        info = {}
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="napari_cryoden"):
            results[resident] = _drive(iter_denoise(vol, net3d, tile=16, overlap=8, device="cpu", precision="fp32",
                                                    resident=resident, info=info))
        assert info["oom_splits"] >= 1 and "out of memory" in caplog.text
    expected = results[False]
    np.testing.assert_allclose(results[True], expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def test_resident_nonfinite_output_is_refused(net3d, monkeypatch):
    monkeypatch.setattr(net3d, "forward", lambda x: x * float("nan"))
    with pytest.raises(ValueError, match="NaN/Inf"):
        _drive(iter_denoise(_volume((8, 16, 16)), net3d, tile=8, overlap=8, device="cpu", precision="fp32",
                            resident=True))


@pytest.mark.parametrize("mmap_threshold", [0, 2**28], ids=["streamed", "in-memory"])
def test_denoise_file_resident_writes_the_same_file(net3d, tmp_path, mmap_threshold):
    src = tmp_path / "tomo.mrc"
    with mrcfile.new(src) as mrc:
        mrc.set_data(_volume((12, 40, 40)))
        mrc.voxel_size = 7.5
    outs = {}
    for resident in (False, True):
        dst = tmp_path / f"out-{resident}.mrc"
        timings = {}
        result = denoise_file(src, dst, net3d, device="cpu", precision="fp32", resident=resident, overlap=8,
                              mmap_threshold=mmap_threshold, timings=timings)
        assert result.streamed is (mmap_threshold == 0) and "read" in timings and "write" in timings
        assert result.info["resident"] is resident
        assert mrcfile.validate(dst, print_file=open(os.devnull, "w"))
        with mrcfile.open(dst) as mrc:
            labels = [text.split()[0] if text.startswith("Created by") else text for text in mrc.get_labels()]
            outs[resident] = (mrc.data.copy(), mrc.header.copy(), mrc.voxel_size.copy(), labels)
    (a, ha, va, la), (b, hb, vb, lb) = outs[False], outs[True]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    assert va == vb and la == lb
    for field in ("nx", "ny", "nz", "mode", "mx", "my", "mz"):
        assert hb[field] == ha[field]
    for field in ("dmin", "dmax", "dmean", "rms"):
        np.testing.assert_allclose(float(hb[field]), float(ha[field]), rtol=1e-4)


def test_to_host_reports_slabs_in_order(monkeypatch):
    monkeypatch.setattr(resident_module, "COPY_SLAB_BYTES", 3 * 17 * 19 * 4)  # 3 slices a slab
    tensor = torch.from_numpy(_volume((13, 17, 19)))
    out = np.zeros(tuple(tensor.shape), dtype=np.float32)
    seen = []

    def on_slab(a, b):
        np.testing.assert_array_equal(out[a:b], tensor[a:b].numpy())  # the rows are there when told
        seen.append((a, b))

    to_host(tensor, out, on_slab=on_slab)
    assert seen == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 13)]
    np.testing.assert_array_equal(out, tensor.numpy())


def _tomo(tmp_path, shape=(12, 40, 40)):
    src = tmp_path / "tomo.mrc"
    with mrcfile.new(src) as mrc:
        mrc.set_data(_volume(shape))
        mrc.voxel_size = 7.5
    return src


def test_resident_output_is_written_while_it_comes_back(net3d, tmp_path, monkeypatch):
    """A resident run's in-memory output goes to the file slab by slab (MrcRowWriter), and the
    file equals that of the tile-by-tile run, which writes it whole at the end."""
    from napari_cryoden.io import MrcRowWriter

    src = _tomo(tmp_path)
    monkeypatch.setattr(resident_module, "COPY_SLAB_BYTES", 5 * 40 * 40 * 4)  # 5 slices a slab: 3 slabs
    writes = []
    real_write = MrcRowWriter.write
    monkeypatch.setattr(MrcRowWriter, "write", lambda self, a, rows: (writes.append((a, len(rows))),
                                                                       real_write(self, a, rows))[1])
    denoise_file(src, tmp_path / "host.mrc", net3d, device="cpu", precision="fp32", resident=False, overlap=8)
    assert writes == []  # no statistics before the end: written whole, as before
    denoise_file(src, tmp_path / "res.mrc", net3d, device="cpu", precision="fp32", resident=True, overlap=8)
    assert writes == [(0, 5), (5, 5), (10, 2)]
    with mrcfile.open(tmp_path / "host.mrc") as a, mrcfile.open(tmp_path / "res.mrc") as b:
        np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-5 * float(np.abs(a.data).max()))
        assert a.voxel_size == b.voxel_size
        for field in ("dmin", "dmax", "dmean", "rms"):
            np.testing.assert_allclose(float(b.header[field]), float(a.header[field]), rtol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.mrc", "res.mrc", "tomo.mrc"]


def test_a_write_failing_during_the_copy_back_leaves_nothing(net3d, tmp_path, monkeypatch):
    import errno

    src = _tomo(tmp_path)
    monkeypatch.setattr(resident_module, "COPY_SLAB_BYTES", 5 * 40 * 40 * 4)
    real = os.pwrite
    calls = []

    def fail_second(fd, buf, offset):
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buf, offset)

    monkeypatch.setattr(os, "pwrite", fail_second)
    with pytest.raises(OSError, match="No space"):
        denoise_file(src, tmp_path / "res.mrc", net3d, device="cpu", precision="fp32", resident=True, overlap=8)
    assert len(calls) >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tomo.mrc"]


def test_resampled_runs_are_written_whole(net3d, tmp_path, monkeypatch):
    """Resampled back to the input's grid, the network's rows are not the output's: no row writes."""
    from napari_cryoden.io import MrcRowWriter
    from napari_cryoden.models.registry import LoadedModel

    src = _tomo(tmp_path, (12, 40, 40))
    lm = LoadedModel.from_module(net3d, name="fast-test", ndim=3)
    lm.card = {"voxel_size_A": 15.0}
    started = []
    monkeypatch.setattr(MrcRowWriter, "__init__", lambda self, *a, **k: started.append(a))
    info = {}
    denoise_file(src, tmp_path / "res.mrc", lm, device="cpu", precision="fp32", resident=True, overlap=8,
                 info=info)
    assert info["resample_plan"].resampled and started == []
    with mrcfile.open(tmp_path / "res.mrc") as mrc:
        assert mrc.data.shape == (12, 40, 40)


def test_write_mrc_with_known_stats_writes_the_same_file(tmp_path):
    from napari_cryoden.io import write_mrc

    data = _volume((7, 33, 35))
    plain = write_mrc(tmp_path / "plain.mrc", data, (4.0, 5.0, 6.0), label="cryoden test")
    known = write_mrc(tmp_path / "known.mrc", data, (4.0, 5.0, 6.0), label="cryoden test",
                      stats=header_stats(data))
    assert plain.stat().st_size == known.stat().st_size
    with mrcfile.open(plain) as a, mrcfile.open(known) as b:
        np.testing.assert_array_equal(b.data, a.data)
        assert a.voxel_size == b.voxel_size and a.get_labels()[1:] == b.get_labels()[1:]
        for field in ("dmin", "dmax", "dmean", "rms"):
            np.testing.assert_allclose(float(b.header[field]), float(a.header[field]), rtol=1e-5)
    assert mrcfile.validate(known, print_file=open(os.devnull, "w"))
    # never over an input, and not over an existing file without overwrite
    with pytest.raises(FileExistsError):
        write_mrc(known, data, stats=header_stats(data))


def test_auto_is_not_resident_on_the_cpu(net3d):
    info = {}
    _drive(iter_denoise(_volume((8, 16, 16)), net3d, tile=8, overlap=8, device="cpu", info=info))
    assert info["resident"] is False
    assert resident_module.use_resident(None, torch.device("cpu"), 10) is False


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")


@cuda
def test_cuda_copies_in_slabs(monkeypatch):
    monkeypatch.setattr(resident_module, "COPY_SLAB_BYTES", 3 * 17 * 19 * 4)  # 3 slices a slab: 5 slabs, both buffers
    vol = (np.arange(13 * 17 * 19) % 30011).astype(np.int16).reshape(13, 17, 19)
    dev = torch.device("cuda")
    tensor = to_device(vol, dev)
    assert tensor.device.type == "cuda"
    np.testing.assert_array_equal(tensor.cpu().numpy(), vol.astype(np.float32))
    out = np.zeros(vol.shape, dtype=np.float32)
    seen = []
    to_host(tensor + 1, out, on_slab=lambda a, b: seen.append((a, b, bool((out[a:b] == vol[a:b] + 1).all()))))
    np.testing.assert_array_equal(out, vol.astype(np.float32) + 1)
    assert seen == [(0, 3, True), (3, 6, True), (6, 9, True), (9, 12, True), (12, 13, True)]


@cuda
def test_cuda_resident_matches_host_path(net3d):
    vol = _volume((40, 72, 64))
    host = _drive(iter_denoise(vol, net3d, tile=32, overlap=8, device="cuda", precision="fp32", resident=False))
    info = {}
    res = _drive(iter_denoise(vol, net3d, tile=32, overlap=8, device="cuda", precision="fp32", resident=True,
                              info=info))
    assert info["resident"]
    assert float(np.abs(res - host).max()) <= 0.01 * float(host.std())
    bf16 = _drive(iter_denoise(vol, net3d, tile=32, overlap=8, device="cuda", precision="bf16", resident=True))
    assert float(np.sqrt(np.mean((bf16 - host) ** 2))) <= 0.05 * float(host.std())


def test_resident_tiles_are_seam_free(net3d):
    """Tiled on the device (margins from the measured receptive field) equals one pass over the
    whole volume, as on the host path (tests/inference/test_seam_free.py)."""
    vol = _volume((16, 32, 40), seed=3)
    one = _drive(iter_denoise(vol, net3d, tile=(16, 32, 40), device="cpu", precision="fp32", resident=True))
    info = {}
    tiled = _drive(iter_denoise(vol, net3d, tile=16, device="cpu", precision="fp32", resident=True, info=info))
    assert info["tiles"] == 6
    np.testing.assert_allclose(tiled, one, rtol=1e-4, atol=1e-4 * float(np.abs(one).max()))
