"""Hostile and broken MRC input: the reader, the CLI and the widget's job either give a correct
result or fail with one line, never a traceback, and never allocate what a header claims.

Property tests build a valid small MRC file with :mod:`mrcfile`, then break it (dimensions, mode,
stamps, extended header size, truncation, random header bytes). Named cases follow in plain
tests. The Qt side of the widget is in ``test_robust_runs.py``. No napari import here.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cryoden.cli import main
from napari_cryoden.io import MrcError, read_mrc

#: Hypothesis examples per property (kept small: the CI machine has 2 cores).
READER_EXAMPLES = 60
CLI_EXAMPLES = 30
JOB_EXAMPLES = 30
FAST = ["--model", "tiny-test", "--tile", "32", "--overlap", "4", "--device", "cpu", "--precision", "fp32"]
#: Peak Python/numpy allocation allowed while reading one hostile file (the files are < 10 kB).
MAX_PEAK_BYTES = 16 * 1024**2

MODE_DTYPES = [np.int8, np.int16, np.uint16, np.float16, np.float32, np.complex64]
HUGE = [10**6, 2**20, 2**31 - 1, -(2**31), 0, -1]

# Header fields (offset, struct format) of the MRC2014 header.
DIMS, MODE, NSYMBT, MAP, MACHST = (0, "<3i"), (12, "<i"), (92, "<i"), (208, "4s"), (212, "4s")
MZ, ISPG = (36, "<i"), (88, "<i")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def valid_mrc_bytes(data: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # header statistics of NaN/Inf data
        path = Path(tmp) / "v.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(data)
        return path.read_bytes()


def patch(raw: bytes, field: tuple[int, str], *values) -> bytes:
    """`raw` with one header field set (unchanged when `raw` is too short to hold it)."""
    if len(raw) < field[0] + struct.calcsize(field[1]):
        return raw
    buf = bytearray(raw)
    struct.pack_into(field[1], buf, field[0], *values)
    return bytes(buf)


@st.composite
def volumes(draw, *, finite_only=False):
    dtype = draw(st.sampled_from(MODE_DTYPES))
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = rng.normal(0, 20, size=shape)
    if np.issubdtype(dtype, np.integer):
        data = np.clip(data, np.iinfo(dtype).min, np.iinfo(dtype).max)
    data = data.astype(dtype)
    if not finite_only and np.issubdtype(dtype, np.floating) and draw(st.booleans()):
        data.flat[draw(st.integers(0, data.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return data


@st.composite
def hostile_files(draw):
    """(bytes, suffix): a valid MRC file, then zero or more breakages."""
    raw = valid_mrc_bytes(draw(volumes()))
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["dims", "mode", "nsymbt", "map", "machst", "truncate", "append", "bytes", "4d"]))
        if kind == "dims":
            dims = [draw(st.one_of(st.integers(-3, 12), st.sampled_from(HUGE))) for _ in range(3)]
            raw = patch(raw, DIMS, *dims)
        elif kind == "mode":
            raw = patch(raw, MODE, draw(st.one_of(st.integers(-2, 14), st.sampled_from([101, 255, 2**31 - 1]))))
        elif kind == "nsymbt":
            raw = patch(raw, NSYMBT, draw(st.one_of(st.integers(-8, 4096), st.sampled_from([10**9, -(2**31)]))))
        elif kind == "map":
            raw = patch(raw, MAP, draw(st.binary(min_size=4, max_size=4)))
        elif kind == "machst":
            raw = patch(raw, MACHST, draw(st.binary(min_size=4, max_size=4)))
        elif kind == "truncate" and raw:  # a second truncation may find the file empty already
            raw = raw[: draw(st.integers(0, len(raw) - 1))]
        elif kind == "append":
            raw = raw + draw(st.binary(min_size=1, max_size=64))
        elif kind == "bytes":
            buf = bytearray(raw)
            for offset, value in draw(st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), max_size=8)):
                if offset < len(buf):
                    buf[offset] = value
            raw = bytes(buf)
        elif kind == "4d":  # a volume stack: ispg 401 and nz = 2 * mz
            if len(raw) >= 1024:
                nz = struct.unpack_from("<i", raw, 8)[0]
                if nz > 0 and nz % 2 == 0:
                    raw = patch(raw, (88, "<i"), 401)
                    raw = patch(raw, (36 + 8, "<i"), nz // 2)
    suffix = draw(st.sampled_from([".mrc", ".mrc", ".rec", ".mrc.gz"]))
    if suffix.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=1)
    return raw, suffix


def check_one_line_error(exc: BaseException, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message, message
    assert str(path) in message, message


def read_watching_memory(path: Path):
    """read_mrc(path) under tracemalloc: (result or MrcError, peak bytes allocated)."""
    tracemalloc.start()
    try:
        try:
            result = read_mrc(path)
        except MrcError as exc:
            result = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


# ------------------------------------------------------------------------------ the reader
@settings(max_examples=READER_EXAMPLES, deadline=None)
@given(case=hostile_files())
def test_reader_gives_data_or_one_line_error(case):
    raw, suffix = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"hostile{suffix}"
        path.write_bytes(raw)
        digest = sha256(path)
        result, peak = read_watching_memory(path)
        assert sha256(path) == digest  # the input is never modified
        assert os.listdir(tmp) == [path.name]
    assert peak < MAX_PEAK_BYTES, f"read_mrc allocated {peak} bytes for a {len(raw)}-byte file"
    if isinstance(result, MrcError):
        check_one_line_error(result, path)
    else:
        assert result.data.size > 0 and min(result.data.shape) >= 1
        assert len(result.voxel_size) == result.data.ndim
        assert all(np.isfinite(v) and v > 0 for v in result.voxel_size)


def _file(tmp_path: Path, raw: bytes, name: str = "bad.mrc") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


@pytest.fixture
def valid(rng) -> bytes:
    return valid_mrc_bytes(rng.normal(size=(4, 5, 6)).astype(np.float32))


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda r: r[:-7], "the file has"),  # truncated data
        (lambda r: r[:1000], "not an MRC file"),  # truncated header
        (lambda r: patch(r, DIMS, 6, 5, 40), "the file has"),  # dimensions disagree with the size
        (lambda r: patch(r, MODE, 5), "mode"),  # invalid mode number
        (lambda r: patch(r, MODE, 101), "mode"),  # 4-bit mode: not supported by mrcfile
        (lambda r: patch(r, DIMS, 0, 5, 4), "must be positive"),
        (lambda r: patch(r, DIMS, -6, 5, 4), "must be positive"),
        (lambda r: patch(r, DIMS, 10**6, 10**6, 10**6), "the file has"),  # absurd: 4e18 bytes
        (lambda r: patch(r, DIMS, 2**31 - 1, 2**31 - 1, 2**31 - 1), "the file has"),
        (lambda r: patch(r, NSYMBT, 10**6), "extended header"),  # extended header longer than the file
        (lambda r: patch(r, NSYMBT, -5), "extended header"),
        # a volume stack (space group 401) whose mz is 0 (mrcfile divides by it) or larger than nz
        # (no volume: found by the hypothesis test above)
        (lambda r: patch(patch(r, ISPG, 401), MZ, 0), "corrupt"),
        (lambda r: patch(patch(r, ISPG, 401), MZ, 258), "describes no voxels"),
    ],
    ids=["truncated-data", "truncated-header", "dims-vs-size", "mode-5", "mode-101", "zero-dim",
         "negative-dim", "1e6-cubed", "int32-max-cubed", "ext-header-too-long", "ext-header-negative",
         "stack-mz-0", "stack-mz-over-nz"],
)
def test_broken_file_named_case(breakage, expected, valid, tmp_path):
    path = _file(tmp_path, breakage(valid))
    result, peak = read_watching_memory(path)
    assert isinstance(result, MrcError)
    check_one_line_error(result, path)
    assert expected in str(result)
    assert peak < MAX_PEAK_BYTES


@pytest.mark.parametrize(
    "breakage",
    [lambda r: patch(r, MACHST, b"\0\0\0\0"), lambda r: patch(r, MAP, b"XXXX"),
     lambda r: patch(patch(r, MAP, b"\0\0\0\0"), MACHST, b"\0\0\0\0")],
    ids=["machine-stamp", "map-stamp", "both"],
)
def test_old_style_header_is_read_with_one_note(breakage, valid, rng, tmp_path):
    """Older programs write no MAP ID and no machine stamp: such a file is read permissively, with
    one note, and gives the same data (issue 21)."""
    path = _file(tmp_path, breakage(valid))
    result, peak = read_watching_memory(path)
    assert not isinstance(result, MrcError), result
    np.testing.assert_array_equal(result.data, read_mrc(_file(tmp_path, valid, "good.mrc")).data)
    (note,) = result.metadata["notes"]
    assert "old-style MRC header" in note and "\n" not in note
    assert peak < MAX_PEAK_BYTES


def test_old_style_header_still_refuses_real_corruption(valid, tmp_path):
    broken = patch(patch(valid, MACHST, b"\0\0\0\0"), DIMS, 6, 5, 40)  # no stamp, and too little data
    result, _ = read_watching_memory(_file(tmp_path, broken))
    assert isinstance(result, MrcError) and "the file has" in str(result)
    check_one_line_error(result, tmp_path / "bad.mrc")


def test_compressed_absurd_header_refused_before_decompressing(valid, tmp_path):
    path = _file(tmp_path, gzip.compress(patch(valid, DIMS, 10**6, 10**6, 10**6)), "bad.mrc.gz")
    result, peak = read_watching_memory(path)
    assert isinstance(result, MrcError) and "more than" in str(result), result
    assert peak < MAX_PEAK_BYTES


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16], ids=["mode0", "mode1", "mode6"])
def test_every_integer_mode_reads_exactly(dtype, tmp_path, rng):
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max, size=(3, 7, 5), endpoint=True).astype(dtype)
    path = _file(tmp_path, valid_mrc_bytes(data))
    vol = read_mrc(path)
    assert vol.data.dtype == dtype
    np.testing.assert_array_equal(vol.data, data)


def test_nan_inf_and_one_voxel_thick_volumes_read_as_stored(tmp_path):
    data = np.arange(1 * 6 * 7, dtype=np.float32).reshape(1, 6, 7)
    data[0, 1, 2], data[0, 3, 3], data[0, 5, 6] = np.nan, np.inf, -np.inf
    vol = read_mrc(_file(tmp_path, valid_mrc_bytes(data)))
    np.testing.assert_array_equal(vol.data, data)  # NaN compares equal here; never cleaned silently


# ------------------------------------------------------------------------------ the CLI
def _cli_outcome(capsys, args):
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _assert_cli_contract(rc, err, src: Path, dst: Path, digest: str, folder_before: set[str]):
    assert "Traceback" not in err
    assert sha256(src) == digest
    if rc == 0:
        out = read_mrc(dst).data
        assert out.dtype == np.float32 and np.isfinite(out).all()
        assert set(os.listdir(src.parent)) == folder_before | {dst.name}
        return out
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("cryoden: note:")]
    assert len(lines) == 1 and lines[0].startswith("cryoden: error: "), err
    assert set(os.listdir(src.parent)) == folder_before  # no output, no temporary file
    return None


@settings(max_examples=CLI_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=hostile_files())
def test_cli_gives_output_or_one_line_error(case, tiny_model_dir, capsys):
    raw, suffix = case
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"in{suffix}"
        src.write_bytes(raw)
        dst = Path(tmp) / "out.mrc"
        digest, before = sha256(src), set(os.listdir(tmp))
        rc, _, err = _cli_outcome(capsys, ["denoise", str(src), str(dst), *FAST, "--quiet"])
        out = _assert_cli_contract(rc, err, src, dst, digest, before)
        if out is not None:
            assert out.shape == read_mrc(src).data.shape


@pytest.mark.parametrize(
    "data, expected",
    [
        (np.zeros((3, 4, 5), np.complex64), "real numbers"),
        (np.ones((2, 3, 4, 5), np.float32), "expects 3D input"),
        (np.ones((6, 7), np.float32), "2D image"),
        (np.full((3, 9, 9), np.nan, np.float32), "no finite values"),
    ],
    ids=["complex-mode4", "4d-volume-stack", "2d", "all-nan"],
)
def test_cli_refuses_with_one_line(data, expected, tmp_path, tiny_model_dir, capsys):
    src = _file(tmp_path, valid_mrc_bytes(data), "in.mrc")
    dst = tmp_path / "out.mrc"
    digest, before = sha256(src), set(os.listdir(tmp_path))
    rc, _, err = _cli_outcome(capsys, ["denoise", str(src), str(dst), *FAST])
    assert _assert_cli_contract(rc, err, src, dst, digest, before) is None
    assert expected in err


@pytest.mark.parametrize(
    "shape", [(1, 40, 40), (5, 1, 30), (2, 3, 1), (1, 1, 1), (3, 9, 11)],
    ids=["1-voxel-thick-z", "1-voxel-thick-y", "1-voxel-thick-x", "single-voxel", "smaller-than-a-tile"],
)
def test_cli_denoises_thin_and_tiny_volumes(shape, tmp_path, tiny_model_dir, rng, capsys):
    src = _file(tmp_path, valid_mrc_bytes(rng.normal(size=shape).astype(np.float32)), "in.mrc")
    dst = tmp_path / "out.mrc"
    digest, before = sha256(src), set(os.listdir(tmp_path))
    rc, _, err = _cli_outcome(capsys, ["denoise", str(src), str(dst), *FAST])
    assert rc == 0, err
    assert _assert_cli_contract(rc, err, src, dst, digest, before).shape == shape


def test_cli_nan_inf_replaced_with_note_or_refused(tmp_path, tiny_model_dir, rng, capsys):
    data = rng.normal(size=(4, 20, 20)).astype(np.float32)
    data[1, 2, 3], data[2, 5, 5], data[3, 0, 0] = np.nan, np.inf, -np.inf
    src = _file(tmp_path, valid_mrc_bytes(data), "in.mrc")
    digest = sha256(src)

    rc, _, err = _cli_outcome(capsys, ["denoise", str(src), str(tmp_path / "out.mrc"), *FAST, "--quiet"])
    assert rc == 0, err
    assert "cryoden: note: replaced 3 NaN/Inf voxels" in err
    assert err.count("NaN/Inf") == 1  # said once, by the CLI (the core's log record is not echoed)
    assert np.isfinite(read_mrc(tmp_path / "out.mrc").data).all()

    before = set(os.listdir(tmp_path))
    rc, _, err = _cli_outcome(capsys, ["denoise", str(src), str(tmp_path / "out2.mrc"), *FAST,
                                       "--nonfinite", "refuse"])
    assert _assert_cli_contract(rc, err, src, tmp_path / "out2.mrc", digest, before) is None
    assert "3 NaN/Inf voxels" in err


def test_cli_unforeseen_exception_is_one_line(tmp_path, tiny_model_dir, rng, capsys, monkeypatch):
    import napari_cryoden.io as io

    def broken(path, **kwargs):
        raise IndexError("something deep inside a library")

    monkeypatch.setattr(io, "read_mrc", broken)
    src = _file(tmp_path, valid_mrc_bytes(rng.normal(size=(2, 8, 8)).astype(np.float32)), "in.mrc")
    rc, _, err = _cli_outcome(capsys, ["denoise", str(src), str(tmp_path / "out.mrc"), *FAST])
    assert rc == 1
    assert err.strip() == "cryoden: error: internal error: IndexError: something deep inside a library"


# ------------------------------------------------------------------------------ the widget's path
@settings(max_examples=JOB_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=hostile_files())
def test_widget_path_gives_layer_or_one_line_message(case, tiny_model_dir):
    """File -> napari reader contribution -> the widget's job: an array or one-line message.

    ``get_reader`` never raises (napari then tries other readers); the reader raises only
    MrcError (napari shows it as a notification); the job returns the denoised array or a
    ``_Failed`` message, which the widget shows as one error notification.
    """
    pytest.importorskip("napari")
    from napari_cryoden._reader import get_reader
    from napari_cryoden._widgets.denoise import _denoise_job, _Failed

    raw, suffix = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in{suffix}"
        path.write_bytes(raw)
        digest = sha256(path)
        reader = get_reader(str(path))
        if reader is None:
            return
        try:
            layers = reader(str(path))
        except MrcError as exc:
            check_one_line_error(exc, path)
            return
        [(data, kwargs, kind)] = layers
        assert kind == "image" and len(kwargs["scale"]) == data.ndim
        job = _denoise_job(data, "tiny-test", {"tile": 32, "overlap": 4, "device": "cpu", "precision": "fp32"})
        try:
            while True:
                next(job)
        except StopIteration as stop:
            result = stop.value
        assert sha256(path) == digest
    if isinstance(result, _Failed):
        assert result.message and "\n" not in result.message
        assert "Error:" not in result.message  # a foreseen refusal, not an unforeseen exception
    else:
        assert result.shape == data.shape and np.isfinite(result).all()
