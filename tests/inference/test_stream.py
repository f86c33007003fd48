"""File to file denoising with bounded memory: memory-mapped input and output, tile by tile."""

import os
import sys
import tracemalloc

import mrcfile
import numpy as np
import pytest
import torch

import napari_cryoden.inference as inference
from napari_cryoden.inference import Cancelled, denoise, denoise_file, iter_denoise_file
from napari_cryoden.inference import stream
from napari_cryoden.inference.tiling import release_pages
from napari_cryoden.models import UpsampleUnet48
from napari_cryoden.models.registry import LoadedModel

FP32 = {"device": "cpu", "precision": "fp32"}


@pytest.fixture
def tiny3d():
    torch.manual_seed(0)
    return LoadedModel.from_module(UpsampleUnet48(ch=4, final_activation="identity").eval(), name="tiny3d")


def _write(path, data, voxel_zyx=(3.0, 2.0, 2.0)):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.voxel_size = tuple(reversed(voxel_zyx[-3:])) if data.ndim == 3 else (voxel_zyx[2], voxel_zyx[1], 1.0)
    return path


def _read(path):
    with mrcfile.open(path, permissive=False) as mrc:
        vs = mrc.voxel_size
        h = mrc.header
        return np.array(mrc.data), (float(vs.z), float(vs.y), float(vs.x)), (float(h.dmin), float(h.dmax), float(h.dmean), float(h.rms))


def test_streamed_output_equals_in_memory_denoise(tmp_path, rng, tiny3d):
    vol = rng.normal(size=(12, 40, 44)).astype(np.float32)
    src = _write(tmp_path / "tomo.mrc", vol)
    kw = {"tile": 16, "overlap": 8, **FP32}
    expected = denoise(vol, tiny3d, **kw)

    streamed = denoise_file(src, tmp_path / "s.mrc", tiny3d, mmap_threshold=0, **kw)
    in_memory = denoise_file(src, tmp_path / "m.mrc", tiny3d, mmap_threshold=1 << 40, **kw)
    assert streamed.streamed and not in_memory.streamed
    assert streamed.tiles == in_memory.tiles > 1
    for path in (tmp_path / "s.mrc", tmp_path / "m.mrc"):
        data, voxel, stats = _read(path)
        np.testing.assert_array_equal(data, expected)
        assert voxel == pytest.approx((3.0, 2.0, 2.0))
        ref = (expected.min(), expected.max(), expected.mean(dtype=np.float64), expected.std(dtype=np.float64))
        assert stats == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["m.mrc", "s.mrc", "tomo.mrc"]  # no temporary left


def test_engine_reads_and_writes_memmaps(tmp_path, rng, tiny3d, monkeypatch):
    src = _write(tmp_path / "tomo.mrc", rng.normal(size=(12, 24, 24)))
    real, seen = inference.iter_denoise, {}

    def spy(volume, model, **kwargs):
        seen["volume"], seen["out"] = volume, kwargs.get("out")
        return (yield from real(volume, model, **kwargs))

    monkeypatch.setattr(inference, "iter_denoise", spy)
    denoise_file(src, tmp_path / "out.mrc", tiny3d, tile=16, overlap=8, mmap_threshold=0, **FP32)
    assert isinstance(seen["volume"], np.memmap) and isinstance(seen["out"], np.memmap)
    assert seen["out"].shape == (12, 24, 24) and seen["out"].dtype == np.float32


def test_streaming_never_holds_the_volume(tmp_path, rng, identity_model, monkeypatch):
    """After the set-up (statistics), the tile loop and the write allocate a few tiles, not the volume."""
    vol = rng.normal(size=(64, 128, 128)).astype(np.float32)  # 4 MiB
    src = _write(tmp_path / "tomo.mrc", vol)
    monkeypatch.setattr(stream, "STATS_CHUNK_BYTES", 256 * 1024)

    def peak_after_setup(out, threshold):
        gen = iter_denoise_file(src, out, identity_model, tile=16, overlap=8, mmap_threshold=threshold, **FP32)
        tracemalloc.start()
        try:
            next(gen)  # input opened, statistics taken, output created
            tracemalloc.reset_peak()
            for _ in gen:
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    streamed = peak_after_setup(tmp_path / "s.mrc", 0)
    tile_bytes = 32**3 * 4
    assert streamed < min(vol.nbytes / 8, 4 * tile_bytes), f"streaming allocated {streamed / 2**20:.2f} MiB"
    in_memory = peak_after_setup(tmp_path / "m.mrc", 1 << 40)  # for contrast: the path for small files
    assert in_memory >= vol.nbytes
    np.testing.assert_array_equal(_read(tmp_path / "s.mrc")[0], _read(tmp_path / "m.mrc")[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident set size via madvise is Linux")
def test_release_pages_lets_go_of_resident_memory(tmp_path):
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    mm = np.memmap(tmp_path / "big.raw", dtype=np.float32, mode="w+", shape=(16, 1024, 1024))  # 64 MiB
    mm[:] = 1.0
    before = proc.memory_info().rss
    assert release_pages(mm[3:5])  # a view finds its mapping
    after = proc.memory_info().rss
    assert before - after > 32 * 2**20
    assert float(mm[7, 100, 100]) == 1.0  # the data is still there
    assert not release_pages(np.ones(3))


def test_2d_image_file_with_2d_model(tmp_path, rng):
    from test_2d import Tiny2D  # tests/inference is on sys.path (no __init__.py)

    model2d = LoadedModel.from_module(Tiny2D(), name="tiny-2d", ndim=2)
    image = rng.normal(size=(40, 52)).astype(np.float32)
    src = _write(tmp_path / "mic.mrc", image, voxel_zyx=(4.0, 4.0, 4.0))
    result = denoise_file(src, tmp_path / "out.mrc", model2d, tile=16, mmap_threshold=0, **FP32)
    data, voxel, _ = _read(tmp_path / "out.mrc")
    np.testing.assert_array_equal(data, denoise(image, model2d, tile=16, **FP32))
    assert result.info["mode"] == "image" and voxel[1:] == pytest.approx((4.0, 4.0))


def test_stack_file_is_refused_by_a_3d_model(tmp_path, rng, tiny3d):
    src = _write(tmp_path / "particles.mrcs", rng.normal(size=(4, 24, 24)))
    with pytest.raises(ValueError, match="stack of 2D images"):
        denoise_file(src, tmp_path / "out.mrcs", tiny3d, **FP32)
    assert sorted(os.listdir(tmp_path)) == ["particles.mrcs"]


def test_cancel_and_refusals_leave_nothing(tmp_path, rng, tiny3d):
    src = _write(tmp_path / "tomo.mrc", rng.normal(size=(16, 40, 40)))
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        denoise_file(src, tmp_path / "out.mrc", tiny3d, tile=16, overlap=8, mmap_threshold=0,
                     cancel=lambda: next(calls) >= 3, **FP32)
    assert sorted(os.listdir(tmp_path)) == ["tomo.mrc"]
    with pytest.raises(ValueError, match="over the input"):
        denoise_file(src, src, tiny3d, overwrite=True, **FP32)
    (tmp_path / "old.mrc").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        denoise_file(src, tmp_path / "old.mrc", tiny3d, **FP32)
    assert (tmp_path / "old.mrc").read_bytes() == b"keep"


def test_prefetch_asks_the_kernel_to_read_ahead(tmp_path, monkeypatch):
    import os

    from napari_cryoden.inference.stream import prefetch

    path = tmp_path / "next.mrc"
    path.write_bytes(b"\0" * 4096)
    calls = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: (calls.append(advice), real(fd, off, n, advice)))
    assert prefetch(path) is True
    assert calls == [os.POSIX_FADV_WILLNEED]
    assert prefetch(tmp_path / "missing.mrc") is False  # never raises
