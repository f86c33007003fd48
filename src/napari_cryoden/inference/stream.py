"""Denoise an MRC file into another with bounded memory: read and write tile by tile.

Large inputs are memory-mapped (:func:`napari_cryoden.io.read_mrc`), and large outputs are
created as a memory-mapped float32 MRC file (:func:`mrcfile.new_mmap`) in the hidden temporary
file of :func:`napari_cryoden.io.atomic_path`, filled tile by tile by the engine and renamed into
place when complete. The resident pages of both mappings are let go after every batch of tiles
(:func:`~napari_cryoden.inference.tiling.release_pages`), so the peak memory is the model and a
few tiles, not the volume. Normalisation statistics come from a strided subsample. Small files
(below the same threshold) are denoised in memory and written by
:func:`napari_cryoden.io.write_mrc`, which gives the same file.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator, Sequence

import numpy as np

from ..io.atomic import atomic_path, same_file
from ..io.mrc import DEFAULT_MMAP_THRESHOLD, HeaderFields, clip_header_stats
from ..models.registry import DEFAULT_MODEL
from . import resample as resampling
from .tiling import release_pages
from .timing import Stages

__all__ = [
    "FileResult", "denoise_file", "denoised_name", "header_stats", "is_image_stack_path", "iter_denoise_file", "prefetch",
]

_COMPRESSED = (".gz", ".bz2")
#: Write an in-memory output row block by row block while a resident run brings it back from
#: the device, when its header statistics are known first (False: whole, at the end).
ROW_WRITES = True


def is_image_stack_path(path) -> bool:
    """True for ``.mrcs`` files (optionally ``.gz``/``.bz2``): stacks of 2D images (particles,
    sub-tilts, movies), which go to 2D models slice by slice and never to a 3D model."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] == ".mrcs"


@dataclass
class FileResult:
    """What :func:`iter_denoise_file` returns.

    Attributes
    ----------
    output : Path
    shape : tuple of int
    voxel_size : tuple of float
        Å, array axis order, copied from the input.
    model : str
    tiles : int
    streamed : bool
        True when the output was written tile by tile into a memory-mapped file.
    seconds : float
    info : dict
        The engine's ``info`` (plan, NaN/Inf replacement) and ``voxel_size_known``.
    """

    output: Path
    shape: tuple[int, ...]
    voxel_size: tuple[float, ...]
    model: str
    tiles: int
    streamed: bool
    seconds: float
    info: dict = field(default_factory=dict)


#: Bytes of output read at a time when computing the header statistics.
STATS_CHUNK_BYTES = 64 * 1024**2


def header_stats(data: np.ndarray, *, chunk_bytes: int | None = None) -> tuple[float, float, float, float]:
    """``(min, max, mean, std)`` of `data`, read in slabs along the first axis.

    Each slab's mean and sum of squared deviations are accumulated in float64 and merged
    pairwise (Chan, Golub & LeVeque 1979), so the result matches ``data.mean()``/``data.std()``
    without reading the array whole; a slab needs one temporary of its own size, and the pages
    of a memmap are let go after each slab. `chunk_bytes` defaults to :data:`STATS_CHUNK_BYTES`.
    Deviations are squared in float64 where float32 would overflow (values beyond 1e18), and the
    mean and std are clipped to float32's range, as the header stores them.
    """
    if data.ndim == 0 or data.size == 0:
        raise ValueError("no data to summarise")
    chunk = STATS_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    step = max(1, chunk // max(1, data[0].size * data.dtype.itemsize))
    lo, hi, n, mean, m2 = math.inf, -math.inf, 0, 0.0, 0.0
    for i in range(0, data.shape[0], step):
        slab = np.asarray(data[i : i + step])
        k = slab.size
        slab_mean = float(slab.mean(dtype=np.float64))
        slab_lo, slab_hi = float(slab.min()), float(slab.max())
        lo, hi = min(lo, slab_lo), max(hi, slab_hi)
        wide = slab.dtype == np.float64 or max(-slab_lo, slab_hi) > 1e18  # squares of float32 would overflow
        dev = np.subtract(slab, slab_mean, dtype=np.float64 if wide else np.float32)
        np.square(dev, out=dev)
        slab_m2 = float(dev.sum(dtype=np.float64))
        del dev, slab
        delta = slab_mean - mean
        total = n + k
        mean += delta * k / total
        m2 += slab_m2 + delta * delta * n * k / total
        n = total
        release_pages(data)
    return clip_header_stats(lo, hi, mean, math.sqrt(m2 / n))


def prefetch(path) -> bool:
    """Ask the kernel to start reading `path` into the page cache in the background
    (``posix_fadvise(POSIX_FADV_WILLNEED)``), so that a batch reads file n+1 from the disk while
    it denoises file n. Returns False where that is not possible (no such call, an unreadable
    file); never raises.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _packages():
    """The ``io`` and ``inference`` packages, looked up when a file is processed so that a reader
    or an engine substituted there (a wrapper, a test double) is the one used."""
    from .. import inference, io

    return io, inference


def denoised_name(src) -> str:
    """The name of a denoised file in a batch's output folder: ``<stem>_denoised.mrc``
    (``.mrcs`` for a stack of 2D images), the stem without ``.gz``/``.bz2`` and the MRC extension.

    Examples
    --------
    >>> denoised_name("tomos/TS_01.rec.gz"), denoised_name("particles.mrcs"), denoised_name("odd.name")
    ('TS_01_denoised.mrc', 'particles_denoised.mrcs', 'odd.name_denoised.mrc')
    """
    from ..io.mrc import MRC_EXTENSIONS

    name = Path(src).name
    for comp in _COMPRESSED:
        if name.lower().endswith(comp):
            name = name[: -len(comp)]
    stem, ext = Path(name).stem, Path(name).suffix.lower()
    if ext not in MRC_EXTENSIONS:
        stem = name
    return f"{stem}_denoised{'.mrcs' if ext == '.mrcs' else '.mrc'}"


def check_output(src: Path, dst: Path, *, overwrite: bool) -> None:
    """Refuse an output that is the input (ValueError) or that exists without `overwrite`
    (FileExistsError)."""
    if dst.exists() and same_file(src, dst):
        raise ValueError(f"{dst}: refusing to write the output over the input file")
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise FileExistsError(f"{dst}: exists; pass overwrite to replace it")


def streams(dst: Path, n_voxels: int, mmap_threshold: int) -> bool:
    """Whether an output of `n_voxels` float32 voxels is written tile by tile into a memory map
    (not for compressed outputs, which are written whole)."""
    compressed = any(s.lower() in _COMPRESSED for s in dst.suffixes[-1:])
    return not compressed and n_voxels * 4 >= mmap_threshold


def reserve_space(path: Path, name: Path | None = None) -> None:
    """Allocate the disk blocks of the whole file `path` (its current size) before it is written
    through a memory map.

    A memory-mapped write to a sparse file on a full disk is a ``SIGBUS`` that kills the process
    with no message and leaves the file behind; with the blocks reserved, a full disk is an
    ``OSError`` (``ENOSPC``) here, before any data is computed.

    Raises
    ------
    OSError
        ``ENOSPC`` (or ``EFBIG`` beyond the file size limit) naming `name` (default `path`), with
        the bytes needed.
    """
    import errno
    import os

    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no fallocate here: writing will tell
            return
        raise OSError(exc.errno, f"{exc.strerror} (the output needs {size / 2**20:.1f} MiB)",
                      str(name if name is not None else path)) from None
    finally:
        os.close(fd)


def while_file_whole(path: Path, steps: Generator):
    """Run the generator `steps` (and return its value) while the memory-mapped file `path`
    keeps its size: before each resumption the open file is checked, so a file truncated by
    another process stops the run with an OSError instead of a bus error (SIGBUS) at the next
    read past its new end. A truncation in the middle of a batch of tiles is not caught."""
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        value = None
        while True:
            now = os.fstat(fd).st_size
            if now < size:
                raise OSError(f"{path}: the input was truncated by another program while being read "
                              f"({now} of {size} bytes left); nothing was written")
            try:
                value = yield steps.send(value)
            except StopIteration as stop:
                return stop.value
    finally:
        os.close(fd)
        steps.close()


def write_denoised(
    src: Path, dst: Path, shape: tuple[int, ...], voxel_size, label: str, fill, *, overwrite: bool, streamed: bool,
    header=None, info: dict | None = None, stages: Stages | None = None,
) -> Generator[tuple[int, int], None, None]:
    """Write the float32 output `dst` atomically while `fill(out, on_rows)` computes it, yielding
    its progress (a streamed output's disk space is reserved first, :func:`reserve_space`).

    `fill(out, on_rows)` is a generator that writes the denoised volume into `out` and returns
    it; given None (compressed outputs) it allocates the array itself. It may call
    ``on_rows(start, stop)`` when rows of `out` along its first axis are final, in order (the
    `on_rows` of :func:`~napari_cryoden.inference.iter_denoise`). Streamed outputs are
    memory-mapped MRC files in the temporary file of :func:`~napari_cryoden.io.atomic_path`,
    finished with the voxel size, the label and the header statistics; others go through
    :func:`~napari_cryoden.io.write_mrc`, which never writes over `src`. `header` (an
    :class:`~napari_cryoden.io.mrc.HeaderFields`) carries the input's header fields into both;
    `voxel_size` None keeps the header's own. Header statistics that the run left in
    ``info["header_stats"]`` (a resident run takes them on the device) are written as they are,
    instead of being computed from the output again; when they are known at the first
    ``on_rows``, an uncompressed in-memory output is written row block by row block on a
    background thread while the next rows come back from the device
    (:class:`~napari_cryoden.io.mrc.MrcRowWriter`).
    """
    stages = stages or Stages()
    info = {} if info is None else info
    if not streamed:
        from ..io import MrcRowWriter, write_mrc

        rows = ROW_WRITES and not any(s.lower() in _COMPRESSED for s in dst.suffixes[-1:])
        out = np.empty(tuple(shape), dtype=np.float32) if rows else None
        writer = None

        def on_rows(start: int, stop: int) -> None:
            nonlocal writer
            if writer is None and info.get("header_stats") is not None:
                writer = MrcRowWriter(dst, tuple(shape), voxel_size, info["header_stats"], overwrite=overwrite,
                                      protect=(src,), label=label, header=header)
            if writer is not None:
                writer.write(start, out[start:stop])

        try:
            result = yield from fill(out, on_rows if rows else None)
            with stages("write"):
                if writer is not None:
                    writer.close()
                else:
                    write_mrc(dst, result, voxel_size, overwrite=overwrite, protect=(src,), label=label,
                              header=header, stats=info.get("header_stats"))
        finally:
            if writer is not None:  # after an error or a cancel the file goes; after close() a no-op
                writer.abort()
        return
    import mrcfile

    from ..io.mrc import finish_header

    ext, exttyp = header.extended_for(tuple(shape)) if header is not None else (None, None)
    with atomic_path(dst, overwrite=overwrite) as tmp:
        mrc = mrcfile.new_mmap(tmp, shape=tuple(shape), mrc_mode=2, overwrite=True, extended_header=ext,
                               exttyp=exttyp)
        try:
            reserve_space(tmp, dst)
            yield from fill(mrc.data, None)
            with stages("write"):
                finish_header(mrc, tuple(shape), voxel_size, label, header)
                h = mrc.header
                h.dmin, h.dmax, h.dmean, h.rms = info.get("header_stats") or header_stats(mrc.data)
                mrc.flush()
        finally:
            with stages("write"):
                mrc.close()


def iter_denoise_file(
    input_path,
    output_path,
    model=DEFAULT_MODEL,
    *,
    tile: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    nonfinite: str = "replace",
    overwrite: bool = False,
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    memory_bytes: int | None = None,
    image_stack: bool | None = None,
    label: str | None = None,
    info: dict | None = None,
    resident: bool | None = None,
    timings: dict | None = None,
    resample: str = "auto",
    voxel_size: float | None = None,
) -> Generator[tuple[int, int], None, FileResult]:
    """Denoise an MRC file into a float32 MRC file, yielding ``(tiles_done, tiles_total)``.

    The output keeps the input's header fields (origin, start indices, labels plus one, the
    extended header; :class:`~napari_cryoden.io.mrc.HeaderFields`). When the input's voxel size
    is far from the model's, the input is Fourier-resampled to it and back
    (:mod:`~napari_cryoden.inference.resample`).

    Parameters
    ----------
    input_path, output_path : path-like
        The output is written atomically (temporary file, renamed when complete) and is never
        the input. A ``.gz``/``.bz2`` output is compressed (and then assembled in memory).
    model : str, LoadedModel or torch.nn.Module
        As for :func:`~napari_cryoden.inference.denoise`.
    tile, overlap, batch_size, device, precision, nonfinite, memory_bytes
        As for :func:`~napari_cryoden.inference.denoise` (automatic when None).
    overwrite : bool, default=False
        Replace an existing output (never the input).
    mmap_threshold : int, default=256 MiB
        Inputs of at least this many bytes are memory-mapped, and float32 outputs of at least
        this many bytes are streamed tile by tile into a memory-mapped file; 0 streams always.
    image_stack : bool, optional
        The input is a stack of 2D images; default: the file name ends in ``.mrcs``.
    label : str, optional
        Added to the output header's labels (default ``"cryoden <model name>"``).
    info : dict, optional
        Filled in as by the engine, plus ``voxel_size`` (the input's, Å), ``voxel_size_known``,
        ``shape``, ``streamed``, ``model``, ``resample_plan`` (a
        :class:`~napari_cryoden.inference.resample.ResamplePlan`) and ``read_notes`` (what the
        reader tolerated) before the first report.
    resample : {"auto", "off", "binned"}, default="auto"
        ``"auto"``: Fourier-resample to the model card's voxel size and back when they differ by
        more than 20 %; ``"binned"``: write the result at the model's voxel size; ``"off"``: never.
    voxel_size : float, optional
        Å per pixel, overriding the header's (and written to the output's header).
    resident : bool, optional
        Hold the whole volume on the device (default: on CUDA when it fits); see
        :func:`~napari_cryoden.inference.iter_denoise`. On CUDA (unless `resident` is False) an
        uncompressed input is memory-mapped whatever its size, so it goes from the page cache to
        the GPU in slabs, with no whole copy in host memory.
    timings : dict, optional
        Receives the seconds per stage (:data:`~napari_cryoden.inference.timing.STAGES`),
        reading and writing the files included; for benchmarks.

    Returns
    -------
    FileResult

    Raises
    ------
    ValueError
        If the output is the input, or for bad input or options (``MrcError`` and
        ``ModelError`` are ValueErrors).
    FileExistsError
        If the output exists and `overwrite` is False.
    OSError
        If the disk has no room for a streamed output (``ENOSPC``, found before any tile is
        computed: :func:`reserve_space`); nothing is left behind.
    """
    start = time.perf_counter()
    io, inference = _packages()
    from .engine import as_model

    src, dst = Path(input_path), Path(output_path)
    check_output(src, dst, overwrite=overwrite)
    stages = Stages(timings)
    # On CUDA the input is memory-mapped whatever its size: it goes from the page cache to the
    # GPU in slabs, with no whole copy on the host (a resident run).
    on_gpu = resident is not False and device != "cpu" and inference.resolve_device(device).type == "cuda"
    with stages("read"):
        volume = io.read_mrc(src, mmap_threshold=0 if on_gpu else mmap_threshold)
    lm = as_model(model)
    data = volume.data
    stack = is_image_stack_path(src) if image_stack is None else bool(image_stack)
    in_vs, known = resampling.input_voxel_size(volume.voxel_size, volume.metadata.get("voxel_size_known", True),
                                               voxel_size, image_stack=stack)
    plan = resampling.plan_resample(data.shape, in_vs, lm, mode=resample, known=known, image_stack=stack)
    streamed = streams(dst, math.prod(plan.output_shape), mmap_threshold)
    info = {} if info is None else info
    info.update(voxel_size=in_vs, voxel_size_known=plan.known, shape=tuple(data.shape), streamed=streamed,
                model=lm.name, resample_plan=plan, read_notes=list(volume.metadata.get("notes", ())))
    label = label if label is not None else f"cryoden {lm.name}"
    kwargs = dict(tile=tile, overlap=overlap, batch_size=batch_size, device=device, precision=precision,
                  nonfinite=nonfinite, info=info, image_stack=stack, memory_bytes=memory_bytes, resident=resident,
                  timings=timings)

    def fill(out, on_rows):
        steps = resampling.iter_denoise_resampled(data, lm, plan, out=out, on_rows=on_rows, **kwargs)
        if volume.metadata.get("memory_mapped"):
            steps = while_file_whole(src, steps)
        result = yield from steps
        if plan.resampled and plan.mode != "binned":
            info.pop("header_stats", None)  # those of the model's grid, not of the output
        return result

    out_vs = plan.output_voxel_size if plan.known else None  # None: the header's own, never an invented 1 Å
    yield from write_denoised(src, dst, plan.output_shape, out_vs, label, fill, overwrite=overwrite,
                              streamed=streamed, header=HeaderFields.from_metadata(volume.metadata), info=info,
                              stages=stages)
    return FileResult(
        output=dst, shape=plan.output_shape, voxel_size=plan.output_voxel_size, model=lm.name,
        tiles=int(info.get("tiles", 0)), streamed=streamed, seconds=time.perf_counter() - start, info=info,
    )


def denoise_file(
    input_path,
    output_path,
    model=DEFAULT_MODEL,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **kwargs,
) -> FileResult:
    """Denoise an MRC file into a float32 MRC file with bounded memory.

    Keyword arguments are those of :func:`iter_denoise_file`; `progress` and `cancel` are as for
    :func:`~napari_cryoden.inference.denoise`. Peak memory for a large file is the model, the
    normalisation subsample (at most 4 Mi voxels) and a few tiles: both files are memory-mapped
    and their pages let go after every batch of tiles.

    Returns
    -------
    FileResult

    Raises
    ------
    ValueError, FileExistsError
        See :func:`iter_denoise_file`.
    Cancelled
        If `cancel` returned True; no output (and no temporary file) is left.

    Examples
    --------
    >>> from napari_cryoden.inference.stream import denoise_file
    >>> denoise_file("tomo.mrc", "tomo_denoised.mrc", device="cpu")  # doctest: +SKIP
    """
    from .engine import drive

    return drive(iter_denoise_file(input_path, output_path, model, **kwargs), progress, cancel)
