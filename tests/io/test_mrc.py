import gzip
import os

import mrcfile
import numpy as np
import pytest
from conftest import shared_file

from napari_cryoden.io import MrcError, is_mrc_path, looks_like_mrc, read_mrc, write_mrc

MODES = {  # MRC mode -> dtype, every real mode mrcfile supports
    0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16,
}


@pytest.mark.parametrize("mode, dtype", sorted(MODES.items()))
def test_read_every_mode_keeps_dtype_and_values(tmp_path, rng, mode, dtype):
    data = (rng.normal(size=(4, 9, 11)) * 20 + 50).astype(dtype)
    path = tmp_path / f"m{mode}.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = (1.5, 2.5, 3.5)
    assert int(mrcfile.open(path).header.mode) == mode
    vol = read_mrc(path)
    assert vol.data.dtype == dtype
    np.testing.assert_array_equal(vol.data, data)
    assert vol.voxel_size == pytest.approx((3.5, 2.5, 1.5))


@pytest.mark.parametrize("mode, dtype", sorted(MODES.items()))
def test_write_read_round_trip_float32(tmp_path, rng, mode, dtype):
    data = (rng.normal(size=(3, 8, 10)) * 20).astype(dtype)
    out = write_mrc(tmp_path / "out.mrc", data, (4.0, 2.0, 2.0))
    back = read_mrc(out)
    assert back.data.dtype == np.float32
    np.testing.assert_array_equal(back.data, data.astype(np.float32))
    assert back.voxel_size == pytest.approx((4.0, 2.0, 2.0))


def test_voxel_size_order_is_zyx(mrc_file):
    assert read_mrc(mrc_file).voxel_size == pytest.approx((3.0, 2.0, 2.0))


@pytest.mark.parametrize("suffix", [".mrc.gz", ".mrc.bz2", ".rec", ".map", ".st", ".mrcs"])
def test_extensions_and_compression(tmp_path, aniso_volume, suffix):
    path = write_mrc(tmp_path / f"x{suffix}", aniso_volume, 2.0)
    assert is_mrc_path(path) and looks_like_mrc(path)
    np.testing.assert_array_equal(read_mrc(path).data, aniso_volume)
    if suffix == ".mrc.gz":
        with gzip.open(path) as fh:
            assert fh.read(1024)[208:212] == b"MAP "


def test_large_file_is_memory_mapped(mrc_file, aniso_volume):
    vol = read_mrc(mrc_file, mmap_threshold=1)
    assert isinstance(vol.data, np.memmap) and vol.metadata["memory_mapped"]
    np.testing.assert_array_equal(vol.data, aniso_volume)
    assert not vol.data.flags.writeable


def test_truncated_file_raises_clear_error(tmp_path, mrc_file):
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(mrc_file.read_bytes()[:-500])
    with pytest.raises(MrcError, match="cut.mrc.*(truncated|corrupt)") as exc:
        read_mrc(cut)
    assert "\n" not in str(exc.value)
    with pytest.raises(MrcError, match="cut.mrc"):
        read_mrc(cut, mmap_threshold=1)


def test_not_mrc_and_missing(tmp_path):
    txt = tmp_path / "notes.mrc"
    txt.write_text("hello " * 400)
    assert not looks_like_mrc(txt)
    with pytest.raises(MrcError, match="not an MRC file"):
        read_mrc(txt)
    with pytest.raises(MrcError, match="no such file"):
        read_mrc(tmp_path / "missing.mrc")


def test_write_is_atomic_and_never_overwrites_input(tmp_path, mrc_file, aniso_volume):
    before = mrc_file.read_bytes()
    with pytest.raises(FileExistsError):
        write_mrc(mrc_file, aniso_volume)
    with pytest.raises(MrcError, match="over the input"):
        write_mrc(mrc_file, aniso_volume, overwrite=True, protect=(mrc_file,))
    assert mrc_file.read_bytes() == before
    with pytest.raises(MrcError):
        write_mrc(tmp_path / "bad.mrc", np.zeros((2, 2, 2, 2)))
    assert sorted(os.listdir(tmp_path)) == ["tomo.mrc"]


def test_real_tomogram_crop_voxel_size():
    vol = read_mrc(shared_file("real", "microtubule_tomogram_crop_13pf.mrc"))
    assert vol.data.shape == (36, 206, 94)
    assert vol.voxel_size == pytest.approx((10.52,) * 3, abs=1e-3)


def test_real_epu_micrograph_pixel_size_and_extended_header():
    vol = read_mrc(shared_file("real", "epu2.9_example.mrc"))
    assert vol.data.shape == (4096, 4096) and vol.data.dtype == np.uint16
    assert vol.voxel_size == pytest.approx((0.667, 0.667), abs=1e-3)
    ext = vol.metadata["extended_header"]
    assert ext["type"] == "FEI2" and "Pixel size X" in ext["fields"]
