"""``cryoden denoise INPUT... --output-dir DIR``: many files, skips, failures that do not stop the rest."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.cli import main

FAST = ["--model", "tiny-test", "--tile", "32", "--overlap", "8", "--device", "cpu", "--precision", "fp32"]


def _write(path: Path, shape=(8, 24, 24), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.random.default_rng(seed).normal(size=shape).astype(np.float32))
        mrc.voxel_size = 10.0
    return path


def _shape(path: Path):
    with mrcfile.open(path) as mrc:
        return mrc.data.shape


def test_many_inputs_and_globs(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        _write(tmp_path / "tomos" / f"t{i}.rec", seed=i)
    _write(tmp_path / "other.mrc", shape=(6, 16, 16))
    rc = main(["denoise", "tomos/*.rec", "other.mrc", "--output-dir", "out", *FAST, "-q"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "out")) == ["other_denoised.mrc", "t0_denoised.mrc", "t1_denoised.mrc",
                                                    "t2_denoised.mrc"]
    assert _shape(tmp_path / "out" / "other_denoised.mrc") == (6, 16, 16)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, tiny_model_dir, capsys):
    a, b = _write(tmp_path / "a.mrc"), _write(tmp_path / "b.mrc", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_denoised.mrc").write_bytes(b"earlier result")
    rc = main(["denoise", str(a), str(b), "-o", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (out / "a_denoised.mrc").read_bytes() == b"earlier result"
    assert f"cryoden: note: skipping {a}: " in captured.err and "--overwrite" in captured.err
    assert _shape(out / "b_denoised.mrc") == (8, 24, 24)
    assert captured.out.count("cryoden: wrote ") == 1
    assert "denoised 1 of 2, skipped 1 (output exists)" in captured.out

    rc = main(["denoise", str(a), str(b), "-o", str(out), *FAST, "--overwrite", "-q"])
    assert rc == 0
    assert _shape(out / "a_denoised.mrc") == (8, 24, 24)


def test_a_bad_file_does_not_stop_the_others(tmp_path, tiny_model_dir, capsys):
    good1, good2 = _write(tmp_path / "a.mrc"), _write(tmp_path / "c.mrc", seed=2)
    bad = tmp_path / "b.mrc"
    bad.write_text("not a tomogram\n" * 100)
    image = tmp_path / "d.mrc"
    with mrcfile.new(image) as mrc:
        mrc.set_data(np.zeros((20, 20), np.float32))  # 2D: refused by the 3D model
    out = tmp_path / "out"
    rc = main(["denoise", str(good1), str(bad), str(good2), str(image), "nothing*.mrc", "-o", str(out), *FAST, "-q"])
    assert rc == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4, errors  # one line per failure, then the summary
    assert errors[0].startswith("cryoden: error: nothing*.mrc: no file matches")
    assert errors[1].startswith("cryoden: error: ") and "b.mrc" in errors[1] and "not an MRC" in errors[1]
    assert errors[2].startswith(f"cryoden: error: {image}: ") and "2D image" in errors[2]
    assert errors[3] == "cryoden: denoised 2 of 5, 3 failed"
    assert sorted(os.listdir(out)) == ["a_denoised.mrc", "c_denoised.mrc"]
    assert "Traceback" not in "\n".join(errors)


def test_a_run_failure_gives_exit_1(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import napari_cryoden.inference as inference

    real = inference.iter_denoise

    def failing_on_b(volume, model, **kwargs):
        if volume.shape == (5, 16, 16):
            raise RuntimeError("device lost")
        return (yield from real(volume, model, **kwargs))

    monkeypatch.setattr(inference, "iter_denoise", failing_on_b)
    a, b = _write(tmp_path / "a.mrc"), _write(tmp_path / "b.mrc", shape=(5, 16, 16))
    rc = main(["denoise", str(a), str(b), "-o", str(tmp_path / "out"), *FAST, "-q"])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"cryoden: error: {b}: device lost" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["a_denoised.mrc"]


def test_same_output_name_twice_is_an_error_for_the_second(tmp_path, tiny_model_dir, capsys):
    a1, a2 = _write(tmp_path / "x" / "t.mrc"), _write(tmp_path / "y" / "t.mrc", seed=1)
    rc = main(["denoise", str(a1), str(a2), "-o", str(tmp_path / "out"), *FAST, "-q"])
    assert rc == 2
    assert "is also the output of" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["t_denoised.mrc"]


def test_interrupt_stops_the_batch(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import napari_cryoden.inference as inference

    def interrupted(volume, model, **kwargs):
        yield 0, 2
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "iter_denoise", interrupted)
    a, b = _write(tmp_path / "a.mrc"), _write(tmp_path / "b.mrc")
    assert main(["denoise", str(a), str(b), "-o", str(tmp_path / "out"), *FAST, "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("paths", [["a.mrc"], ["a.mrc", "b.mrc", "c.mrc"]])
def test_without_output_dir_two_paths_are_needed(paths, tmp_path, capsys):
    assert main(["denoise", *(str(tmp_path / p) for p in paths)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cryoden: error: give INPUT OUTPUT, or inputs with --output-dir DIR")
    assert len(err.strip().splitlines()) == 1


def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["denoise", str(tmp_path / "a.mrc"), "-o", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err
