"""``cryoden denoise`` with 2D models (micrographs, .mrcs stacks) and the streaming path."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.cli import main

CPU = ["--device", "cpu", "--precision", "fp32"]


def _write(path: Path, data: np.ndarray, voxel=10.0) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.voxel_size = voxel
    return path


def _read(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=False) as mrc:
        return np.array(mrc.data)


def test_stack_goes_to_a_2d_model_slice_by_slice(tmp_path, tiny_2d_model, rng, capsys):
    from napari_cryoden.inference import denoise

    stack = rng.normal(size=(3, 40, 36)).astype(np.float32)
    src = _write(tmp_path / "particles.mrcs", stack)
    assert main(["denoise", str(src), str(tmp_path / "out.mrcs"), "--model", tiny_2d_model, *CPU]) == 0
    captured = capsys.readouterr()
    assert "slice by slice" not in captured.err  # a stack is what 2D models are for: no note
    assert "(3, 40, 36)" in captured.out and "tiny-2d" in captured.out
    np.testing.assert_allclose(_read(tmp_path / "out.mrcs"),
                               denoise(stack, tiny_2d_model, device="cpu", precision="fp32"), atol=1e-5)


def test_micrograph_goes_to_a_2d_model(tmp_path, tiny_2d_model, rng, capsys):
    src = _write(tmp_path / "mic.mrc", rng.normal(size=(50, 44)))
    assert main(["denoise", str(src), str(tmp_path / "out.mrc"), "--model", tiny_2d_model, *CPU, "-q"]) == 0
    assert _read(tmp_path / "out.mrc").shape == (50, 44)


def test_tomogram_with_a_2d_model_gets_a_note(tmp_path, tiny_2d_model, rng, capsys):
    src = _write(tmp_path / "tomo.mrc", rng.normal(size=(4, 32, 32)))
    assert main(["denoise", str(src), str(tmp_path / "out.mrc"), "--model", tiny_2d_model, *CPU]) == 0
    err = capsys.readouterr().err
    assert "cryoden: note: model 'tiny-2d' is a 2D model: tomo.mrc is denoised slice by slice along Z" in err


@pytest.mark.parametrize("name, shape, expected", [
    ("particles.mrcs", (3, 24, 24), "is a stack of 2D images (.mrcs)"),
    ("mic.mrc", (24, 24), "is a 2D image"),
])
def test_3d_model_refuses_2d_data(name, shape, expected, tmp_path, tiny_2d_model, rng, capsys):
    src = _write(tmp_path / name, rng.normal(size=shape))
    before = set(os.listdir(tmp_path))
    assert main(["denoise", str(src), str(tmp_path / "out.mrc"), "--model", "tiny-test", *CPU]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cryoden: error: model 'tiny-test' is a 3D tomogram model") and expected in err
    assert "tiny-2d" in err  # names the 2D models there are
    assert len(err.splitlines()) == 1 and set(os.listdir(tmp_path)) == before


def test_large_files_are_streamed(tmp_path, tiny_model_dir, rng, capsys, monkeypatch):
    """With the streaming threshold at 0, the CLI writes through a memory-mapped output: same file."""
    from napari_cryoden.inference import stream

    work = tmp_path / "work"
    work.mkdir()
    src = _write(work / "tomo.mrc", rng.normal(size=(10, 30, 30)))
    fast = ["--model", "tiny-test", "--tile", "16", "--overlap", "8", *CPU, "-q"]
    assert main(["denoise", str(src), str(work / "memory.mrc"), *fast]) == 0
    monkeypatch.setitem(stream.iter_denoise_file.__kwdefaults__, "mmap_threshold", 0)
    seen = {}
    real = stream.iter_denoise_file

    def spy(*args, **kwargs):
        result = yield from real(*args, **kwargs)
        seen["streamed"] = result.streamed
        return result

    monkeypatch.setattr(stream, "iter_denoise_file", spy)
    import napari_cryoden.inference as inference

    monkeypatch.setattr(inference, "iter_denoise_file", spy)
    assert main(["denoise", str(src), str(work / "streamed.mrc"), *fast]) == 0
    assert seen == {"streamed": True}
    np.testing.assert_array_equal(_read(work / "streamed.mrc"), _read(work / "memory.mrc"))
    assert sorted(os.listdir(work)) == ["memory.mrc", "streamed.mrc", "tomo.mrc"]
