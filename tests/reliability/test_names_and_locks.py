"""Long output names, and the temporary files of live writers in other PID namespaces.

A 234-character output name failed only after the denoising, because the temporary name
(``.<name>.<host>-<pid>.<random>.part.mrc``) passed 255 bytes; a name over the limit is now
refused before any work, and a long one gets a shortened temporary name. A second writer in
another PID namespace (where the first one's pid does not exist) deleted the first one's live
temporary file: it is now removed only when no lock is held on it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import mrcfile
import numpy as np

from napari_cryoden import inference
from napari_cryoden.cli import main
from napari_cryoden.io import atomic_path, read_mrc
from napari_cryoden.io.atomic import _host, _name_in_part, remove_stale_parts

FAST = ["--model", "tiny-test", "--tile", "32", "--overlap", "4", "--device", "cpu", "--precision", "fp32", "-q"]
DEAD_PID = 2**22 + 12345  # above the kernel's pid_max: never a live process


def _input(folder: Path) -> Path:
    path = folder / "tomo.mrc"
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=(8, 24, 24)).astype(np.float32))
    return path


def test_long_output_name_is_written(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / ("x" * 230 + ".mrc")  # 234 characters
    assert main(["denoise", str(_input(tmp_path)), str(out), *FAST]) == 0, capsys.readouterr().err
    assert read_mrc(out).data.shape == (8, 24, 24)
    assert [n for n in os.listdir(tmp_path) if ".part" in n] == []


def test_output_name_over_the_limit_is_refused_before_denoising(tmp_path, tiny_model_dir, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("denoising started")

    monkeypatch.setattr(inference, "iter_denoise_file", never)
    out = tmp_path / ("y" * 252 + ".mrc")  # 256 bytes
    assert main(["denoise", str(_input(tmp_path)), str(out), *FAST]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is 256 bytes long, more than the 255 bytes" in lines[0]


def _stale_part(target: Path, pid: int) -> Path:
    part = target.parent / f".{_name_in_part(target)}.{_host()}-{pid}.abcd1234.part.mrc"
    part.write_bytes(b"partial")
    return part


def test_a_locked_part_of_an_unknown_pid_is_kept(tmp_path):
    """The writer's pid is not visible here (another PID namespace), but it holds its lock."""
    target = tmp_path / "out.mrc"
    part = _stale_part(target, DEAD_PID)
    fd = os.open(part, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert remove_stale_parts(target) == []
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
        assert part.exists() and target.read_bytes() == b"new"
    finally:
        os.close(fd)  # the writer ends without cleaning up
    assert remove_stale_parts(target) == [part]
    assert not part.exists()


def test_stale_parts_of_long_names_are_found(tmp_path):
    target = tmp_path / ("z" * 240 + ".mrc")
    part = _stale_part(target, DEAD_PID)
    assert len(part.name.encode()) <= 255
    with atomic_path(target) as tmp:
        assert len(tmp.name.encode()) <= 255
        tmp.write_bytes(b"data")
    assert not part.exists() and target.read_bytes() == b"data"


def test_the_writer_holds_a_lock_on_its_temporary_file(tmp_path):
    with atomic_path(tmp_path / "out.mrc") as tmp:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = False
            except BlockingIOError:
                locked = True
        finally:
            os.close(fd)
        assert locked


def test_saved_models_are_written_into_the_locked_file(tmp_path, monkeypatch):
    """The weights and the card are written into the temporary file the writer holds locked (not
    a file put in its place), so the lock protects them until the rename."""
    import napari_cryoden.io.atomic as atomic
    from napari_cryoden.models import UpsampleUnet48, save_model

    real_replace, checked = atomic.os.replace, []

    def replace(src, dst):
        fd = os.open(src, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                checked.append((Path(dst).name, False))
            except BlockingIOError:
                checked.append((Path(dst).name, True))
        finally:
            os.close(fd)
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    save_model(UpsampleUnet48(ch=4), tmp_path, "m", {"architecture": "UpsampleUnet48", "arch_kwargs": {"ch": 4}})
    assert checked == [("m.safetensors", True), ("m.json", True)]
