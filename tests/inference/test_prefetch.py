"""Reading ahead on the tile-by-tile path: the next batch of tiles is read on a background thread.

It is on for CUDA only (on the CPU the read would compete with the network's threads); CI has no
GPU, so these tests turn it on for the CPU, where the thread, the hand-over, the out-of-memory
splits, errors and cancels are the same. The CUDA-only part (pinned memory and the copy on a
second stream) is thin, and is covered by ``test_cuda_read_ahead_matches`` on a GPU.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from conftest import drain  # tests/conftest.py (tests/ is on sys.path)

from napari_cryoden.inference import engine, prefetch
from napari_cryoden.inference.engine import iter_denoise
from napari_cryoden.inference.stream import denoise_file
from napari_cryoden.models import UpsampleUnet48
from napari_cryoden.models.fast import FastUNet3D
from napari_cryoden.models.networks import N2NUNet2D
from napari_cryoden.models.registry import LoadedModel

FP32 = {"device": "cpu", "precision": "fp32"}


@contextmanager
def _inline():
    """Read in line, as on the CPU by default, within the block."""
    saved = prefetch.PREFETCH_DEVICES
    prefetch.PREFETCH_DEVICES = ()
    try:
        yield
    finally:
        prefetch.PREFETCH_DEVICES = saved


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cryoden-tile-reader")]


@pytest.fixture
def on_cpu(monkeypatch):
    """Read ahead on the CPU too, and count the batches that were taken from the thread."""
    monkeypatch.setattr(prefetch, "PREFETCH_DEVICES", ("cpu", "cuda"))
    taken = []
    real_take = prefetch.Prefetcher.take

    def take(self, tiles):
        xt = real_take(self, tiles)
        taken.append(xt is not None)
        return xt

    monkeypatch.setattr(prefetch.Prefetcher, "take", take)
    return taken


@pytest.fixture(scope="module")
def net3d():
    torch.manual_seed(0)
    return FastUNet3D().eval()


def _volume(shape, seed=0):
    return (np.random.default_rng(seed).normal(size=shape) * 3 + 10).astype(np.float32)


def test_off_on_the_cpu_by_default(net3d):
    assert "cpu" not in prefetch.PREFETCH_DEVICES
    vol = _volume((16, 32, 32))
    drain(iter_denoise(vol, net3d, tile=16, overlap=8, batch_size=2, **FP32))
    assert _readers() == []


@pytest.mark.parametrize("batch", [1, 3])
def test_read_ahead_gives_the_same_volume(net3d, on_cpu, batch):
    vol = _volume((20, 40, 36))
    vol[3, 5, 7] = np.nan  # replaced on the thread as in line
    on_cpu.clear()
    got = drain(iter_denoise(vol, net3d, tile=16, overlap=8, batch_size=batch, **FP32))
    assert on_cpu and all(on_cpu)  # every batch came from the thread
    with _inline():
        expected = drain(iter_denoise(vol, net3d, tile=16, overlap=8, batch_size=batch, **FP32))
    np.testing.assert_array_equal(got, expected)
    assert _readers() == []  # the thread ends with the run


def test_read_ahead_for_a_2d_stack(on_cpu):
    torch.manual_seed(0)
    lm = LoadedModel.from_module(N2NUNet2D(), name="n2n-2d-test", ndim=2)
    stack = _volume((3, 40, 72), seed=1)
    got = drain(iter_denoise(stack, lm, tile=32, overlap=16, batch_size=4, **FP32))
    assert on_cpu and all(on_cpu)
    with _inline():
        expected = drain(iter_denoise(stack, lm, tile=32, overlap=16, batch_size=4, **FP32))
    np.testing.assert_array_equal(got, expected)


def test_out_of_memory_splits_drop_what_was_read_ahead(on_cpu, fussy_net):
    torch.manual_seed(0)
    net = UpsampleUnet48(ch=4, final_activation="identity").eval()
    vol = _volume((16, 48, 40), seed=2)
    opts = dict(tile=(16, 16, 16), overlap=24, **FP32)
    expected = engine.denoise(vol, net, batch_size=1, **opts)
    fussy = fussy_net(net, limit=64**3)  # one tile fits, a batch of 4 does not
    on_cpu.clear()
    out = engine.denoise(vol, LoadedModel.from_module(fussy), batch_size=4, **opts)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4 * vol.std())
    assert True in on_cpu and False in on_cpu  # the first batch from the thread, the split tiles in line
    assert _readers() == []


def test_a_read_error_on_the_thread_reaches_the_caller(net3d, on_cpu, monkeypatch):
    real = engine.read_tile
    calls = []

    def flaky(view, t):
        calls.append(threading.current_thread().name)
        if len(calls) == 5:
            raise OSError("input went away")
        return real(view, t)

    monkeypatch.setattr(engine, "read_tile", flaky)
    with pytest.raises(OSError, match="went away"):
        drain(iter_denoise(_volume((20, 40, 36)), net3d, tile=16, overlap=8, batch_size=2, **FP32))
    assert any(name.startswith("cryoden-tile-reader") for name in calls)
    assert _readers() == []


def test_a_cancel_stops_the_thread(net3d, on_cpu):
    steps = iter_denoise(_volume((24, 48, 48)), net3d, tile=16, overlap=8, batch_size=1, **FP32)
    next(steps)
    next(steps)  # one batch done, the next being read
    steps.close()
    assert _readers() == []


def test_read_ahead_from_a_memory_mapped_file(net3d, on_cpu, tmp_path):
    import mrcfile

    src = tmp_path / "tomo.mrc"
    with mrcfile.new(src) as mrc:
        mrc.set_data(_volume((20, 40, 40), seed=4))
        mrc.voxel_size = 10.0
    denoise_file(src, tmp_path / "ahead.mrc", net3d, tile=16, overlap=8, batch_size=2, mmap_threshold=0,
                 resample="off", **FP32)
    assert on_cpu and all(on_cpu)
    with _inline():
        denoise_file(src, tmp_path / "inline.mrc", net3d, tile=16, overlap=8, batch_size=2, mmap_threshold=0,
                     resample="off", **FP32)
    with mrcfile.open(tmp_path / "ahead.mrc") as a, mrcfile.open(tmp_path / "inline.mrc") as b:
        np.testing.assert_array_equal(a.data, b.data)


def test_prefetcher_hands_over_only_what_it_read():
    reads = []

    def load(tiles):
        reads.append(tuple(tiles))
        return np.full((len(tiles), 1, 2, 2, 2), len(reads), np.float32)

    ahead = prefetch.Prefetcher(load, torch.device("cpu"))
    try:
        assert ahead.take(["a"]) is None  # nothing read ahead
        ahead.ahead(["a"])
        ahead.ahead(["a"])  # already under way: not read twice
        ahead.ahead(["b"])
        assert ahead.take(["b"]) is not None  # "a" is dropped on the way
        assert ahead.take(["a"]) is None
        assert reads.count(("a",)) <= 1
        ahead.ahead([])  # nothing to read
    finally:
        ahead.close()
    assert _readers() == []


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")


@cuda
def test_cuda_read_ahead_matches(net3d):
    vol = _volume((40, 72, 64))
    kw = dict(tile=32, overlap=8, batch_size=2, device="cuda", precision="fp32", resident=False)
    ahead = drain(iter_denoise(vol, net3d, **kw))
    with _inline():
        inline = drain(iter_denoise(vol, net3d, **kw))
    np.testing.assert_array_equal(ahead, inline)
