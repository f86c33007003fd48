"""MrcRowWriter: a float32 MRC file written atomically from row blocks given in order, on a thread."""

from __future__ import annotations

import errno
import os

import mrcfile
import numpy as np
import pytest

from napari_cryoden.io import MrcError, MrcRowWriter, read_mrc, write_mrc
from napari_cryoden.io.mrc import HeaderFields
from napari_cryoden.inference.stream import header_stats


def _data(shape, seed=0):
    return (np.random.default_rng(seed).normal(size=shape) * 2 + 5).astype(np.float32)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


@pytest.mark.parametrize("shape, cuts", [((11, 20, 24), (0, 1, 5, 11)), ((30, 17), (0, 13, 30)),
                                         ((4, 9, 9), (0, 4))])
def test_rows_give_the_file_of_write_mrc(tmp_path, shape, cuts):
    data = _data(shape)
    plain = write_mrc(tmp_path / "plain.mrc", data, 6.25, label="cryoden test")
    with MrcRowWriter(tmp_path / "rows.mrc", shape, 6.25, header_stats(data), label="cryoden test") as rows:
        for a, b in zip(cuts[:-1], cuts[1:]):
            rows.write(a, data[a:b])
    assert (tmp_path / "rows.mrc").stat().st_size == plain.stat().st_size
    assert mrcfile.validate(tmp_path / "rows.mrc", print_file=open(os.devnull, "w"))
    with mrcfile.open(plain) as a, mrcfile.open(tmp_path / "rows.mrc") as b:
        np.testing.assert_array_equal(b.data, a.data)
        assert a.voxel_size == b.voxel_size and a.get_labels()[1:] == b.get_labels()[1:]
        for field in ("dmin", "dmax", "dmean", "rms"):
            np.testing.assert_allclose(float(b.header[field]), float(a.header[field]), rtol=1e-5)
    assert _leftovers(tmp_path) == []


def test_rows_keep_the_input_header_fields(tmp_path):
    src = tmp_path / "src.mrc"
    with mrcfile.new(src) as mrc:
        mrc.set_data(_data((5, 8, 8)))
        mrc.header.origin = (1.0, 2.0, 3.0)
        mrc.voxel_size = 4.0
    fields = HeaderFields.from_metadata(read_mrc(src).metadata)
    data = _data((5, 8, 8), seed=1)
    with MrcRowWriter(tmp_path / "out.mrc", data.shape, None, header_stats(data), header=fields) as rows:
        rows.write(0, data[:2])
        rows.write(2, data[2:])
    with mrcfile.open(tmp_path / "out.mrc") as mrc:
        assert tuple(mrc.header.origin.item()) == (1.0, 2.0, 3.0)
        assert float(mrc.voxel_size.x) == 4.0
        np.testing.assert_array_equal(mrc.data, data)


@pytest.mark.parametrize("bad", ["gap", "overlap", "shape", "too many"])
def test_rows_out_of_order_leave_nothing(tmp_path, bad):
    data = _data((6, 8, 8))
    rows = MrcRowWriter(tmp_path / "out.mrc", data.shape, 1.0, header_stats(data))
    rows.write(0, data[:2])
    wrong = {"gap": (3, data[3:4]), "overlap": (1, data[1:3]), "shape": (2, data[2:4, :4]),
             "too many": (2, np.zeros((5, 8, 8), np.float32))}[bad]
    with pytest.raises(ValueError, match="expected rows from 2"):
        rows.write(*wrong)
    assert list(tmp_path.iterdir()) == []
    rows.abort()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        rows.close()


def test_missing_rows_at_close_leave_nothing(tmp_path):
    data = _data((6, 8, 8))
    rows = MrcRowWriter(tmp_path / "out.mrc", data.shape, 1.0, header_stats(data))
    rows.write(0, data[:5])
    with pytest.raises(ValueError, match="5 of 6 rows"):
        rows.close()
    assert list(tmp_path.iterdir()) == []


def test_an_exception_in_the_block_aborts(tmp_path):
    target = tmp_path / "out.mrc"
    target.write_bytes(b"old result")
    data = _data((6, 8, 8))
    with pytest.raises(KeyboardInterrupt):
        with MrcRowWriter(target, data.shape, 1.0, header_stats(data), overwrite=True) as rows:
            rows.write(0, data[:3])
            raise KeyboardInterrupt  # a cancel in the middle
    assert target.read_bytes() == b"old result" and _leftovers(tmp_path) == []


def test_a_full_disk_is_an_oserror_and_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.mrc"
    target.write_bytes(b"old result")
    data = _data((6, 8, 8))
    calls = []

    def full(fd, buf, offset):
        calls.append(offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    rows = MrcRowWriter(target, data.shape, 1.0, header_stats(data), overwrite=True)
    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError, match="No space"):
        rows.write(0, data[:3])
        rows.write(3, data[3:])  # the first failure may show here or at close
        rows.close()
    assert calls and target.read_bytes() == b"old result" and _leftovers(tmp_path) == []


def test_refusals_before_anything_is_written(tmp_path):
    data = _data((3, 4, 4))
    src = tmp_path / "in.mrc"
    write_mrc(src, data)
    with pytest.raises(MrcError, match="over the input"):
        MrcRowWriter(src, data.shape, 1.0, header_stats(data), overwrite=True, protect=(src,))
    with pytest.raises(FileExistsError):
        MrcRowWriter(src, data.shape, 1.0, header_stats(data))
    with pytest.raises(MrcError, match="2D or 3D"):
        MrcRowWriter(tmp_path / "x.mrc", (0, 4, 4), 1.0, (0.0, 0.0, 0.0, 0.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mrc"]


def test_short_writes_are_completed(tmp_path, monkeypatch):
    """os.pwrite may write less than asked: the rest follows."""
    data = _data((4, 10, 10))
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, buf, offset: real(fd, bytes(buf)[:7], offset))
    with MrcRowWriter(tmp_path / "out.mrc", data.shape, 1.0, header_stats(data)) as rows:
        rows.write(0, data)
    monkeypatch.undo()
    with mrcfile.open(tmp_path / "out.mrc") as mrc:
        np.testing.assert_array_equal(mrc.data, data)
