"""Read and write MRC maps, tomograms, micrographs and stacks through :mod:`mrcfile`.

Arrays are returned as stored, in (Z, Y, X) order (``(Y, X)`` for a single image, ``(N, Y, X)``
for a stack), never rescaled. Voxel sizes are in Å, ordered (Z, Y, X) to match the array.

Large uncompressed files (at least `mmap_threshold` bytes) are memory-mapped read-only, so the
data is paged in as it is used and never copied whole.

Reference: Cheng, A. et al. (2015). MRC2014: Extensions to the MRC format header for electron
cryo-microscopy and tomography. J. Struct. Biol. 192(2), 146-150. doi:10.1016/j.jsb.2015.04.002
"""

from __future__ import annotations

import bz2
import gzip
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path, same_file

__all__ = [
    "MRC_EXTENSIONS",
    "MrcError",
    "MrcVolume",
    "is_mrc_path",
    "looks_like_mrc",
    "read_mrc",
    "write_mrc",
]

MRC_EXTENSIONS = (".mrc", ".mrcs", ".rec", ".map", ".st", ".ali")
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}
#: Files at least this large (bytes) are memory-mapped instead of read into memory.
DEFAULT_MMAP_THRESHOLD = 256 * 1024**2
_HEADER_BYTES = 1024
_VALID_MODES = {0, 1, 2, 3, 4, 6, 12, 101}
#: Bytes per voxel of each MRC mode (mode 101 packs two 4-bit voxels in a byte).
_MODE_BYTES = {0: 1.0, 1: 2.0, 2: 4.0, 3: 4.0, 4: 8.0, 6: 2.0, 12: 2.0, 101: 0.5}
#: Compressed files whose header claims more data than this (1 TiB) are refused before
#: decompressing: their size cannot be checked against the file's.
MAX_DATA_BYTES = 2**40
#: Compressed files claiming at most this many bytes are decompressed without counting first.
_CHEAP_BYTES = 8 * 1024**2
#: Bytes a compressed file may hold past the size its header describes; more is refused, and
#: decompression stops there (a file of zeros appended to a small map is a decompression bomb).
TRAILING_SLACK_BYTES = 1024**2


class MrcError(ValueError):
    """An MRC file is missing, unreadable, corrupt or truncated. The message names the file."""


@dataclass
class MrcVolume:
    """What :func:`read_mrc` returns.

    Attributes
    ----------
    data : ndarray
        (Z, Y, X), (Y, X) or (N, Y, X), in the file's dtype; a read-only ``np.memmap`` for large
        uncompressed files.
    voxel_size : tuple of float
        Å per voxel along each axis of `data`, (Z, Y, X) order; 1.0 where the header has none.
    metadata : dict
        JSON-serialisable header summary (``header``), extended-header summary
        (``extended_header``), ``path``, ``voxel_size_known`` and ``memory_mapped``.
    """

    data: np.ndarray
    voxel_size: tuple[float, ...]
    metadata: dict = field(default_factory=dict)


def _split_suffix(path: Path) -> tuple[str, str]:
    """('.mrc', '.gz') for 'x.mrc.gz', ('.rec', '') for 'x.rec' (lower case)."""
    suffixes = [s.lower() for s in path.suffixes]
    comp = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSED else ""
    base = suffixes[-2] if comp and len(suffixes) >= 2 else (suffixes[-1] if suffixes and not comp else "")
    return base, comp


def is_mrc_path(path: str | os.PathLike) -> bool:
    """True if the file name has an MRC extension (optionally followed by .gz or .bz2)."""
    return _split_suffix(Path(path))[0] in MRC_EXTENSIONS


def _read_head(path: Path, n: int = _HEADER_BYTES) -> bytes:
    opener = _COMPRESSED.get(_split_suffix(path)[1], open)
    with opener(path, "rb") as fh:
        return fh.read(n)


def looks_like_mrc(path: str | os.PathLike) -> bool:
    """Cheap check of an MRC header: a full 1024-byte header with a plausible mode and size.

    It never raises: unreadable files and files that are not MRC give False. Used by the napari
    reader to return ``None`` for other files.
    """
    path = Path(path)
    try:
        if not path.is_file():
            return False
        head = _read_head(path)
    except (OSError, EOFError, ValueError):
        return False
    if len(head) < _HEADER_BYTES:
        return False
    if head[208:212] == b"MAP ":
        return True
    # Old-style files without the map stamp: sane dimensions and mode in either byte order.
    for order in "<>":
        nx, ny, nz, mode = np.frombuffer(head[:16], dtype=f"{order}i4")
        if mode in _VALID_MODES and 0 < nx < 2**20 and 0 < ny < 2**20 and 0 < nz < 2**20:
            return True
    return False


def _decompressed_size(path: Path, limit: int) -> int:
    """Bytes in the decompressed stream of `path`, counted in 1 MiB chunks up to `limit`."""
    opener = _COMPRESSED[_split_suffix(path)[1]]
    n = 0
    with opener(path, "rb") as fh:
        while n < limit:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            n += len(chunk)
    return n


def _check_header_size(path: Path, head: bytes, compressed: bool) -> int | None:
    """Refuse a header whose dimensions are not positive or imply more bytes than the file holds.

    This runs on the raw 1024 bytes, before :mod:`mrcfile` reads anything, so an absurd header
    (say 10^6 x 10^6 x 10^6 voxels, or a 1 GB extended header in a 2 kB file) never leads to an
    allocation: mrcfile reads the extended header and the data into buffers of the claimed size.
    For compressed files claiming more than :data:`_CHEAP_BYTES`, the decompressed stream is
    counted first (in 1 MiB chunks, no allocation), and claims over :data:`MAX_DATA_BYTES` are
    refused outright; so are compressed files holding more than :data:`TRAILING_SLACK_BYTES`
    past the described size. Headers whose byte order cannot be told are left to mrcfile, which
    refuses them.

    Returns the bytes the header describes (header, extended header and data), or None when
    the byte order cannot be told.
    """
    order = {0x44: "<", 0x41: "<", 0x11: ">"}.get(head[212])
    if order is None:
        return None
    nx, ny, nz, mode = (int(v) for v in np.frombuffer(head[:16], dtype=f"{order}i4"))
    nsymbt = int(np.frombuffer(head[92:96], dtype=f"{order}i4")[0])
    if min(nx, ny, nz) <= 0:
        raise MrcError(f"{path}: corrupt MRC header: dimensions {nx} x {ny} x {nz} (X, Y, Z) must be positive")
    if nsymbt < 0:
        raise MrcError(f"{path}: corrupt MRC header: negative extended header size {nsymbt}")
    data_bytes = 0
    if mode in _MODE_BYTES:  # other modes are refused by mrcfile, after the extended header
        row = -(-nx // 2) if mode == 101 else int(nx * _MODE_BYTES[mode])
        data_bytes = row * ny * nz
    needed = _HEADER_BYTES + nsymbt + data_bytes
    if compressed:
        if needed > MAX_DATA_BYTES:
            raise MrcError(
                f"{path}: corrupt MRC header: {nx} x {ny} x {nz} voxels (mode {mode}) and {nsymbt} bytes "
                f"of extended header would be {needed:.3g} bytes, more than the {MAX_DATA_BYTES:.3g} "
                "bytes this reader accepts"
            )
        if needed <= _CHEAP_BYTES:
            return needed  # small enough to be read whole and checked then (_read_compressed)
        try:
            size = _decompressed_size(path, needed + TRAILING_SLACK_BYTES + 1)
        except (OSError, EOFError, ValueError) as exc:
            raise MrcError(f"{path}: corrupt compressed file: {' '.join(str(exc).split())}") from None
        _check_trailing(path, size, needed)
        what = "the decompressed file has"
    else:
        size = path.stat().st_size
        what = "the file has"
    if needed > size:
        raise MrcError(
            f"{path}: truncated or corrupt MRC file: the header describes {nx} x {ny} x {nz} voxels "
            f"(mode {mode}) and {nsymbt} bytes of extended header, {needed} bytes in all, "
            f"but {what} {size} bytes"
        )
    return needed


def _check_trailing(path: Path, size: int, needed: int) -> None:
    """Refuse a decompressed stream of `size` (or more) bytes that goes on more than
    :data:`TRAILING_SLACK_BYTES` past the `needed` bytes its header describes."""
    if size > needed + TRAILING_SLACK_BYTES:
        raise MrcError(
            f"{path}: corrupt compressed MRC file: the decompressed data go on past the {needed} bytes "
            f"the header describes (more than {TRAILING_SLACK_BYTES} bytes of trailing data)"
        )


def _read_compressed(path: Path, needed: int | None):
    """An :class:`mrcfile.mrcinterpreter.MrcInterpreter` (strict) on the decompressed stream of
    `path`, of which at most `needed` + :data:`TRAILING_SLACK_BYTES` bytes are read (1 MiB
    chunks); mrcfile itself would read the whole stream into memory to measure it."""
    from io import BytesIO

    from mrcfile.mrcinterpreter import MrcInterpreter

    limit = (needed if needed is not None else _HEADER_BYTES) + TRAILING_SLACK_BYTES + 1
    buffer = BytesIO()
    with _COMPRESSED[_split_suffix(path)[1]](path, "rb") as fh:
        while buffer.tell() < limit:
            chunk = fh.read(min(1 << 20, limit - buffer.tell()))
            if not chunk:
                break
            buffer.write(chunk)
    if needed is not None:
        _check_trailing(path, buffer.tell(), needed)
    buffer.seek(0)
    return MrcInterpreter(iostream=buffer, permissive=False)


def _header_summary(mrc) -> dict:
    h = mrc.header
    vs = mrc.voxel_size
    summary = {
        "nx": int(h.nx), "ny": int(h.ny), "nz": int(h.nz), "mode": int(h.mode),
        "mx": int(h.mx), "my": int(h.my), "mz": int(h.mz),
        "cella_A": [float(h.cella.x), float(h.cella.y), float(h.cella.z)],
        "voxel_size_xyz_A": [float(vs.x), float(vs.y), float(vs.z)],
        "origin_xyz_A": [float(h.origin.x), float(h.origin.y), float(h.origin.z)],
        "nxstart": [int(h.nxstart), int(h.nystart), int(h.nzstart)],
        "ispg": int(h.ispg),
        "dmin": float(h.dmin), "dmax": float(h.dmax), "dmean": float(h.dmean), "rms": float(h.rms),
        "exttyp": bytes(h.exttyp).decode("ascii", "replace").strip("\x00 "),
        "nversion": int(h.nversion),
        "labels": [
            bytes(lab).decode("ascii", "replace").strip("\x00 ")
            for lab in h.label[: int(h.nlabl)]
        ],
    }
    return summary


def _extended_summary(mrc) -> dict:
    raw = mrc.extended_header
    nbytes = int(raw.nbytes) if raw is not None else 0
    try:
        ext = mrc.indexed_extended_header  # FEI1/FEI2 as structured records (mrcfile >= 1.5)
    except (ValueError, TypeError, AttributeError):
        ext = None
    if ext is None:
        ext = raw
    out = {"nbytes": nbytes, "type": bytes(mrc.header.exttyp).decode("ascii", "replace").strip("\x00 ")}
    if nbytes and ext.dtype.names:
        out["entries"] = int(ext.shape[0]) if ext.shape else 1
        out["fields"] = list(ext.dtype.names)[:50]
        first = {}
        for name in ext.dtype.names[:40]:
            try:
                value = ext[0][name] if ext.shape else ext[name]
                first[name] = value.item() if hasattr(value, "item") and np.ndim(value) == 0 else None
            except (IndexError, ValueError, TypeError):
                continue
            if isinstance(first[name], bytes):
                first[name] = first[name].decode("ascii", "replace").strip("\x00 ")
            if first[name] is None or (isinstance(first[name], float) and not np.isfinite(first[name])):
                first.pop(name)
        out["first_entry"] = first
    return out


def _voxel_size_zyx(mrc, ndim: int) -> tuple[tuple[float, ...], bool]:
    vs = mrc.voxel_size
    zyx = (float(vs.z), float(vs.y), float(vs.x))
    known = all(np.isfinite(v) and v > 0 for v in zyx[-2:])
    if not known:
        zyx = (1.0, 1.0, 1.0)
    elif not (np.isfinite(zyx[0]) and zyx[0] > 0) or mrc.is_image_stack():
        zyx = (zyx[1], zyx[1], zyx[2]) if not mrc.is_image_stack() else (1.0, zyx[1], zyx[2])
    return zyx[3 - ndim:] if ndim <= 3 else (1.0,) * (ndim - 3) + zyx, known


def read_mrc(path: str | os.PathLike, *, mmap_threshold: int = DEFAULT_MMAP_THRESHOLD) -> MrcVolume:
    """Read an MRC file (``.mrc .mrcs .rec .map .st``, optionally ``.gz``/``.bz2``).

    Parameters
    ----------
    path : path-like
    mmap_threshold : int, default=256 MiB
        Uncompressed files at least this many bytes are memory-mapped read-only.

    Returns
    -------
    MrcVolume
        Data of every mode mrcfile supports (int8, int16, uint16, float16, float32, complex),
        in the file's dtype.

    Raises
    ------
    MrcError
        If the file is missing, not MRC, corrupt or truncated, or (``.gz``/``.bz2``) goes on
        more than :data:`TRAILING_SLACK_BYTES` past the size its header describes; the message
        names the file and the problem in one line.
    """
    import mrcfile

    path = Path(path)
    if not path.exists():
        raise MrcError(f"{path}: no such file")
    if path.is_dir():
        raise MrcError(f"{path}: is a folder, not an MRC file")
    if not looks_like_mrc(path):
        raise MrcError(f"{path}: not an MRC file (no valid MRC header)")
    compressed = bool(_split_suffix(path)[1])
    try:
        head = _read_head(path)
    except (OSError, EOFError, ValueError) as exc:
        raise MrcError(f"{path}: cannot read the MRC header: {' '.join(str(exc).split())}") from None
    needed = _check_header_size(path, head, compressed)
    use_mmap = not compressed and path.stat().st_size >= mmap_threshold
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if compressed:
                mrc = _read_compressed(path, needed)
            elif use_mmap:
                mrc = mrcfile.mmap(path, mode="r", permissive=False)
            else:
                mrc = mrcfile.open(path, mode="r", permissive=False)
    except MrcError:
        raise
    except (ValueError, OSError, EOFError, MemoryError, OverflowError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise MrcError(f"{path}: corrupt or truncated MRC file: {msg}") from None
    try:
        data = mrc.data
        if data is None:
            raise MrcError(f"{path}: MRC file holds no data")
        if not use_mmap:
            data = np.asarray(data)
        # A memmap keeps its own reference to the mapping, so it stays valid after close().
        voxel_size, known = _voxel_size_zyx(mrc, data.ndim)
        meta = {
            "path": str(path.resolve()),
            "header": _header_summary(mrc),
            "extended_header": _extended_summary(mrc),
            "memory_mapped": use_mmap,
            "voxel_size_known": known,
        }
    finally:
        mrc.close()
    return MrcVolume(data=data, voxel_size=tuple(voxel_size), metadata=meta)


def write_mrc(
    path: str | os.PathLike,
    data: np.ndarray,
    voxel_size: float | tuple[float, ...] = 1.0,
    *,
    overwrite: bool = False,
    protect: tuple[str | os.PathLike, ...] = (),
    label: str | None = None,
    stats: tuple[float, float, float, float] | None = None,
) -> Path:
    """Write `data` as a float32 MRC file, atomically.

    Parameters
    ----------
    path : path-like
        Output; ``.gz``/``.bz2`` suffixes compress.
    data : (Z, Y, X), (Y, X) or (N, Y, X) array-like of real dtype
    voxel_size : float or tuple of float, default=1.0
        Å per voxel in (Z, Y, X) order (or one number for all axes).
    overwrite : bool, default=False
        Replace an existing file.
    protect : tuple of path-like
        Files that must never be replaced (the inputs of the job); writing onto one raises.
    label : str, optional
        Added to the header labels (for example the model name).
    stats : (min, max, mean, std) of float, optional
        The header statistics of `data` when they are known already (a GPU run takes them on
        the device): an uncompressed float32 file is then written as its header followed by the
        data, without reading the data again to compute them. Default: computed by mrcfile.

    Returns
    -------
    Path

    Raises
    ------
    FileExistsError
        If `path` exists and `overwrite` is False.
    MrcError
        If `path` is one of `protect`, or `data` is not 2D/3D numeric.
    """
    import mrcfile

    path = Path(path)
    for p in protect:
        if path.exists() and same_file(path, p):
            raise MrcError(f"{path}: refusing to write the output over the input file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass overwrite to replace it")
    arr = np.asarray(data)
    if arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise MrcError(f"{path}: can only write 2D or 3D real arrays, got {arr.ndim}D {arr.dtype}")
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=float), (arr.ndim,)).tolist()
    vs_zyx = ([vs[0]] if arr.ndim == 2 else []) + vs  # 2D: z = y
    compression = {".gz": "gzip", ".bz2": "bzip2"}.get(_split_suffix(path)[1])
    if stats is not None and compression is None:
        with atomic_path(path, overwrite=overwrite) as tmp:
            _write_with_stats(tmp, arr, vs_zyx, label, stats)
        return path
    with atomic_path(path, overwrite=overwrite) as tmp:
        # mrcfile's statistics are float32 sums: the mean and rms overflow near 1e38 (fixed below)
        with mrcfile.new(tmp, overwrite=True, compression=compression) as mrc, \
                np.errstate(over="ignore", invalid="ignore"):
            mrc.set_data(arr.astype(np.float32, copy=False))
            mrc.voxel_size = (vs_zyx[2], vs_zyx[1], vs_zyx[0])
            if label:
                mrc.add_label(label[:80])
            mrc.update_header_stats()
            _finite_header_stats(mrc)
    return path


def _write_with_stats(tmp: Path, arr: np.ndarray, vs_zyx: list, label: str | None, stats) -> None:
    """The header (mrcfile, on an empty file of the right size), then the float32 data appended
    with plain writes: no pass over the data but the copy itself."""
    import mrcfile

    with mrcfile.new_mmap(tmp, shape=arr.shape, mrc_mode=2, overwrite=True) as mrc:
        mrc.voxel_size = (vs_zyx[2], vs_zyx[1], vs_zyx[0])
        if label:
            mrc.add_label(label[:80])
        h = mrc.header
        h.dmin, h.dmax, h.dmean, h.rms = stats
        offset = h.nbytes + mrc.extended_header.nbytes
    flat = arr.reshape(-1) if arr.dtype == np.float32 else None
    step = 16 * 1024**2  # float32 values per write
    with open(tmp, "r+b") as fh:
        fh.seek(offset)
        for start in range(0, arr.size, step):
            chunk = flat[start : start + step] if flat is not None else (
                arr.reshape(-1)[start : start + step].astype(np.float32))
            fh.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))


def _finite_header_stats(mrc) -> None:
    """Recompute the header's mean and rms in float64 (clipped to float32's range) when
    mrcfile's float32 statistics overflowed on finite data, so the header stays valid."""
    h = mrc.header
    if np.isfinite([h.dmin, h.dmax, h.dmean, h.rms]).all() or not np.isfinite([h.dmin, h.dmax]).all():
        return
    top = float(np.finfo(np.float32).max)
    h.dmean = float(np.clip(np.mean(mrc.data, dtype=np.float64), -top, top))
    h.rms = float(np.clip(np.std(mrc.data, dtype=np.float64), 0.0, top))
