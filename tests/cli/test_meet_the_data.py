"""``cryoden denoise`` meets the data where it is (issue 21): resampling to the model's pixel size,
unknown pixel sizes, the model chosen by dimensionality, MRC headers kept, old-style files."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from conftest import corr, shared_file

from napari_cryoden.cli import main
from napari_cryoden.inference.resample import fourier_resample
from napari_cryoden.inference.stream import denoise_file

CPU = ["--device", "cpu", "--precision", "fp32"]


def _write(path: Path, data: np.ndarray, voxel=10.0, **header) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(data, dtype=np.float32))
        mrc.voxel_size = voxel
        for key, value in header.items():
            setattr(mrc.header, key, value)
    return path


def _fei1_micrograph(path: Path, rng, voxel: float) -> tuple[Path, bytes]:
    """A micrograph with an FEI1 extended header (one record), labels, origin and start indices."""
    ext = np.zeros(1, dtype=mrcfile.dtypes.get_ext_header_dtype(b"FEI1"))
    ext["Metadata size"] = ext.dtype.itemsize
    ext["Pixel size X"] = ext["Pixel size Y"] = voxel * 1e-10
    ext["HT"] = 300000.0
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_extended_header(ext)
        mrc.header.exttyp = b"FEI1"
        mrc.set_data(rng.normal(size=(96, 80)).astype(np.float32))
        mrc.voxel_size = voxel
        mrc.header.origin = (12.5, -3.0, 7.0)
        mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = 4, 8, 0
        mrc.add_label("EPU micrograph")
        mrc.add_label("second label")
    with mrcfile.open(path) as mrc:
        return path, mrc.extended_header.tobytes()


def _header(path: Path):
    with mrcfile.open(path, permissive=False) as mrc:
        h = mrc.header
        return dict(
            voxel=mrc.voxel_size.x, origin=tuple(float(v) for v in h.origin.tolist()),
            nstart=(int(h.nxstart), int(h.nystart), int(h.nzstart)), exttyp=bytes(h.exttyp),
            ext=mrc.extended_header.tobytes(),
            labels=[bytes(lab).decode().strip() for lab in h.label[: int(h.nlabl)]],
            shape=mrc.data.shape, dtype=mrc.data.dtype,
        )


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "memory-mapped"])
def test_fei1_micrograph_keeps_its_header_byte_for_byte(tmp_path, tiny_2d_model, rng, streamed):
    src, ext = _fei1_micrograph(tmp_path / "mic.mrc", rng, 5.0)
    before = src.read_bytes()
    dst = tmp_path / "out.mrc"
    result = denoise_file(src, dst, tiny_2d_model, device="cpu", precision="fp32", mmap_threshold=0 if streamed else 2**30)
    assert result.streamed is streamed
    h = _header(dst)
    assert h["ext"] == ext and h["exttyp"] == b"FEI1"
    assert h["origin"] == (12.5, -3.0, 7.0) and h["nstart"] == (4, 8, 0)
    assert h["labels"] == _header(src)["labels"] + ["cryoden tiny-2d"]
    assert h["labels"][-3:-1] == ["EPU micrograph", "second label"]
    assert h["voxel"] == pytest.approx(5.0) and h["shape"] == (96, 80)
    assert src.read_bytes() == before  # the input is never touched


def test_micrograph_at_a_finer_pixel_size_is_binned_and_padded_back(tmp_path, tiny_2d_model, rng, capsys):
    # tiny-2d is a 10 Å model; 2.5 Å input: binned x4 to 24 x 20, padded back to 96 x 80.
    src, ext = _fei1_micrograph(tmp_path / "mic.mrc", rng, 2.5)
    assert main(["denoise", str(src), str(tmp_path / "auto.mrc"), "--model", tiny_2d_model, *CPU]) == 0
    err = capsys.readouterr().err
    assert err.count("cryoden: note:") == 1
    assert "input 2.5 Å → model 10 Å, binned ×4 for model 'tiny-2d' (24 x 20 on the model's grid)" in err
    auto = _header(tmp_path / "auto.mrc")
    assert auto["shape"] == (96, 80) and auto["voxel"] == pytest.approx(2.5) and auto["ext"] == ext
    assert main(["denoise", str(src), str(tmp_path / "binned.mrc"), "--model", tiny_2d_model, *CPU,
                 "--resample", "binned", "-q"]) == 0
    binned = _header(tmp_path / "binned.mrc")
    assert binned["shape"] == (24, 20) and binned["voxel"] == pytest.approx(10.0)
    assert binned["origin"] == (12.5, -3.0, 7.0) and binned["nstart"] == (1, 2, 0)  # start indices on the new grid
    with mrcfile.open(tmp_path / "auto.mrc") as a, mrcfile.open(tmp_path / "binned.mrc") as b:
        assert corr(fourier_resample(a.data, (24, 20)), b.data) >= 0.95
    assert main(["denoise", str(src), str(tmp_path / "off.mrc"), "--model", tiny_2d_model, *CPU,
                 "--resample", "off"]) == 0
    assert "resampling is off, so results may be poor" in capsys.readouterr().err


def test_unknown_pixel_size_is_noted_and_kept(tmp_path, tiny_2d_model, rng, capsys):
    src = _write(tmp_path / "particles.mrcs", rng.normal(size=(3, 40, 40)), voxel=0.0)
    assert main(["denoise", str(src), str(tmp_path / "out.mrcs"), "--model", tiny_2d_model, *CPU]) == 0
    captured = capsys.readouterr()
    (note,) = [line for line in captured.err.splitlines() if "note:" in line]
    assert "no usable pixel size" in note and "--voxel-size" in note
    assert "voxel size unknown" in captured.out
    assert _header(tmp_path / "out.mrcs")["voxel"] == 0.0  # never an invented 1 Å
    assert main(["denoise", str(src), str(tmp_path / "set.mrcs"), "--model", tiny_2d_model, *CPU,
                 "--voxel-size", "5"]) == 0
    assert "input 5 Å → model 10 Å, binned ×2" in capsys.readouterr().err  # the override is used...
    set_ = _header(tmp_path / "set.mrcs")
    assert set_["voxel"] == pytest.approx(5.0) and set_["shape"] == (3, 40, 40)  # ...and written


@pytest.mark.parametrize("bad", ["0", "-2", "nan", "x"])
def test_bad_voxel_size_is_one_line(tmp_path, bad, rng, capsys):
    src = _write(tmp_path / "m.mrc", rng.normal(size=(8, 8)))
    assert main(["denoise", str(src), str(tmp_path / "o.mrc"), "--voxel-size", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--voxel-size" in err and not (tmp_path / "o.mrc").exists()


def test_model_auto_picks_by_dimensionality(tmp_path, monkeypatch, rng, capsys):
    from napari_cryoden import models

    asked = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda name: asked.append(name) or real(name))
    mic = _write(tmp_path / "mic.mrc", rng.normal(size=(48, 48)), voxel=5.0)
    stack = _write(tmp_path / "p.mrcs", rng.normal(size=(2, 32, 32)), voxel=5.0)
    tomo = _write(tmp_path / "t.mrc", rng.normal(size=(16, 32, 32)), voxel=10.0)
    for src in (mic, stack, tomo):
        assert main(["denoise", str(src), str(tmp_path / f"o_{src.name}"), *CPU, "-q"]) == 0, \
            capsys.readouterr().err
    assert asked == [models.DEFAULT_MODEL_2D, models.DEFAULT_MODEL_2D, models.DEFAULT_MODEL]


def test_explicit_3d_model_on_a_micrograph_stays_an_error_with_advice(tmp_path, rng, capsys):
    src = _write(tmp_path / "mic.mrc", rng.normal(size=(32, 32)), voxel=10.0)
    assert main(["denoise", str(src), str(tmp_path / "o.mrc"), "--model", "upsampleunet48-gan", *CPU]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "choose a 2D micrograph model" in err and "n2n-unet-2d" in err


# ------------------------------------------------------------------------------ real data


def test_epu_micrograph_with_no_options(tmp_path, capsys):
    """The issue's 'Done when': 4096² at 0.667 Å, FEI2 extended header, no options: n2n-unet-2d,
    binned about x7.5, a 4096² float32 output at 0.667 Å with the input's header fields, whose
    Fourier crop to 5 Å correlates >= 0.95 with --resample binned."""
    src = shared_file("real", "epu2.9_example.mrc")
    assert main(["denoise", str(src), str(tmp_path / "auto.mrc"), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "model n2n-unet-2d" in captured.out and "binned ×7.5" in captured.err
    with mrcfile.open(src, header_only=True) as inp:
        ext, origin = inp.extended_header.tobytes(), inp.header.origin.tolist()
    auto = _header(tmp_path / "auto.mrc")
    assert auto["shape"] == (4096, 4096) and auto["dtype"] == np.float32
    assert auto["voxel"] == pytest.approx(0.6666, abs=1e-3)
    assert auto["ext"] == ext and auto["exttyp"] == b"FEI2" and auto["origin"] == tuple(origin)
    assert main(["denoise", str(src), str(tmp_path / "binned.mrc"), "--device", "cpu", "--resample", "binned",
                 "-q"]) == 0
    with mrcfile.open(tmp_path / "auto.mrc") as a, mrcfile.open(tmp_path / "binned.mrc") as b:
        assert b.data.shape == (546, 546) and b.voxel_size.x == pytest.approx(5.0, rel=1e-3)
        assert corr(fourier_resample(a.data, b.data.shape), b.data) >= 0.95


@pytest.mark.parametrize("name", ["betagal_particles_empiar10017.mrcs", "ribosome50S_particles_empiar10076.mrcs"])
def test_particle_stacks_note_their_unknown_pixel_size(tmp_path, name, tiny_2d_model, capsys):
    src = shared_file("real", name)  # the small untrained 2D model keeps this fast; the notes are the point
    assert main(["denoise", str(src), str(tmp_path / "out.mrcs"), "--model", tiny_2d_model, *CPU]) == 0
    err = capsys.readouterr().err
    assert err.count("cryoden: note:") == 1 and "no usable pixel size" in err
    with mrcfile.open(src, header_only=True) as inp:
        kept = float(inp.voxel_size.x)
    assert _header(tmp_path / "out.mrcs")["voxel"] == kept  # 0 stays 0


def test_old_style_subtilt_stack_denoises_with_one_note(tmp_path, tiny_2d_model, capsys):
    src = shared_file("real", "ribosome_subtilts_bin8.mrcs")
    before = src.stat().st_mtime_ns
    assert main(["denoise", str(src), str(tmp_path / "out.mrcs"), "--model", tiny_2d_model, *CPU]) == 0
    err = capsys.readouterr().err
    assert "old-style MRC header" in err and err.count("old-style") == 1
    assert "no usable pixel size (1 Å, a placeholder)" in err  # its header says 1 Å
    with mrcfile.open(tmp_path / "out.mrcs") as out:
        assert out.data.shape == (220, 64, 64) and np.isfinite(out.data).all()
    assert src.stat().st_mtime_ns == before


def test_metrics_on_a_particle_stack_is_the_median_per_image_frc(tmp_path, rng, capsys):
    import json

    from napari_cryoden.metrics import frc_per_slice

    clean = rng.normal(size=(8, 48, 48)).astype(np.float32)
    noisy = (clean + rng.normal(0, 1.0, size=clean.shape)).astype(np.float32)
    ref, img = _write(tmp_path / "clean.mrcs", clean, voxel=2.0), _write(tmp_path / "noisy.mrcs", noisy, voxel=2.0)
    assert main(["metrics", str(img), str(ref), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    curves = frc_per_slice(noisy, clean, voxel_size=(1.0, 2.0, 2.0))
    expected = np.median(np.stack([c.fsc for c in curves]), axis=0)[1:]
    np.testing.assert_allclose([v for _, v in data["fsc"]], expected, atol=1e-6)
    assert main(["metrics", str(img), str(ref)]) == 0
    assert "median FRC 0.5" in capsys.readouterr().out
