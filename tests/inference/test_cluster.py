"""Cluster runs (dask.distributed): a LocalCluster of 2 worker processes against one process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

pytest.importorskip("distributed")

from napari_cryoden.inference import denoise, denoise_file  # noqa: E402
from napari_cryoden.inference.cluster import (  # noqa: E402
    _task_groups, connect, map_denoise_files, parse_scheduler, split_denoise_file,
)
from napari_cryoden.io import MrcError  # noqa: E402

SETTINGS = dict(tile=16, overlap=8, batch_size=2, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def client():
    """One LocalCluster of 2 single-threaded worker processes for the whole module."""
    with connect("local", n_workers=2, threads_per_worker=1) as c:
        yield c


@pytest.fixture
def tiny(tiny_model_dir):
    """The untrained 4-channel UpsampleUnet48 'tiny-test', loaded (a real network, stride 8)."""
    from napari_cryoden.models import load_model

    return load_model("tiny-test")


def _write(path: Path, data: np.ndarray, voxel_size=10.0) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_size
    return path


def _volume(seed: int, shape=(16, 40, 44)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _parts(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if ".part" in n]


def test_cluster_has_two_single_threaded_workers(client):
    assert sorted(client.nthreads().values()) == [1, 1]


@pytest.mark.parametrize("mmap_threshold", [None, 0], ids=["in-memory", "streamed"])
def test_tiles_split_over_workers_equal_one_process(client, tiny, tmp_path, mmap_threshold):
    vol = _volume(0)
    vol[3, 5, 7] = np.nan  # replaced by the median on both paths
    src = _write(tmp_path / "tomo.mrc", vol, voxel_size=(8.0, 9.0, 10.0))
    extra = {} if mmap_threshold is None else {"mmap_threshold": mmap_threshold}
    single = denoise_file(src, tmp_path / "single.mrc", tiny, **SETTINGS, **extra)
    seen = []
    split = split_denoise_file(client, src, tmp_path / "split.mrc", tiny, progress=lambda d, t: seen.append((d, t)),
                               **SETTINGS, **extra)
    # 1 x 3 x 3 tiles in batches of 2: 5 tasks of one batch each for 2 workers (4 tasks per thread)
    assert split.tiles == single.tiles == 9
    assert len(_task_groups(9, 2, 2 * 4, 100)) == 5
    assert seen[0] == (0, 9) and seen[-1] == (9, 9) and len(seen) == 6
    assert split.streamed == single.streamed == (mmap_threshold == 0)
    assert split.info["nonfinite"] == 1 and split.info["nonfinite_value"] == single.info["nonfinite_value"]
    for key in ("mode", "tile", "overlap", "batch", "tiles", "device", "precision"):
        assert split.info[key] == single.info[key], key
    a, b = mrcfile.read(tmp_path / "single.mrc"), mrcfile.read(tmp_path / "split.mrc")
    assert b.dtype == np.float32 and np.isfinite(b).all()
    assert np.array_equal(a, b)
    in_memory = denoise(vol, tiny, **SETTINGS)
    assert np.array_equal(in_memory, b)
    with mrcfile.open(tmp_path / "single.mrc") as ma, mrcfile.open(tmp_path / "split.mrc") as mb:
        assert ma.voxel_size == mb.voxel_size
        assert (ma.header.dmin, ma.header.dmax, ma.header.dmean, ma.header.rms) == \
               (mb.header.dmin, mb.header.dmax, mb.header.dmean, mb.header.rms)
    assert _parts(tmp_path) == []


def test_split_refuses_bad_input_and_existing_output(client, identity_model, tmp_path):
    src = _write(tmp_path / "tomo.mrc", _volume(1, (8, 16, 16)))
    (tmp_path / "out.mrc").write_bytes(b"earlier")
    with pytest.raises(FileExistsError, match="exists"):
        split_denoise_file(client, src, tmp_path / "out.mrc", identity_model, **SETTINGS)
    assert (tmp_path / "out.mrc").read_bytes() == b"earlier"
    bad = tmp_path / "bad.mrc"
    bad.write_text("not a tomogram\n" * 50)
    relative = Path(os.path.relpath(bad))
    with pytest.raises(MrcError) as err:
        split_denoise_file(client, relative, tmp_path / "x.mrc", identity_model, **SETTINGS)
    assert str(err.value).startswith(f"{relative}: not an MRC file")  # named as the user wrote it
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="NaN/Inf"):
        vol = _volume(2, (8, 16, 16))
        vol[0, 0, 0] = np.nan
        split_denoise_file(client, _write(tmp_path / "inf.mrc", vol), tmp_path / "y.mrc", identity_model,
                           nonfinite="refuse", **SETTINGS)
    assert sorted(os.listdir(tmp_path)) == ["bad.mrc", "inf.mrc", "out.mrc", "tomo.mrc"]


def test_many_files_equal_one_process_and_a_bad_file_does_not_stop_the_others(client, tiny, tmp_path):
    inputs = [_write(tmp_path / f"t{i}.mrc", _volume(i, (8 + 4 * i, 24, 32))) for i in range(3)]
    bad = tmp_path / "bad.mrc"
    bad.write_text("not a tomogram\n" * 50)
    image = _write(tmp_path / "image.mrc", np.zeros((20, 20), np.float32))  # 2D: refused by a 3D model
    out = tmp_path / "out"
    out.mkdir()
    jobs = [(src, out / f"{src.stem}_d.mrc") for src in [inputs[0], bad, inputs[1], image, inputs[2]]]
    outcomes = {o.input: o for o in map_denoise_files(client, jobs, tiny, **SETTINGS)}
    assert set(outcomes) == {src for src, _ in jobs}
    assert isinstance(outcomes[bad].error, MrcError) and outcomes[bad].result is None
    assert isinstance(outcomes[image].error, ValueError) and "2D image" in str(outcomes[image].error)
    for src in inputs:
        o = outcomes[src]
        assert o.error is None and o.result.output == out / f"{src.stem}_d.mrc"
        single = denoise_file(src, tmp_path / f"{src.stem}_single.mrc", tiny, **SETTINGS)
        assert o.result.tiles == single.tiles and o.result.info["device"] == "cpu"
        assert np.array_equal(mrcfile.read(o.output), mrcfile.read(single.output))
    assert sorted(os.listdir(out)) == ["t0_d.mrc", "t1_d.mrc", "t2_d.mrc"]
    assert _parts(out) == []


def _slow_identity():
    """A module that returns its input after 0.3 s (defined here, so it travels by value)."""
    import torch

    class SlowIdentity(torch.nn.Module):
        stride = 8

        def forward(self, x):
            time.sleep(0.3)
            return x.clone()

    return SlowIdentity()


def test_closing_the_batch_early_stops_running_files_and_leaves_no_temporary_file(client, tmp_path):
    small = _write(tmp_path / "small.mrc", _volume(0, (8, 8, 8)))  # 1 tile
    big = [_write(tmp_path / f"big{i}.mrc", _volume(i, (8, 64, 64))) for i in range(3)]  # 16 tiles each
    out = tmp_path / "out"
    out.mkdir()
    jobs = [(small, out / "small.mrc")] + [(b, out / b.name) for b in big]
    start = time.perf_counter()
    outcomes = map_denoise_files(client, jobs, _slow_identity(), tile=16, overlap=8, batch_size=1, device="cpu",
                                 precision="fp32", mmap_threshold=0)  # streamed: a .part file while running
    first = next(outcomes)
    assert first.input == small and first.error is None
    outcomes.close()
    elapsed = time.perf_counter() - start
    assert elapsed < 16 * 0.3  # a big file takes about 5 s: they were stopped, not finished
    assert sorted(os.listdir(out)) == ["small.mrc"]
    np.testing.assert_allclose(mrcfile.read(out / "small.mrc"), mrcfile.read(small), rtol=1e-5, atol=1e-5)


def test_scheduler_addresses():
    assert parse_scheduler(None) == parse_scheduler("") == parse_scheduler(" local ") == "local"
    assert parse_scheduler("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert parse_scheduler("head-node:8786") == "head-node:8786"
    with pytest.raises(ValueError, match="tcp://host:8786"):
        parse_scheduler("tomo.mrc")
    with pytest.raises(ValueError, match="local cluster only"):
        with connect("tcp://127.0.0.1:1", n_workers=2):
            pass


def test_missing_distributed_is_one_line(monkeypatch):
    import sys

    from napari_cryoden.inference import cluster

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError) as err:
        with cluster.connect("local"):
            pass
    assert str(err.value) == ('cluster runs need dask.distributed, which is not installed: '
                              'pip install "napari-cryoden[cluster]"')


def _visible_gpus() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_local_gpus_one_worker_per_gpu(monkeypatch):
    from napari_cryoden.inference import cluster

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(cluster, "_cuda_device_count", lambda: 0)
    assert cluster.local_gpus("auto", None) is None  # no GPU: CPU workers
    monkeypatch.setattr(cluster, "_cuda_device_count", lambda: 1)
    assert cluster.local_gpus("cuda", None) is None  # one GPU: one process is enough
    monkeypatch.setattr(cluster, "_cuda_device_count", lambda: 3)
    assert cluster.local_gpus("cpu", None) is None
    assert cluster.local_gpus("auto", None) == ["0", "1", "2"]
    assert cluster.local_gpus("cuda", 4) == ["0", "1", "2", "0"]  # dealt round-robin
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7,2")
    assert cluster.local_gpus("auto", None) == ["5", "7", "2"]  # the GPUs this process may use


def test_gpu_cluster_workers_each_see_their_gpu_and_denoise(monkeypatch, tiny, tmp_path):
    """On a machine with several GPUs (faked here: the workers compute on the CPU, ``auto``),
    ``connect(device=...)`` starts one single-threaded worker per GPU, each seeing only its GPU
    through CUDA_VISIBLE_DEVICES, and files denoised there equal one process."""
    from napari_cryoden.inference import cluster

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(cluster, "_cuda_device_count", lambda: 2)
    inputs = [_write(tmp_path / f"g{i}.mrc", _volume(10 + i, (8, 24, 32))) for i in range(2)]
    settings = {**SETTINGS, "device": "auto"}
    with connect("local", device="auto") as c:
        assert sorted(c.nthreads().values()) == [1, 1]
        assert sorted(c.run(_visible_gpus).values()) == ["0", "1"]
        jobs = [(src, tmp_path / f"{src.stem}_d.mrc") for src in inputs]
        outcomes = list(map_denoise_files(c, jobs, tiny, **settings))
    assert all(o.error is None for o in outcomes) and len(outcomes) == 2
    for src, dst in jobs:
        single = denoise_file(src, tmp_path / f"{src.stem}_single.mrc", tiny, **SETTINGS)
        assert np.array_equal(mrcfile.read(dst), mrcfile.read(single.output))
