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
import contextlib
import math
import gzip
import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .atomic import atomic_path, same_file

__all__ = [
    "MRC_EXTENSIONS",
    "HeaderFields",
    "MrcError",
    "MrcRowWriter",
    "MrcVolume",
    "check_mrc_header",
    "finish_header",
    "header_shape",
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
        Header summary (``header``), extended-header summary (``extended_header``), ``path``,
        ``voxel_size_known``, ``memory_mapped``, ``notes`` (what was tolerated, e.g. an old-style
        header, one sentence each; empty for a clean file), all JSON-serialisable, and
        ``extended_header_bytes``, the raw extended header (bytes), which
        :meth:`HeaderFields.from_metadata` carries into outputs.
    """

    data: np.ndarray
    voxel_size: tuple[float, ...]
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HeaderFields:
    """The parts of an input's MRC header that an output made from it keeps.

    An output (a denoised tomogram, micrograph or stack) must overlay its input in IMOD or
    ChimeraX: :func:`write_mrc` copies the origin, the start indices, the labels (then adds its
    own) and the extended header (byte for byte, when the output has as many sections as the
    input), and, when the caller gives no voxel size, the header's own voxel size, even 0.

    Attributes
    ----------
    shape : tuple of int
        The input's data shape, array order.
    voxel_size_xyz_A : tuple of float
        As stored in the header (X, Y, Z), 0 or NaN included.
    origin_xyz_A : tuple of float
    nstart_xyz : tuple of int
        ``nxstart``, ``nystart``, ``nzstart``, in voxels of the input's grid.
    labels : tuple of str
    ispg : int
        Space group: 0 marks an image stack.
    exttyp : str
    extended_header : bytes
    """

    shape: tuple[int, ...]
    voxel_size_xyz_A: tuple[float, float, float] = (0.0, 0.0, 0.0)
    origin_xyz_A: tuple[float, float, float] = (0.0, 0.0, 0.0)
    nstart_xyz: tuple[int, int, int] = (0, 0, 0)
    labels: tuple[str, ...] = ()
    ispg: int = 1
    exttyp: str = ""
    extended_header: bytes = b""

    @classmethod
    def from_metadata(cls, metadata: dict | None) -> "HeaderFields | None":
        """From :attr:`MrcVolume.metadata` (or a napari layer's metadata, which holds it); None
        when it has no MRC header summary."""
        header = (metadata or {}).get("header")
        if not isinstance(header, dict) or "nx" not in header:
            return None
        try:
            nx, ny, nz = int(header["nx"]), int(header["ny"]), int(header["nz"])
            return cls(
                shape=(nz, ny, nx) if nz > 1 else (ny, nx),
                voxel_size_xyz_A=tuple(float(v) for v in header.get("voxel_size_xyz_A", (0, 0, 0)))[:3],
                origin_xyz_A=tuple(float(v) for v in header.get("origin_xyz_A", (0, 0, 0)))[:3],
                nstart_xyz=tuple(int(v) for v in header.get("nxstart", (0, 0, 0)))[:3],
                labels=tuple(str(v) for v in header.get("labels", ()))[:10],
                ispg=int(header.get("ispg", 1)),
                exttyp=str(header.get("exttyp", "")),
                extended_header=bytes((metadata or {}).get("extended_header_bytes") or b""),
            )
        except (TypeError, ValueError, KeyError):
            return None

    def apply(self, mrc, shape: tuple[int, ...], label: str | None) -> None:
        """Write these fields into the open mrcfile object `mrc` whose data has `shape`.

        Start indices are rescaled when the grid changed (a binned output); labels beyond the
        ninth are dropped to make room for `label`. The extended header is set apart, when the
        file is created (:meth:`extended_for`).
        """
        h = mrc.header
        h.origin.x, h.origin.y, h.origin.z = self.origin_xyz_A
        old = (self.shape[-1], self.shape[-2], self.shape[0] if len(self.shape) == 3 else 1)
        new = (shape[-1], shape[-2], shape[0] if len(shape) == 3 else 1)
        starts = [int(round(s * n / o)) if o else s for s, n, o in zip(self.nstart_xyz, new, old)]
        h.nxstart, h.nystart, h.nzstart = starts
        if self.ispg == 0 and len(shape) == 3:
            mrc.set_image_stack()
        labels = [lab for lab in self.labels if lab][: 9 if label else 10]
        h.nlabl = 0
        h.label[:] = b""
        for lab in labels + ([label] if label else []):
            mrc.add_label(lab[:80])

    def extended_for(self, shape: tuple[int, ...]) -> tuple[np.ndarray | None, bytes | None]:
        """``(extended header, exttyp)`` for an output of `shape`: the input's, byte for byte,
        when the output has as many sections (Z or N) as the input, since the records of an FEI
        extended header belong to its sections; ``(None, None)`` otherwise."""
        sections = lambda shp: shp[0] if len(shp) == 3 else 1  # noqa: E731
        if not self.extended_header or sections(shape) != sections(self.shape):
            return None, None
        return np.frombuffer(self.extended_header, dtype="V1"), self.exttyp.encode("ascii", "replace")[:4]

    def voxel_size_zyx(self, ndim: int) -> tuple[float, ...]:
        """The header's own voxel size in array order for `ndim`-dimensional data, as an output
        may keep it: 0 (unknown) and other finite non-negative values are kept; negative, NaN
        and infinite values, which no valid MRC2014 file holds, become 0."""
        x, y, z = (v if math.isfinite(v) and v >= 0 else 0.0 for v in self.voxel_size_xyz_A)
        return (z, y, x)[3 - ndim:]


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


def _guess_byte_order(head: bytes) -> str | None:
    """Byte order of a header without a machine stamp: the one giving a valid mode and sane sizes."""
    for order in "<>":
        nx, ny, nz, mode = np.frombuffer(head[:16], dtype=f"{order}i4")
        if mode in _VALID_MODES and 0 < nx < 2**20 and 0 < ny < 2**20 and 0 < nz < 2**20:
            return order
    return None


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
    return _guess_byte_order(head) is not None


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


def _check_header_size(path: Path, head: bytes, compressed: bool, *, count: bool = True) -> int | None:
    """Refuse a header whose dimensions are not positive or imply more bytes than the file holds.

    This runs on the raw 1024 bytes, before :mod:`mrcfile` reads anything, so an absurd header
    (say 10^6 x 10^6 x 10^6 voxels, or a 1 GB extended header in a 2 kB file) never leads to an
    allocation: mrcfile reads the extended header and the data into buffers of the claimed size.
    For compressed files claiming more than :data:`_CHEAP_BYTES`, the decompressed stream is
    counted first (in 1 MiB chunks, no allocation), and claims over :data:`MAX_DATA_BYTES` are
    refused outright (with `count` False, only that); so are compressed files holding more than
    :data:`TRAILING_SLACK_BYTES` past the described size. Headers whose byte order cannot be
    told are left to mrcfile, which refuses them.

    Returns the bytes the header describes (header, extended header and data), or None when
    the byte order cannot be told.
    """
    order = {0x44: "<", 0x41: "<", 0x11: ">"}.get(head[212]) or _guess_byte_order(head)
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
        if needed <= _CHEAP_BYTES or not count:
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


#: What mrcfile raises on a header it cannot make sense of (a zero ``mz`` of a volume stack
#: divides by zero in ``mrcfile.utils.data_shape_from_header``).
_READ_ERRORS = (ValueError, OSError, EOFError, MemoryError, ArithmeticError)

#: What mrcfile says of an old-style header (no MAP ID, no machine stamp) that is otherwise fine.
_OLD_STYLE_WARNINGS = ("Map ID string not found", "Unrecognised machine stamp")


def _open_tolerant(path: Path, use_mmap: bool, *, header_only: bool = False):
    """Open `path` with mrcfile, strictly; an old-style header (no MAP ID or machine stamp, as
    written by older software) is read permissively instead, with one note. Returns the open
    file and the notes. Anything else that strict reading refuses stays refused (MrcError)."""
    import mrcfile

    opener = mrcfile.mmap if use_mmap else partial(mrcfile.open, header_only=header_only)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return opener(path, mode="r", permissive=False), []
    except _READ_ERRORS as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        strict_error = MrcError(f"{path}: corrupt or truncated MRC file: {msg}")
        if not (isinstance(exc, ValueError) and msg.startswith(_OLD_STYLE_WARNINGS)):
            raise strict_error from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mrc = opener(path, mode="r", permissive=True)
    except _READ_ERRORS:
        raise strict_error from None
    other = [str(w.message) for w in caught if not str(w.message).startswith(_OLD_STYLE_WARNINGS)]
    if other or (mrc.data is None and not header_only):
        mrc.close()
        raise strict_error
    note = (f"{path.name}: old-style MRC header (no MAP ID or machine stamp, as older programs write); "
            "read it anyway")
    return mrc, [note]


def _extended_bytes(mrc) -> bytes:
    raw = mrc.extended_header
    return bytes(np.ascontiguousarray(raw).view(np.uint8).ravel()) if raw is not None and raw.nbytes else b""


def header_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The data shape an MRC file's header declares, array order: ``(Y, X)`` when it holds one
    section, else ``(Z, Y, X)`` (or ``(N, Y, X)``). Reads only the first 1024 bytes, so a tool
    can pick a model before reading the data.

    Raises
    ------
    MrcError
        If the file is missing or its header is not MRC.
    """
    path = Path(path)
    if not looks_like_mrc(path):
        raise MrcError(f"{path}: no such file" if not path.exists() else f"{path}: not an MRC file (no valid MRC header)")
    head = _read_head(path)
    order = {0x44: "<", 0x41: "<", 0x11: ">"}.get(head[212]) or _guess_byte_order(head) or "<"
    nx, ny, nz = (int(v) for v in np.frombuffer(head[:12], dtype=f"{order}i4"))
    return (ny, nx) if nz == 1 else (nz, ny, nx)


def _checked_head(path: Path, *, count: bool = True) -> tuple[bool, int | None]:
    """Refuse (MrcError) a missing file, a folder, a file that is not MRC, or a header whose
    sizes do not fit the file (:func:`_check_header_size`); returns whether the file is
    compressed, and the bytes its header describes (None when its byte order cannot be told)."""
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
    return compressed, _check_header_size(path, head, compressed, count=count)


def check_mrc_header(path: str | os.PathLike) -> None:
    """Refuse, without reading the data, an MRC file that :func:`read_mrc` would refuse for its
    header: not MRC, dimensions or sizes that do not fit the file, or a header mrcfile rejects
    (an old-style header without MAP ID or machine stamp passes, as in :func:`read_mrc`). For
    compressed files the claimed size is only checked against :data:`MAX_DATA_BYTES` (counting
    the decompressed bytes would read the file). Used by the napari reader so that it claims
    only files it can read.

    Raises
    ------
    MrcError
        One line naming the file and the problem.
    """
    path = Path(path)
    compressed, _ = _checked_head(path, count=False)
    if not compressed:
        mrc, _ = _open_tolerant(path, use_mmap=False, header_only=True)
        mrc.close()


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
    path = Path(path)
    compressed, needed = _checked_head(path)
    use_mmap = not compressed and path.stat().st_size >= mmap_threshold
    if compressed:  # read through a bounded buffer: mrcfile would decompress a bomb whole
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mrc, notes = _read_compressed(path, needed), []
        except MrcError:
            raise
        except _READ_ERRORS as exc:
            msg = " ".join(str(exc).split()) or type(exc).__name__
            raise MrcError(f"{path}: corrupt or truncated MRC file: {msg}") from None
    else:
        mrc, notes = _open_tolerant(path, use_mmap)
    try:
        data = mrc.data
        if data is None:
            raise MrcError(f"{path}: MRC file holds no data")
        if data.size == 0:
            raise MrcError(f"{path}: corrupt MRC header: it describes no voxels (data shape {data.shape})")
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
            "notes": notes,
            "extended_header_bytes": _extended_bytes(mrc),
        }
    finally:
        mrc.close()
    return MrcVolume(data=data, voxel_size=tuple(voxel_size), metadata=meta)


def write_mrc(
    path: str | os.PathLike,
    data: np.ndarray,
    voxel_size: float | tuple[float, ...] | None = 1.0,
    *,
    overwrite: bool = False,
    protect: tuple[str | os.PathLike, ...] = (),
    label: str | None = None,
    header: HeaderFields | None = None,
    stats: tuple[float, float, float, float] | None = None,
) -> Path:
    """Write `data` as a float32 MRC file, atomically.

    Parameters
    ----------
    path : path-like
        Output; ``.gz``/``.bz2`` suffixes compress.
    data : (Z, Y, X), (Y, X) or (N, Y, X) array-like of real dtype
    voxel_size : float or tuple of float or None, default=1.0
        Å per voxel in (Z, Y, X) order (or one number for all axes). None keeps the voxel size
        stored in `header` (0, meaning unknown, included), or 0 without a header.
    overwrite : bool, default=False
        Replace an existing file.
    protect : tuple of path-like
        Files that must never be replaced (the inputs of the job); writing onto one raises.
    label : str, optional
        Added to the header labels (for example the model name).
    header : HeaderFields, optional
        The input's header fields to keep: origin, start indices, labels, image-stack marking
        and extended header (see :class:`HeaderFields`).
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
    _check_target(path, overwrite, protect)
    arr = np.asarray(data)
    if arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise MrcError(f"{path}: can only write 2D or 3D real arrays, got {arr.ndim}D {arr.dtype}")
    compression = {".gz": "gzip", ".bz2": "bzip2"}.get(_split_suffix(path)[1])
    if stats is not None and compression is None:
        with MrcRowWriter(path, arr.shape, voxel_size, stats, overwrite=overwrite, label=label, header=header) as rows:
            rows.write(0, arr)
        return path
    with atomic_path(path, overwrite=overwrite) as tmp:
        # mrcfile's statistics are float32 sums: the mean and rms overflow near 1e38 (fixed below)
        with mrcfile.new(tmp, overwrite=True, compression=compression) as mrc, \
                np.errstate(over="ignore", invalid="ignore"):
            if header is not None:
                ext, exttyp = header.extended_for(arr.shape)
                if ext is not None:
                    mrc.set_extended_header(ext)
                    mrc.header.exttyp = exttyp
            mrc.set_data(arr.astype(np.float32, copy=False))
            finish_header(mrc, arr.shape, voxel_size, label, header)
            mrc.update_header_stats()
            _finite_header_stats(mrc)
    return path


def finish_header(mrc, shape: tuple[int, ...], voxel_size, label: str | None, header: HeaderFields | None) -> None:
    """Set the voxel size, the kept header fields and the label of a new MRC file whose data
    (of `shape`) is set; shared by :func:`write_mrc` and the memory-mapped outputs of
    :mod:`napari_cryoden.inference.stream`. `voxel_size` as for :func:`write_mrc`."""
    if header is not None:
        header.apply(mrc, tuple(shape), label)
    elif label:
        mrc.add_label(label[:80])
    ndim = len(shape)
    if voxel_size is None:
        vs = list(header.voxel_size_zyx(ndim)) if header is not None else [0.0] * ndim
    else:
        vs = np.broadcast_to(np.asarray(voxel_size, dtype=float), (ndim,)).tolist()
    vs_zyx = ([vs[0]] if ndim == 2 else []) + vs  # 2D: z = y
    if header is not None and voxel_size is None and ndim == 2:
        vs_zyx[0] = header.voxel_size_zyx(3)[0]
    mrc.voxel_size = (vs_zyx[2], vs_zyx[1], vs_zyx[0])


def _check_target(path: Path, overwrite: bool, protect) -> None:
    """Refuse an output that is one of the `protect`ed inputs (MrcError) or that exists without
    `overwrite` (FileExistsError)."""
    for p in protect:
        if path.exists() and same_file(path, p):
            raise MrcError(f"{path}: refusing to write the output over the input file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass overwrite to replace it")


class _Aborted(Exception):
    """Thrown into the atomic write of an aborted :class:`MrcRowWriter`, so that it removes its file."""


class MrcRowWriter:
    """Write a float32 MRC file atomically from its rows, given in order as they are computed.

    The header, with the statistics known beforehand (a GPU run takes them on the device), is
    written first. Each block of rows (a slab along the first axis: Z of a tomogram, Y of an
    image, N of a stack) given to :meth:`write` then goes to the file on a background thread, so
    the caller computes or copies the next rows (for example from the GPU) while the last ones
    are written. :meth:`close` waits for the writes and renames the file into place. On any
    error, or :meth:`abort`, the temporary file is removed and `path` is left as it was. As a
    context manager it closes on success and aborts on an exception.

    Parameters
    ----------
    path : path-like
        Output, uncompressed.
    shape : tuple of int
        (Z, Y, X), (Y, X) or (N, Y, X) of the float32 data.
    voxel_size : float or tuple of float or None
        As for :func:`write_mrc`.
    stats : (min, max, mean, std) of float
        The header statistics of the whole data, in its units.
    overwrite, protect, label, header
        As for :func:`write_mrc`.

    Raises
    ------
    FileExistsError
        If `path` exists and `overwrite` is False.
    MrcError
        If `path` is one of `protect`, or `shape` is not 2D/3D with at least one voxel.
    OSError
        From :meth:`write` or :meth:`close` when the disk fails (``ENOSPC`` for a full disk);
        nothing is left behind.
    """

    #: Largest single write, bytes.
    CHUNK_BYTES = 64 * 1024**2

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], voxel_size, stats, *,
                 overwrite: bool = False, protect: tuple[str | os.PathLike, ...] = (), label: str | None = None,
                 header: HeaderFields | None = None):
        import mrcfile
        from concurrent.futures import ThreadPoolExecutor

        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise MrcError(f"{self.path}: can only write 2D or 3D data with voxels, got shape {self.shape}")
        _check_target(self.path, overwrite, protect)
        self._row_bytes = 4 * math.prod(self.shape[1:])
        self._next = 0
        self._futures: list = []
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path, overwrite=overwrite))
        try:
            ext, exttyp = header.extended_for(self.shape) if header is not None else (None, None)
            with mrcfile.new_mmap(tmp, shape=self.shape, mrc_mode=2, overwrite=True, extended_header=ext,
                                  exttyp=exttyp) as mrc:
                finish_header(mrc, self.shape, voxel_size, label, header)
                h = mrc.header
                h.dmin, h.dmax, h.dmean, h.rms = stats
                self._offset = int(h.nbytes + mrc.extended_header.nbytes)
            self._fd = os.open(tmp, os.O_WRONLY)
            self._stack.callback(os.close, self._fd)  # closed before the rename
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryoden-mrc-writer")
        self._open = True

    def _pwrite(self, data: memoryview, offset: int) -> None:
        while len(data):
            done = os.pwrite(self._fd, data[: self.CHUNK_BYTES], offset)
            data, offset = data[done:], offset + done

    def _check_writes(self, wait: bool) -> None:
        """Raise the error of a failed write; forget the writes done (all of them, waiting, if `wait`)."""
        while self._futures and (wait or self._futures[0].done()):
            self._futures.pop(0).result()

    def write(self, start: int, rows: np.ndarray) -> None:
        """Queue rows ``[start, start + len(rows))``: `start` is the first row not yet given.

        Parameters
        ----------
        start : int
        rows : ndarray of float32, (n, *shape[1:])
            Must stay unchanged until the file is closed (no copy is taken of C-ordered float32
            rows, e.g. a slab of the output array).

        Raises
        ------
        ValueError
            For rows out of order or of the wrong shape (the file is aborted).
        OSError
            If an earlier write failed (the file is aborted).
        """
        try:
            if not self._open:
                raise ValueError(f"{self.path}: the writer is closed")
            rows = np.ascontiguousarray(rows, dtype=np.float32)
            if start != self._next or rows.ndim != len(self.shape) or rows.shape[1:] != self.shape[1:] \
                    or start + rows.shape[0] > self.shape[0]:
                raise ValueError(f"{self.path}: expected rows from {self._next} of shape (n, "
                                 f"{', '.join(map(str, self.shape[1:]))}), got {rows.shape} from {start}")
            self._check_writes(wait=False)
            self._next += rows.shape[0]
            data = memoryview(rows.reshape(-1)).cast("B")
            self._futures.append(self._pool.submit(self._pwrite, data, self._offset + start * self._row_bytes))
        except BaseException as exc:
            self._fail(exc)
            raise

    def close(self) -> Path:
        """Wait for the writes and put the file in place; returns its path.

        Raises
        ------
        ValueError
            If not every row was given (the file is aborted).
        OSError
            If a write failed (the file is aborted).
        """
        if not self._open:
            raise ValueError(f"{self.path}: the writer is closed")
        try:
            self._check_writes(wait=True)
            if self._next != self.shape[0]:
                raise ValueError(f"{self.path}: {self._next} of {self.shape[0]} rows were given")
        except BaseException as exc:
            self._fail(exc)
            raise
        self._open = False
        self._pool.shutdown()
        self._stack.close()  # closes the file, then renames it into place
        return self.path

    def abort(self) -> None:
        """Stop writing and remove the temporary file; `path` is left as it was. Idempotent."""
        self._fail(_Aborted())

    def _fail(self, exc: BaseException) -> None:
        if not self._open:
            return
        self._open = False
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True)  # a write under way ends before its file goes
        self._futures.clear()
        self._stack.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> MrcRowWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def clip_header_stats(lo: float, hi: float, mean: float, std: float) -> tuple[float, float, float, float]:
    """``(min, max, mean, std)`` as an MRC header can hold them: the mean and std (accumulated in
    float64) clipped to the range of the header's float32 fields, so that data near 1e38 does
    not give an ``inf`` mean or rms that :func:`mrcfile.validate` rejects."""
    top = float(np.finfo(np.float32).max)
    return float(lo), float(hi), min(max(float(mean), -top), top), min(max(float(std), 0.0), top)


def _finite_header_stats(mrc) -> None:
    """Recompute the header's mean and rms in float64 (clipped to float32's range) when
    mrcfile's float32 statistics overflowed on finite data, so the header stays valid."""
    h = mrc.header
    if np.isfinite([h.dmin, h.dmax, h.dmean, h.rms]).all() or not np.isfinite([h.dmin, h.dmax]).all():
        return
    _, _, h.dmean, h.rms = clip_header_stats(h.dmin, h.dmax, np.mean(mrc.data, dtype=np.float64),
                                             np.std(mrc.data, dtype=np.float64))
