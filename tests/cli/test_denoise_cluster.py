"""``cryoden denoise --scheduler``: files, or one tomogram's tiles, on a dask.distributed cluster.

The cluster is started once for the module, in this process (2 worker threads), and handed to
the command in place of the one ``--scheduler local`` would start; starting worker processes is
tested in tests/inference/test_cluster.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from napari_cryoden.cli import main  # noqa: E402

FAST = ["--model", "tiny-test", "--tile", "16", "--overlap", "8", "--batch", "2", "--device", "cpu",
        "--precision", "fp32"]


@pytest.fixture(scope="module")
def shared_client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") \
            as cluster, distributed.Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture
def connections(shared_client, monkeypatch):
    """The ``(scheduler, n_workers)`` the command asked for; it gets the module's cluster."""
    from napari_cryoden.inference import cluster

    calls = []

    @contextlib.contextmanager
    def connect(scheduler="local", n_workers=None, **kwargs):
        calls.append((scheduler, n_workers))
        yield shared_client

    monkeypatch.setattr(cluster, "connect", connect)
    return calls


def _write(path: Path, shape=(8, 24, 40), seed=0) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.random.default_rng(seed).normal(size=shape).astype(np.float32))
        mrc.voxel_size = 10.0
    return path


def test_files_on_the_cluster_equal_the_local_batch_and_existing_outputs_are_skipped(
        tmp_path, tiny_model_dir, connections, capsys):
    a, b, c = (_write(tmp_path / f"{n}.mrc", seed=i) for i, n in enumerate("abc"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_denoised.mrc").write_bytes(b"earlier result")
    rc = main(["denoise", str(a), str(b), str(c), "--output-dir", str(out), "--scheduler", "local", "--workers", "2",
               *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert connections == [("local", 2)]
    assert (out / "a_denoised.mrc").read_bytes() == b"earlier result"
    assert f"cryoden: note: skipping {a}: " in captured.err and "--overwrite" in captured.err
    assert captured.out.count("cryoden: wrote ") == 2 and "(cpu, fp32), 6 tiles" in captured.out
    assert captured.out.rstrip().endswith("cryoden: denoised 2 of 3, skipped 1 (output exists)")

    local = tmp_path / "local"
    assert main(["denoise", str(b), str(c), "--output-dir", str(local), *FAST, "-q"]) == 0
    for name in ("b_denoised.mrc", "c_denoised.mrc"):
        assert np.array_equal(mrcfile.read(out / name), mrcfile.read(local / name))
    assert sorted(os.listdir(out)) == ["a_denoised.mrc", "b_denoised.mrc", "c_denoised.mrc"]

    rc = main(["denoise", str(a), "-o", str(out), "--scheduler", "--overwrite", *FAST, "-q"])
    assert rc == 0 and connections[-1] == ("local", None)
    assert mrcfile.read(out / "a_denoised.mrc").shape == (8, 24, 40)


def test_a_bad_file_on_the_cluster_does_not_stop_the_others(tmp_path, tiny_model_dir, connections, capsys):
    good1, good2 = _write(tmp_path / "a.mrc"), _write(tmp_path / "c.mrc", seed=2)
    bad = tmp_path / "b.mrc"
    bad.write_text("not a tomogram\n" * 100)
    out = tmp_path / "out"
    rc = main(["denoise", str(good1), str(bad), str(good2), "-o", str(out), "--scheduler", "local", *FAST, "-q"])
    assert rc == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2, errors
    assert errors[0] == f"cryoden: error: {bad}: not an MRC file (no valid MRC header)"
    assert errors[1] == "cryoden: denoised 2 of 3, 1 failed"
    assert sorted(os.listdir(out)) == ["a_denoised.mrc", "c_denoised.mrc"]


def test_one_tomogram_split_into_tiles_equals_one_process(tmp_path, tiny_model_dir, connections, capsys):
    src = _write(tmp_path / "tomo.mrc", shape=(12, 40, 44))
    assert main(["denoise", str(src), str(tmp_path / "single.mrc"), *FAST, "-q"]) == 0
    rc = main(["denoise", str(src), str(tmp_path / "split.mrc"), "--scheduler", "tcp://head:8786", *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert connections == [("tcp://head:8786", None)]
    assert f"cryoden: wrote {tmp_path / 'split.mrc'}: shape (12, 40, 44)" in captured.out
    assert "(cpu, fp32), 9 tiles" in captured.out
    assert np.array_equal(mrcfile.read(tmp_path / "single.mrc"), mrcfile.read(tmp_path / "split.mrc"))
    assert sorted(os.listdir(tmp_path)) == ["single.mrc", "split.mrc", "tomo.mrc", "user_models"]


def test_interrupt_on_the_cluster_exits_130(tmp_path, tiny_model_dir, connections, capsys, monkeypatch):
    from napari_cryoden.inference import cluster

    def interrupted(*args, **kwargs):
        yield 0, 18
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster, "iter_split_denoise_file", interrupted)
    src = _write(tmp_path / "tomo.mrc")
    assert main(["denoise", str(src), str(tmp_path / "out.mrc"), "--scheduler", *FAST, "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "out.mrc").exists()


@pytest.mark.parametrize("options, message", [
    (["--workers", "2"], "--workers sizes the local cluster of --scheduler local; add --scheduler"),
    (["--scheduler", "tcp://head:8786", "--workers", "2"], "--workers is for --scheduler local"),
    (["--scheduler", "head"], "scheduler must be 'local' or an address like tcp://host:8786, got 'head'"),
])
def test_bad_cluster_options_are_one_line(options, message, tmp_path, capsys):
    src = _write(tmp_path / "a.mrc")
    assert main(["denoise", str(src), str(tmp_path / "out.mrc"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cryoden: error: {message}") and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["a.mrc"]


def test_missing_distributed_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    src = _write(tmp_path / "a.mrc")
    assert main(["denoise", str(src), "-o", str(tmp_path / "out"), "--scheduler", "local"]) == 2
    err = capsys.readouterr().err
    assert err == ('cryoden: error: --scheduler: cluster runs need dask.distributed, which is not installed: '
                   'pip install "napari-cryoden[cluster]"\n')


def test_resampled_inputs_on_the_cluster_equal_one_process(tmp_path, tiny_model_dir, connections, capsys):
    """A 5 Å tomogram for the 10 Å tiny-test: binned x2 and padded back, on the cluster as here
    (split path: the whole file on one worker; batch path: one task per file)."""
    src = _write(tmp_path / "tomo.mrc", shape=(12, 40, 44))
    with mrcfile.open(src, mode="r+") as mrc:
        mrc.voxel_size = 5.0
    assert main(["denoise", str(src), str(tmp_path / "single.mrc"), *FAST, "-q"]) == 0
    rc = main(["denoise", str(src), str(tmp_path / "split.mrc"), "--scheduler", "tcp://head:8786", *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "input 5 Å → model 10 Å, binned ×2" in captured.err
    assert np.array_equal(mrcfile.read(tmp_path / "single.mrc"), mrcfile.read(tmp_path / "split.mrc"))
    out = tmp_path / "out"
    assert main(["denoise", str(src), "-o", str(out), "--scheduler", "local", *FAST]) == 0
    assert "binned ×2" in capsys.readouterr().err
    assert np.array_equal(mrcfile.read(tmp_path / "single.mrc"), mrcfile.read(out / "tomo_denoised.mrc"))
    with mrcfile.open(tmp_path / "split.mrc") as mrc:
        assert mrc.data.shape == (12, 40, 44) and mrc.voxel_size.x == pytest.approx(5.0)
