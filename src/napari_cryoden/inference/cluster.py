"""Denoise on a dask.distributed cluster: many files at once, or the tiles of one big tomogram.

Two ways to use the workers of a cluster (:func:`connect` opens one):

* :func:`map_denoise_files`: one task per input file; each worker runs the single-file path
  (:func:`napari_cryoden.inference.stream.denoise_file`), which writes its output atomically, and
  the results (or errors) come back as they complete, so one failed file does not stop the others.
* :func:`split_denoise_file`: one tomogram, its tiles spread over the workers. One worker reads
  the file and makes the plan (tile geometry, NaN/Inf count, normalisation statistics) as
  :func:`~napari_cryoden.inference.iter_denoise` does; every task then takes a run of whole
  batches of tiles, reads its input windows from the (memory-mapped) file itself and returns the
  output cores (:func:`~napari_cryoden.inference.engine.denoise_tiles`). The client writes the
  cores into the output (a memory-mapped file for large outputs, as
  :mod:`~napari_cryoden.inference.stream` does) and renames it into place when complete. The
  result is bit-identical to one process running the same plan on the same device and precision.

Workers must see the input files under the same paths as the client (a shared file system);
inputs are passed as absolute paths. The model is loaded by the client and sent to every
worker once, so all workers use the same weights.

``distributed`` is optional (``pip install "napari-cryoden[cluster]"``) and imported only when a
function here runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np

from ..io.atomic import remove_stale_parts
from ..io.mrc import DEFAULT_MMAP_THRESHOLD
from ..models.registry import DEFAULT_MODEL
from .stream import FileResult, check_output, is_image_stack_path, streams, write_denoised
from .tiling import release_pages

__all__ = [
    "INSTALL_HINT", "FileOutcome", "connect", "default_local_workers", "iter_split_denoise_file",
    "local_gpus", "map_denoise_files", "parse_scheduler", "require_distributed", "split_denoise_file",
]

log = logging.getLogger(__name__)

#: How to get the optional dependency, quoted in the error when it is missing.
INSTALL_HINT = 'pip install "napari-cryoden[cluster]"'
#: Seconds to wait for a first worker to join a remote scheduler.
WAIT_FOR_WORKERS_S = 60.0
#: Tasks per worker thread when one tomogram is split (a few, so fast workers take more).
TASKS_PER_THREAD = 4
#: Most output bytes one tile task sends back.
MAX_TASK_BYTES = 256 * 1024**2
#: Seconds between two looks of a running file task at the run's cancel flag.
CANCEL_POLL_S = 0.5
#: Seconds the client waits, after an interrupt, for running file tasks to stop and clean up.
CANCEL_WAIT_S = 10.0

_ADDRESS = re.compile(r"^([a-z][a-z0-9+.-]*://\S+|[A-Za-z0-9_.-]+:\d+)$")


def require_distributed():
    """The ``distributed`` package, or ImportError with one line saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise ImportError(f"cluster runs need dask.distributed, which is not installed: {INSTALL_HINT}") from None
    return distributed


def default_local_workers() -> int:
    """Worker processes of a default local cluster: one per CPU core, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_gpus(device: str | None, n_workers: int | None) -> list[str] | None:
    """The GPU each worker of a local cluster sees, or None for a cluster of CPU workers.

    With ``device`` "auto" or "cuda" and more than one CUDA GPU visible here, a local cluster
    gets one worker per GPU (or `n_workers`, the GPUs dealt round-robin), each seeing only its
    GPU through ``CUDA_VISIBLE_DEVICES``: PyTorch's ``cuda`` in that worker is that GPU. The
    GPUs are this process's visible ones (``CUDA_VISIBLE_DEVICES`` here, if set, is honoured).

    Returns
    -------
    list of str or None
        One ``CUDA_VISIBLE_DEVICES`` value per worker.
    """
    if device not in ("auto", "cuda"):
        return None
    n_gpus = _cuda_device_count()
    if n_gpus < 2:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()][:n_gpus] if visible else []
    if len(ids) != n_gpus:
        ids = [str(i) for i in range(n_gpus)]
    n = n_gpus if n_workers is None else int(n_workers)
    return [ids[i % n_gpus] for i in range(n)]


def parse_scheduler(scheduler: str | None) -> str:
    """``"local"`` for None, an empty string or ``"local"``; else `scheduler` itself, stripped, if
    it is an address (``scheme://host:port`` or ``host:port``).

    Raises
    ------
    ValueError
        For anything else (one line).
    """
    address = "local" if scheduler is None or not str(scheduler).strip() else str(scheduler).strip()
    if address != "local" and not _ADDRESS.match(address):
        raise ValueError(f"scheduler must be 'local' or an address like tcp://host:8786, got {address!r}")
    return address


@contextlib.contextmanager
def connect(
    scheduler: str | None = "local",
    n_workers: int | None = None,
    *,
    threads_per_worker: int = 1,
    wait_s: float = WAIT_FOR_WORKERS_S,
    device: str | None = None,
) -> Iterator[object]:
    """A :class:`distributed.Client` for a local cluster of worker processes or a running scheduler.

    Closes what it opened on exit (the client, and a local cluster with its workers).

    Parameters
    ----------
    scheduler : str or None, default="local"
        ``"local"`` (or None): start a :class:`distributed.LocalCluster` of worker processes on
        this machine. Otherwise the address of a running scheduler, e.g. ``"tcp://host:8786"``.
    n_workers : int, optional
        Worker processes of a local cluster; default :func:`default_local_workers`. Each worker
        lets PyTorch use ``cores // (n_workers * threads_per_worker)`` threads.
    threads_per_worker : int, default=1
        Tasks one local worker runs at the same time.
    wait_s : float, default=60
        Seconds to wait for a first worker to join a remote scheduler.
    device : str, optional
        The device the run will ask for. For "auto" or "cuda" on a machine with several GPUs, a
        local cluster has one worker per GPU, each seeing its own (:func:`local_gpus`); a remote
        cluster's workers are set up by whoever starts them (``CUDA_VISIBLE_DEVICES=i
        dask worker ...``, one per GPU).

    Yields
    ------
    distributed.Client
        Not made the default dask client (other dask work in the process is not redirected).
        Local workers ignore Ctrl-C (the client stops them), and are started with the "spawn"
        method: a script that starts a local cluster needs ``if __name__ == "__main__":``.

    Raises
    ------
    ImportError
        If ``distributed`` is not installed (one line: how to install it).
    ValueError
        For an address that is not ``local``, ``scheme://host:port`` or ``host:port``, or
        `n_workers` with a remote scheduler, or a count below 1.
    OSError
        If the scheduler cannot be reached; TimeoutError if no worker joins in `wait_s`.
    """
    address = parse_scheduler(scheduler)
    if address != "local" and n_workers is not None:
        raise ValueError("the number of workers is set for a local cluster only; a remote scheduler has its own")
    for what, value in (("number of workers", n_workers), ("threads per worker", threads_per_worker)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{what} must be at least 1, got {value}")
    distributed = require_distributed()
    if address == "local":
        n = default_local_workers() if n_workers is None else int(n_workers)
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        gpus = local_gpus(device, n_workers)
        n = len(gpus) if gpus else n
        torch_threads = str(max(1, cpus // (n * int(threads_per_worker))))
        env = {"OMP_NUM_THREADS": torch_threads, "MKL_NUM_THREADS": torch_threads}
        if gpus:
            cluster = _gpu_cluster(distributed, gpus, env)
        else:
            cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=int(threads_per_worker), processes=True,
                dashboard_address="127.0.0.1:0",  # any free port: never the "port 8787 is in use" warning
                silence_logs=logging.CRITICAL,  # task errors come back to the client, which reports them
                env=env,
            )
        try:
            with distributed.Client(cluster, set_as_default=False) as client:
                client.run(_ignore_interrupts)
                yield client
        finally:
            cluster.close()
        return
    with distributed.Client(address, set_as_default=False) as client:
        try:
            client.wait_for_workers(1, timeout=wait_s)
        except TimeoutError:
            raise TimeoutError(f"no worker joined the scheduler at {address} within {wait_s:g} s") from None
        yield client


def _gpu_cluster(distributed, gpus: list[str], env: dict):
    """A local cluster of one single-threaded worker process per entry of `gpus`, each with
    ``CUDA_VISIBLE_DEVICES`` set to it (a :class:`distributed.SpecCluster` of nannies: a
    :class:`distributed.LocalCluster` gives every worker the same environment)."""
    workers = {
        f"gpu{i}-{gpu}": {"cls": distributed.Nanny,
                          "options": {"nthreads": 1, "env": {**env, "CUDA_VISIBLE_DEVICES": gpu}}}
        for i, gpu in enumerate(gpus)
    }
    scheduler = {"cls": distributed.Scheduler, "options": {"dashboard_address": "127.0.0.1:0"}}
    # task errors come back to the client, which reports them
    return distributed.SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.CRITICAL)


def _ignore_interrupts() -> bool:
    """On a local worker: ignore Ctrl-C, which the terminal sends to the workers too; the client
    stops them (and their tasks clean up) instead of each printing a traceback."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread of the worker process
        return False
    return True


def _cluster_shape(client) -> tuple[int, int]:
    """``(most worker threads on one host, worker threads in all)``."""
    per_host: Counter = Counter()
    nthreads = client.nthreads()
    for address, n in nthreads.items():
        per_host[urlsplit(address).hostname or address] += int(n)
    return max(per_host.values(), default=1), max(1, sum(int(n) for n in nthreads.values()))


def _memory_share(device: str, share: int) -> int | None:
    """Memory one forward pass may use on a worker CPU shared by `share` task threads (None: the
    engine's own default, for GPUs and unshared CPUs)."""
    from ..device import memory_budget, resolve_device

    dev = resolve_device(device)
    if dev.type != "cpu" or share <= 1:
        return None
    return memory_budget(dev) // share


def _scatter_model(client, model):
    """Load `model` here and send it to every worker once; the future stands for it in tasks."""
    from .engine import as_model

    lm = as_model(model)
    return lm, client.scatter(lm, broadcast=True, hash=False)


# --------------------------------------------------------------------------------------------
# Many files: one task per file


@dataclass
class FileOutcome:
    """One file of :func:`map_denoise_files`: its result, or the error it raised on the worker.

    Attributes
    ----------
    input, output : Path
        As given.
    result : FileResult or None
        None when the file failed.
    error : BaseException or None
        The exception raised on the worker (its type kept: ValueError for bad input, OSError,
        MemoryError, RuntimeError...); None on success.
    """

    input: Path
    output: Path
    result: FileResult | None = None
    error: BaseException | None = None


def _cancel_poller(event_name: str | None) -> Callable[[], bool] | None:
    """On a worker: a callable that says whether the client set the run's cancel event (asked
    at most every :data:`CANCEL_POLL_S` seconds)."""
    if event_name is None:
        return None
    event = require_distributed().Event(event_name)
    state = {"at": -math.inf, "set": False}

    def cancelled() -> bool:
        now = time.monotonic()
        if not state["set"] and now - state["at"] >= CANCEL_POLL_S:
            state["at"] = now
            state["set"] = bool(event.is_set())
        return state["set"]

    return cancelled


def _file_task(src: str, dst: str, model, options: dict, share: int, event_name: str | None) -> FileResult:
    """Worker side of :func:`map_denoise_files`: denoise one file into another."""
    from . import stream

    kwargs = dict(options)
    if kwargs.get("memory_bytes") is None:
        kwargs["memory_bytes"] = _memory_share(kwargs.get("device", "auto"), share)
    return stream.denoise_file(src, dst, model, cancel=_cancel_poller(event_name), **kwargs)


def _as_seen_by_user(exc: BaseException, src: Path, dst: Path) -> BaseException:
    """`exc` with the absolute paths given to the worker put back as the user wrote them."""
    if not exc.args or not isinstance(exc.args[0], str):
        return exc
    text = exc.args[0]
    for path in (src, dst):
        absolute = str(path.absolute())
        if absolute != str(path):
            text = text.replace(absolute, str(path))
    if text != exc.args[0]:
        with contextlib.suppress(Exception):
            exc.args = (text, *exc.args[1:])
    return exc


def map_denoise_files(
    client,
    jobs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    model=DEFAULT_MODEL,
    **options,
) -> Generator[FileOutcome, None, None]:
    """Denoise many MRC files on the workers of `client`, one task per file; yield each
    :class:`FileOutcome` as its task completes (in no fixed order).

    Parameters
    ----------
    client : distributed.Client
    jobs : sequence of (input path, output path)
        Inputs must be readable by the workers under the same (absolute) path.
    model : str, LoadedModel or torch.nn.Module
        Loaded here and sent to each worker once.
    **options
        Keyword arguments of :func:`~napari_cryoden.inference.stream.iter_denoise_file` (`tile`,
        `overlap`, `batch_size`, `device`, `precision`, `nonfinite`, `overwrite`,
        `memory_bytes`, ...). `device` and `precision` "auto" are resolved on each worker. An
        unset `memory_bytes` on a CPU is the engine's default divided by the task threads of the
        worker's host.

    Yields
    ------
    FileOutcome
        One per job. A failed file does not stop the others.

    Notes
    -----
    Closing the generator early (an interrupt, ``break``) sets a cancel flag that running tasks
    look at before each batch of tiles: they stop and remove their temporary files (waiting up
    to :data:`CANCEL_WAIT_S` seconds); tasks not started are cancelled. Outputs already complete
    stay.
    """
    distributed = require_distributed()
    _lm, model_ref = _scatter_model(client, model)
    share, _threads = _cluster_shape(client)
    event_name = f"cryoden-cancel-{uuid.uuid4().hex}"
    pending = {}
    for src, dst in jobs:
        src, dst = Path(src), Path(dst)
        future = client.submit(_file_task, str(src.absolute()), str(dst.absolute()), model_ref, options, share,
                               event_name, pure=False)
        pending[future] = (src, dst)
    try:
        for future in distributed.as_completed(list(pending), loop=client.loop):
            src, dst = pending.pop(future)
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who classifies it
                outcome = FileOutcome(src, dst, error=_as_seen_by_user(exc, src, dst))
            else:
                outcome = FileOutcome(src, dst, result=dataclasses.replace(result, output=dst))
            del future
            yield outcome
    finally:
        if pending:
            _stop_file_tasks(distributed, client, event_name, pending)


def _stop_file_tasks(distributed, client, event_name: str, pending: dict) -> None:
    """Stop the file tasks of an interrupted :func:`map_denoise_files` and clean up after them."""
    futures = list(pending)
    event = distributed.Event(event_name, client=client)
    try:
        event.set()
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline and not all(f.done() for f in futures):
            time.sleep(0.05)
    except Exception as exc:  # noqa: BLE001 - cleaning up after an interrupt must not fail
        log.debug("while stopping the file tasks: %s", exc)
    finally:
        with contextlib.suppress(Exception):
            client.cancel(futures)
        with contextlib.suppress(Exception):
            event.clear()
    for _src, dst in pending.values():  # temporary files of workers that died meanwhile
        remove_stale_parts(dst)


# --------------------------------------------------------------------------------------------
# One tomogram: its tiles spread over the workers

_VOLUMES: dict = {}
_VOLUMES_LOCK = threading.Lock()


def _open_input(path: str):
    """On a worker: the input, memory-mapped (read once per worker and file version)."""
    from .. import io

    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    with _VOLUMES_LOCK:
        volume = _VOLUMES.get(key)
        if volume is None:
            _VOLUMES.clear()  # one input at a time
            volume = _VOLUMES[key] = io.read_mrc(path, mmap_threshold=0)
    return volume


def _plan_task(path: str, model, options: dict, share: int) -> dict:
    """Worker side of :func:`iter_split_denoise_file`: what :func:`iter_denoise` decides before
    its first tile (checks, plan, NaN/Inf count, normalisation statistics), for the whole file."""
    from .. import io
    from ..io.mrc import HeaderFields
    from .engine import as_model, prepare_run, resolve_device
    from .resample import input_voxel_size, plan_resample

    volume = io.read_mrc(path, mmap_threshold=options["mmap_threshold"])  # as the single-file path reads it
    data = volume.data
    voxel_size, known = input_voxel_size(volume.voxel_size, volume.metadata.get("voxel_size_known", True),
                                         options["voxel_size"], image_stack=options["image_stack"])
    resampling = plan_resample(data.shape, voxel_size, as_model(model), mode=options["resample"], known=known,
                               image_stack=options["image_stack"])
    seen = dict(voxel_size=voxel_size, voxel_size_known=resampling.known, resample_plan=resampling,
                read_notes=list(volume.metadata.get("notes", ())), header=HeaderFields.from_metadata(volume.metadata))
    if resampling.resampled:  # the whole file goes to one worker (see iter_split_denoise_file)
        return seen
    memory_bytes = options["memory_bytes"]
    if memory_bytes is None and options["tile"] is None:
        memory_bytes = _memory_share(str(resolve_device(options["device"])), share)
    run = prepare_run(data, as_model(model), tile=options["tile"], overlap=options["overlap"],
                      device=options["device"], precision=options["precision"], batch_size=options["batch_size"],
                      nonfinite=options["nonfinite"], image_stack=options["image_stack"], memory_bytes=memory_bytes)
    plan, dev, prec, n_bad, center, scale = run.plan, run.device, run.precision, run.n_bad, run.center, run.scale
    return dict(plan=plan, stats=(center, scale), nonfinite=n_bad, device=str(dev), precision=prec,
                shape=tuple(data.shape), **seen)


def _tile_task(path: str, model, plan, tiles, stats, device: str, precision: str, replace: bool):
    """Worker side of :func:`iter_split_denoise_file`: a run of whole batches of tiles."""
    from .engine import denoise_tiles

    data = _open_input(path).data
    try:
        return denoise_tiles(data, model, plan, tiles, stats, device=device, precision=precision,
                             replace_nonfinite=replace)
    finally:
        release_pages(data)


def _task_groups(n_tiles: int, batch: int, n_tasks: int, max_batches: int) -> list[range]:
    """Consecutive runs of whole batches of tiles, about `n_tasks` of them, at most `max_batches`
    batches each."""
    n_batches = -(-n_tiles // batch)
    per = max(1, min(max_batches, -(-n_batches // max(1, n_tasks))))
    step = per * batch
    return [range(i, min(i + step, n_tiles)) for i in range(0, n_tiles, step)]


def iter_split_denoise_file(
    client,
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
    tasks_per_thread: int = TASKS_PER_THREAD,
    resample: str = "auto",
    voxel_size: float | None = None,
) -> Generator[tuple[int, int], None, FileResult]:
    """Denoise one MRC file with its tiles spread over the workers of `client`, yielding
    ``(tiles_done, tiles_total)``.

    Same parameters, output file and result as
    :func:`~napari_cryoden.inference.stream.iter_denoise_file`, plus `client` and
    `tasks_per_thread` (tile tasks per worker thread; each task is a run of whole batches).
    `device` and `precision` "auto" and the automatic tile geometry are decided by the worker
    that makes the plan; an unset `memory_bytes` on a CPU is divided by the task threads of that
    worker's host. With the same tile, overlap, batch, device and precision, the output is
    bit-identical to :func:`~napari_cryoden.inference.stream.denoise_file`'s. An input that is
    resampled to the model's voxel size (`resample`, `voxel_size`) is denoised whole by one
    worker, as one task (reported as one tile).

    Raises
    ------
    ValueError
        If the output is the input, or for bad input or options.
    FileExistsError
        If the output exists and `overwrite` is False.
    ImportError
        If ``distributed`` is not installed.
    """
    start = time.perf_counter()
    distributed = require_distributed()
    from .tiling import plan_tiles

    src, dst = Path(input_path), Path(output_path)
    check_output(src, dst, overwrite=overwrite)
    lm, model_ref = _scatter_model(client, model)
    share, threads = _cluster_shape(client)
    stack = is_image_stack_path(src) if image_stack is None else bool(image_stack)
    options = dict(tile=tile, overlap=overlap, batch_size=batch_size, device=device, precision=precision,
                   nonfinite=nonfinite, memory_bytes=memory_bytes, image_stack=stack, mmap_threshold=mmap_threshold,
                   resample=resample, voxel_size=voxel_size)
    path = str(src.absolute())
    try:
        made = client.submit(_plan_task, path, model_ref, options, share, pure=False).result()
    except Exception as exc:  # noqa: BLE001 - re-raised with the paths as the user wrote them
        raise _as_seen_by_user(exc, src, dst)
    info = {} if info is None else info
    if made["resample_plan"].resampled:
        info.update({k: made[k] for k in ("voxel_size", "voxel_size_known", "resample_plan", "read_notes")})
        return (yield from _whole_file(client, src, dst, model_ref, dict(options, overwrite=overwrite, label=label),
                                       share, info))
    plan, (center, scale), n_bad = made["plan"], made["stats"], made["nonfinite"]
    shape, g = made["shape"], made["plan"].geometry
    tiles = plan_tiles(plan.shape, g.tile, g.overlap, g.stride)
    streamed = streams(dst, math.prod(shape), mmap_threshold)
    info.update(voxel_size=made["voxel_size"], voxel_size_known=made["voxel_size_known"], shape=shape,
                streamed=streamed, model=lm.name, resample_plan=made["resample_plan"], read_notes=made["read_notes"])
    import torch

    from .engine import RunSetup

    run = RunSetup(plan, torch.device(made["device"]), made["precision"], n_bad, center, scale)
    run.report(nonfinite, len(tiles), info)
    label = label if label is not None else f"cryoden {lm.name}"
    core_bytes = 4 * math.prod(g.tile) * g.batch
    groups = _task_groups(len(tiles), g.batch, threads * max(1, int(tasks_per_thread)),
                          max(1, MAX_TASK_BYTES // max(1, core_bytes)))

    def gather(out: np.ndarray | None, on_rows=None) -> Generator[tuple[int, int], None, np.ndarray]:
        # `on_rows` is not called: the cores come back in any order, and the whole file is written at the end
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        out_view = out if plan.mode != "image" else out[None]
        pending = {}
        for group in groups:
            future = client.submit(_tile_task, path, model_ref, plan, tiles[group.start : group.stop], (center, scale),
                                   made["device"], made["precision"], bool(n_bad), pure=False)
            pending[future] = len(group)
        try:
            done, total = 0, len(tiles)
            yield done, total
            for future in distributed.as_completed(list(pending), loop=client.loop):
                for where, core in future.result():
                    out_view[where] = core
                release_pages(out)
                done += pending.pop(future)
                del future
                yield done, total
        finally:
            if pending:
                client.cancel(list(pending))
        return out

    yield from write_denoised(src, dst, shape, made["voxel_size"] if made["voxel_size_known"] else None, label,
                              gather, overwrite=overwrite, streamed=streamed, header=made["header"])
    return FileResult(
        output=dst, shape=shape, voxel_size=made["voxel_size"], model=lm.name, tiles=len(tiles), streamed=streamed,
        seconds=time.perf_counter() - start, info=info,
    )


def _whole_file(client, src: Path, dst: Path, model_ref, options: dict, share: int,
                info: dict) -> Generator[tuple[int, int], None, FileResult]:
    """One worker denoises the whole file (resampled inputs); reported as one tile."""
    options = {k: v for k, v in options.items() if k != "memory_bytes" or v is not None}
    future = client.submit(_file_task, str(src.absolute()), str(dst.absolute()), model_ref, options, share, None,
                           pure=False)
    try:
        yield 0, 1
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - re-raised with the paths as the user wrote them
            raise _as_seen_by_user(exc, src, dst)
    finally:
        if not future.done():
            client.cancel([future])
    info.update(result.info)
    yield 1, 1
    return dataclasses.replace(result, output=dst, tiles=1)


def split_denoise_file(
    client,
    input_path,
    output_path,
    model=DEFAULT_MODEL,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **kwargs,
) -> FileResult:
    """Denoise one MRC file with its tiles spread over the workers of `client`.

    Keyword arguments are those of :func:`iter_split_denoise_file`; `progress` and `cancel` are
    as for :func:`~napari_cryoden.inference.denoise` (`cancel` is polled as each task's result
    arrives). On an error or a cancel, the tasks not finished are cancelled and no output (nor
    temporary file) is left.

    Returns
    -------
    FileResult

    Examples
    --------
    >>> from napari_cryoden.inference.cluster import connect, split_denoise_file
    >>> with connect("local", n_workers=2) as client:  # doctest: +SKIP
    ...     split_denoise_file(client, "tomo.mrc", "tomo_denoised.mrc", device="cpu")
    """
    from .engine import drive

    return drive(iter_split_denoise_file(client, input_path, output_path, model, **kwargs), progress, cancel)
