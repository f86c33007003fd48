"""No data loss: inputs are never modified, outputs appear whole or not at all.

Every operation is followed by a sha256 check of the input. Outputs are written to a temporary
file in the same folder and renamed (the inode changes; a failure at any step leaves the old
file as it was). ``cryoden denoise`` never writes over its input, whatever the spelling of the
path, and replaces an existing output only with ``--overwrite``. No napari import here except
through the reader contribution, which does not import Qt.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cryoden.cli import main
from napari_cryoden.io import MrcError, atomic_path, read_mrc, write_mrc

#: Hypothesis examples per property.
OPERATION_EXAMPLES = 30
SPELLING_EXAMPLES = 40
CANCEL_EXAMPLES = 30
FAST = ["--model", "tiny-test", "--tile", "32", "--overlap", "4", "--device", "cpu", "--precision", "fp32"]
SHAPE = (8, 24, 24)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_input(folder: Path, name: str = "tomo.mrc", seed: int = 0) -> Path:
    data = np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)
    path = folder / name
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (10.0, 10.0, 12.0)
    return path


def run_cli(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


OPERATIONS = ["read", "napari-reader", "denoise", "denoise-onto-input", "denoise-onto-input-overwrite",
              "write-protected", "metrics", "denoise-again-overwrite"]


@settings(max_examples=OPERATION_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.sampled_from(OPERATIONS), min_size=1, max_size=4))
def test_input_bytes_unchanged_after_every_operation(ops, tiny_model_dir, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        src = make_input(folder)
        digest = sha256(src)
        out = folder / "out.mrc"
        for op in ops:
            if op == "read":
                read_mrc(src)
            elif op == "napari-reader":
                from napari_cryoden._reader import read_mrc_layers

                read_mrc_layers(str(src))
            elif op == "denoise":
                rc, err = run_cli(capsys, "denoise", src, out, *FAST, "--quiet")
                assert rc in (0, 2), err  # 2: out exists from an earlier step
            elif op == "denoise-onto-input":
                assert run_cli(capsys, "denoise", src, src, *FAST)[0] == 2
            elif op == "denoise-onto-input-overwrite":
                assert run_cli(capsys, "denoise", src, src, *FAST, "--overwrite")[0] == 2
            elif op == "write-protected":
                with pytest.raises(MrcError, match="over the input"):
                    write_mrc(src, np.zeros((2, 3, 4), np.float32), overwrite=True, protect=(src,))
            elif op == "metrics":
                assert run_cli(capsys, "metrics", src, src, "--json")[0] == 0
            elif op == "denoise-again-overwrite":
                rc, err = run_cli(capsys, "denoise", src, out, *FAST, "--quiet", "--overwrite")
                assert rc == 0, err
            assert sha256(src) == digest, f"input changed by {op!r}"
            assert not [n for n in os.listdir(folder) if n.endswith(".part") or ".part." in n]


# ------------------------------------------------------------------------------ output == input
@st.composite
def spellings(draw):
    """How the output argument can name the input: (kind, relative spelling parts)."""
    kind = draw(st.sampled_from(["path", "symlink", "hardlink", "symlink-to-folder"]))
    prefix = draw(st.lists(st.sampled_from(["./", "sub/../", "./sub/../", "../work/"]), max_size=3))
    return kind, "".join(prefix)


@settings(max_examples=SPELLING_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=spellings(), overwrite=st.booleans())
def test_output_never_written_over_input(case, overwrite, capsys, monkeypatch):
    kind, prefix = case
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        (work / "sub").mkdir(parents=True)
        src = make_input(work)
        digest = sha256(src)
        monkeypatch.chdir(work)
        if kind == "path":
            target = f"{prefix}tomo.mrc"
        elif kind == "symlink":
            (work / "link.mrc").symlink_to(src)
            target = f"{prefix}link.mrc"
        elif kind == "hardlink":
            os.link(src, work / "hard.mrc")
            target = f"{prefix}hard.mrc"
        else:
            (work / "alias").symlink_to(work, target_is_directory=True)
            target = f"{prefix}alias/tomo.mrc"
        before = sorted(os.listdir(work))
        # No model is loaded: the output check comes first, so no tiny model is needed.
        rc, err = run_cli(capsys, "denoise", "tomo.mrc", target, *(["--overwrite"] if overwrite else []))
        assert rc == 2, err
        assert err.startswith("cryoden: error: OUTPUT") and "input file" in err and err.count("\n") == 1
        assert sha256(src) == digest
        assert sorted(os.listdir(work)) == before


def test_existing_output_needs_overwrite_and_is_replaced_by_rename(tmp_path, tiny_model_dir, capsys):
    src = make_input(tmp_path)
    out = tmp_path / "out.mrc"
    out.write_bytes(b"precious earlier result")
    rc, err = run_cli(capsys, "denoise", src, out, *FAST)
    assert rc == 2 and "--overwrite" in err
    assert out.read_bytes() == b"precious earlier result"

    inode = out.stat().st_ino
    rc, err = run_cli(capsys, "denoise", src, out, *FAST, "--overwrite", "--quiet")
    assert rc == 0, err
    assert out.stat().st_ino != inode  # a new file was renamed into place, not written in place
    assert read_mrc(out).data.shape == SHAPE


@pytest.mark.parametrize("step", ["new", "set_data", "label", "stats", "rename"])
@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["disk-full", "ctrl-c"])
def test_failure_at_any_write_step_leaves_old_output(step, error, tmp_path, tiny_model_dir, capsys, monkeypatch):
    """A failure at each step of writing: exit 1 or 130, the old output as it was, no temporary."""
    import napari_cryoden.io.atomic as atomic

    src = make_input(tmp_path)
    out = tmp_path / "out.mrc"
    out.write_bytes(b"earlier result")
    digest = sha256(src)
    before = sorted(os.listdir(tmp_path))

    def fail(*args, **kwargs):
        raise error

    if step == "new":
        monkeypatch.setattr(mrcfile, "new", fail)
    elif step == "rename":
        monkeypatch.setattr(atomic.os, "replace", fail)
    else:
        from mrcfile.mrcobject import MrcObject

        attr = {"set_data": "set_data", "label": "add_label", "stats": "update_header_stats"}[step]
        monkeypatch.setattr(MrcObject, attr, fail)
    rc, err = run_cli(capsys, "denoise", src, out, *FAST, "--overwrite", "--quiet")
    assert rc == (130 if isinstance(error, KeyboardInterrupt) else 1), err
    assert err.count("\n") == 1 and err.startswith("cryoden: error: ") and "Traceback" not in err
    assert out.read_bytes() == b"earlier result"
    assert sha256(src) == digest
    assert sorted(os.listdir(tmp_path)) == before


@settings(max_examples=CANCEL_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop_after=st.integers(0, 40))
def test_ctrl_c_at_any_tile_leaves_nothing(stop_after, tiny_model_dir, capsys, monkeypatch):
    import napari_cryoden.inference as inference

    real = inference.iter_denoise

    def interrupted(volume, model, **kwargs):
        for i, step in enumerate(real(volume, model, **kwargs)):
            if i > stop_after:
                raise KeyboardInterrupt
            yield step
        raise KeyboardInterrupt  # after the last tile, before the result is returned

    monkeypatch.setattr(inference, "iter_denoise", interrupted)
    with tempfile.TemporaryDirectory() as tmp:
        src = make_input(Path(tmp))
        digest, before = sha256(src), sorted(os.listdir(tmp))
        rc, err = run_cli(capsys, "denoise", src, Path(tmp) / "out.mrc", *FAST, "--tile", "8", "--quiet")
        assert rc == 130, err
        assert sorted(os.listdir(tmp)) == before and sha256(src) == digest


def test_atomic_path_keeps_target_on_error(tmp_path):
    target = tmp_path / "result.mrc"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["result.mrc"]


def test_stale_parts_of_dead_writers_are_removed(tmp_path):
    import subprocess
    import sys

    from napari_cryoden.io.atomic import _host, remove_stale_parts

    target = tmp_path / "out.mrc"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    stale = tmp_path / f".out.mrc.{_host()}-{dead_pid}.abc123.part.mrc"
    live = tmp_path / f".out.mrc.{_host()}-{os.getppid()}.abc123.part.mrc"  # a live process
    other_host = tmp_path / f".out.mrc.elsewhere-{dead_pid}.abc123.part.mrc"
    other_target = tmp_path / f".other.mrc.{_host()}-{dead_pid}.abc123.part.mrc"
    for p in (stale, live, other_host, other_target):
        p.write_bytes(b"partial")
    assert remove_stale_parts(target) == [stale]
    assert not stale.exists() and live.exists() and other_host.exists() and other_target.exists()


def test_atomic_path_without_overwrite_never_clobbers(tmp_path):
    target = tmp_path / "out.mrc"
    with pytest.raises(FileExistsError, match="appeared while writing"):
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_bytes(b"new")
            target.write_bytes(b"someone else's")  # appears during the write
    assert target.read_bytes() == b"someone else's"
    assert [n for n in os.listdir(tmp_path) if ".part" in n] == []


def test_result_gets_normal_permissions_even_if_the_writer_replaced_the_temporary(tmp_path):
    target = tmp_path / "weights.safetensors"
    with atomic_path(target) as tmp:
        tmp.unlink()  # as a writer that writes its own temporary file (0600) and renames it
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask
