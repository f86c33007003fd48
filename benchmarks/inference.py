"""Inference benchmark: end-to-end throughput, peak memory, overlap waste and FLOP efficiency.

For every shipped model (:func:`napari_cryoden.models.available_models`; 3D models on a synthetic
tomogram, 2D models on the same array as a ``.mrcs`` stack, slice by slice) and every device (the
CPU, and CUDA when PyTorch sees a GPU), one subprocess per case (so memory peaks do not mix):

* end-to-end throughput in Mvoxel/s, the median of ``--repeats`` runs of the path ``cryoden
  denoise`` takes (:func:`napari_cryoden.inference.denoise_file`: read the MRC file, robust
  normalisation, tiles, network, stitch, write the MRC file), after one warm-up run on a small file;
* peak RSS of the process (``VmHWM``, else ``resource.getrusage(...).ru_maxrss``), and its RSS
  before denoising (Python, PyTorch and the model);
* the automatic tile plan and its overlap waste ratio, computed/output voxels
  (:attr:`napari_cryoden.inference.engine.Plan.waste`);
* the network's achieved FLOP/s on one tile of that plan (FLOPs counted with
  :class:`torch.utils.flop_counter.FlopCounterMode`, time the median of several forward passes
  at the run's precision) as a fraction of the bf16 and the fp32 matmul peaks measured in the same
  process (``torch.mm`` of large square matrices, median of several).

``--preview`` instead times the Denoise widget's Preview (:func:`napari_cryoden.inference.
preview.iter_denoise_slab`: the 33 slices around the middle one of a ``--shape`` tomogram,
held in memory as the widget holds a layer) against tiling the same slab like a volume, the
median of ``--repeats`` runs after a warm-up, for every shipped 3D model, and compares both
with the same slices of the full denoised tomogram.

``--huge`` instead writes a 512 x 1024 x 1024 float32 tomogram (2 GiB) in a temporary folder and
runs ``cryoden denoise`` on it in a fresh process (the streaming path), reporting that process's
peak RSS (``VmHWM``), its time and the output's size.

Usage::

    python benchmarks/inference.py                      # 128 x 256 x 256, 3 repeats
    python benchmarks/inference.py --shape 200 512 512  # the issue's target size
    python benchmarks/inference.py --huge [--models upsampleunet48-gan]
    python benchmarks/inference.py --preview --shape 200 512 512 --models fast-3d
    python benchmarks/inference.py --activations 128

``--activations N`` measures the peak memory of one N³ forward pass per 3D model in a fresh
process and prints it next to the estimate the tile plan uses.

``--breakdown`` times where a run of :func:`~napari_cryoden.inference.denoise_file` spends its time,
per device and per variant of the engine (one subprocess each): the median end-to-end time of
``--repeats`` runs with no instrumentation, the first run's time (cuDNN's autotuning included),
then the median seconds per stage (reading, statistics, host->device, network, device->host,
stitching, writing; the GPU synchronised around each stage) and the network's FLOP/s as a
fraction of the bf16 matmul peak measured in the same process. With ``--batch N`` it also
denoises N such files one after the other in the same process, and with ``cryoden denoise
'dir/*.mrc' -o out/`` in a fresh process, and reports files per minute::

    python benchmarks/inference.py --breakdown --shape 200 512 512 --devices cuda --batch 8 \
        --models upsampleunet48-gan
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_cryoden.inference.timing import STAGES as STAGE_NAMES

WARMUP_SHAPE = (32, 64, 64)

HUGE_SHAPE = (512, 1024, 1024)


def write_synthetic(path: Path, shape, seed: int = 0, *, slab: int = 16) -> Path:
    """A float32 MRC file of smooth structure plus Gaussian noise, written slab by slab (the array is
    never held whole, so a 2 GiB file costs no more memory than a slab)."""
    import mrcfile

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    yy, xx = np.meshgrid(*(np.linspace(0, 6 * np.pi, n, dtype=np.float32) for n in shape[-2:]), indexing="ij")
    mrc = mrcfile.new_mmap(path, shape=shape, mrc_mode=2, overwrite=True)
    try:
        data = mrc.data if len(shape) == 3 else mrc.data[None]
        for z in range(0, data.shape[0], slab):
            n = min(slab, data.shape[0] - z)
            zz = np.arange(z, z + n, dtype=np.float32)[:, None, None] / 7.0
            data[z : z + n] = np.sin(yy + zz) * np.cos(xx) + rng.standard_normal((n, *shape[-2:]), dtype=np.float32)
        mrc.voxel_size = 10.0
        mrc.flush()
    finally:
        mrc.close()
    return path


def _peak_rss_kib() -> int:
    """Peak resident memory of this process since it started, in KiB.

    ``VmHWM`` of ``/proc/self/status`` where there is one: ``getrusage``'s ``ru_maxrss`` also
    counts the parent's peak at the time of the fork (Linux carries it over ``execve``), which
    made a 2 GiB file written by the parent look like the child's memory.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


#: Runs ``cryoden`` and reports its peak RSS (VmHWM) on stderr, for --huge.
_CLI_WITH_PEAK = """
import sys
from napari_cryoden.cli import main
rc = main(sys.argv[1:])
with open("/proc/self/status", encoding="ascii") as fh:
    hwm = [line.split()[1] for line in fh if line.startswith("VmHWM:")]
print("PEAK_RSS_KIB", hwm[0] if hwm else -1, file=sys.stderr)
sys.exit(rc)
"""


def _current_rss_mib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of ``torch.mm`` of two n x n matrices of `dtype`: the median of `repeats` runs."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def tile_flops_and_rate(model, plan, device, precision: str, repeats: int = 3) -> tuple[float, float]:
    """FLOPs of one forward pass on the plan's tile, and the achieved FLOP/s at `precision`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_cryoden.device import PRECISIONS

    shape = plan.geometry.tile_shape(plan.shape)
    if plan.mode != "volume":
        shape = shape[1:]
    net = model.module.to(device).eval()
    x = torch.randn(1, 1, *shape, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x)
    flops = float(counter.get_total_flops())
    memory_format = torch.contiguous_format
    if device.type == "cpu" and precision == "bf16":
        memory_format = torch.channels_last_3d if plan.mode == "volume" else torch.channels_last
    net = net.to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    dtype = PRECISIONS[precision]
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            net(x)
        _sync(device)
        if i:  # the first pass warms up
            times.append(time.perf_counter() - t)
    return flops, flops / statistics.median(times)


def run_case(spec: dict) -> dict:
    """One model on one device, in this (child) process."""
    import torch

    from napari_cryoden.inference import denoise_file, plan_geometry, resolve_device, resolve_precision
    from napari_cryoden.models import load_model

    device = resolve_device(spec["device"])
    precision = resolve_precision("auto", device)
    model = load_model(spec["model"])
    folder = Path(spec["folder"])
    warm = write_synthetic(folder / f"warm-{os.getpid()}{spec['suffix']}", WARMUP_SHAPE, seed=1)
    denoise_file(warm, folder / f"warm-out-{os.getpid()}{spec['suffix']}", model, device=str(device),
                 precision=precision, overwrite=True)
    rss_before = _current_rss_mib()
    times, info = [], {}
    out = folder / f"out-{os.getpid()}{spec['suffix']}"
    for _ in range(spec["repeats"]):
        info = {}
        _sync(device)
        t = time.perf_counter()
        denoise_file(spec["input"], out, model, device=str(device), precision=precision, overwrite=True, info=info)
        _sync(device)
        times.append(time.perf_counter() - t)
    peak_rss = _peak_rss_kib() / 1024
    plan = plan_geometry(model, info["shape"], device, precision, tile=info["tile"][-model.ndim:],
                         overlap=info["overlap"][-model.ndim:], batch_size=info["batch"],
                         image_stack=spec["suffix"] == ".mrcs")
    flops, rate = tile_flops_and_rate(model, plan, device, precision)
    n = 8192 if device.type == "cuda" else 2048
    peaks = {name: matmul_peak(device, dtype, n) for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    voxels = int(np.prod(info["shape"]))
    return {
        "model": spec["model"], "ndim": model.ndim, "device": device.type, "precision": precision,
        "mode": info["mode"], "shape": list(info["shape"]), "tile": list(info["tile"]),
        "overlap": list(info["overlap"]), "batch": info["batch"], "tiles": info["tiles"], "waste": info["waste"],
        "streamed": info.get("streamed"), "seconds": times, "mvox_per_s": voxels / statistics.median(times) / 1e6,
        "rss_before_mib": rss_before, "peak_rss_mib": peak_rss, "tile_gflop": flops / 1e9,
        "achieved_gflops": rate / 1e9, "mm_peak_gflops": {k: v / 1e9 for k, v in peaks.items()},
        "threads": torch.get_num_threads(),
    }


#: Engine variants of ``--breakdown``: "before" is the tile-by-tile host path with the settings
#: of the code before the resident path (contiguous memory, no cuDNN autotuning, no reading
#: ahead on CUDA, the output written whole at the end). "read_ahead" reads the next batch of
#: tiles on a thread (:mod:`napari_cryoden.inference.prefetch`; default on CUDA only);
#: "row_writes" False writes a resident run's output whole after it came back, instead of slab
#: by slab while it comes back (:data:`napari_cryoden.inference.stream.ROW_WRITES`).
VARIANTS = {
    "cpu": {
        "host": {"resident": False},
        "host, read ahead": {"resident": False, "read_ahead": True},
    },
    "cuda": {
        "before": {"resident": False, "channels_last": False, "cudnn_benchmark": False, "read_ahead": False,
                   "row_writes": False},
        "host, read ahead": {"resident": False, "channels_last": False, "cudnn_benchmark": False, "read_ahead": True},
        "resident, written whole": {"resident": None, "channels_last": False, "cudnn_benchmark": False,
                                    "row_writes": False},
        "resident": {"resident": None, "channels_last": False, "cudnn_benchmark": False},
        "resident, contiguous": {"resident": None, "channels_last": False, "cudnn_benchmark": True},
        "resident, no autotune": {"resident": None, "channels_last": True, "cudnn_benchmark": False},
        "host, channels-last + autotune": {"resident": False, "channels_last": True, "cudnn_benchmark": True},
    },
}


def network_flops(model, plan) -> float:
    """FLOPs of the network over all the tiles of `plan`, counted on the meta device (nothing is
    computed): one tile's count (:class:`torch.utils.flop_counter.FlopCounterMode`) times the tiles."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    shape = plan.geometry.tile_shape(plan.shape)
    if plan.mode != "volume":
        shape = shape[1:]
    net = copy.deepcopy(model.module).to("meta").eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.empty(1, 1, *shape, device="meta"))
    return float(counter.get_total_flops()) * plan.n_tiles


def run_breakdown_case(spec: dict) -> dict:
    """One model, device and engine variant, in this (child) process: see ``--breakdown``."""
    import torch

    from napari_cryoden.inference import (denoise_file, engine, plan_geometry, prefetch, resolve_device,
                                          resolve_precision, stream)
    from napari_cryoden.models import load_model

    variant = spec["variant"]
    engine.CUDA_CHANNELS_LAST = variant.get("channels_last", engine.CUDA_CHANNELS_LAST)
    engine.CUDA_CUDNN_BENCHMARK = variant.get("cudnn_benchmark", engine.CUDA_CUDNN_BENCHMARK)
    if "read_ahead" in variant:
        prefetch.PREFETCH_DEVICES = ("cpu", "cuda") if variant["read_ahead"] else ()
    stream.ROW_WRITES = variant.get("row_writes", stream.ROW_WRITES)
    device = resolve_device(spec["device"])
    precision = resolve_precision("auto", device)
    model = load_model(spec["model"])
    folder = Path(spec["folder"])
    src = Path(spec["input"])
    out = folder / f"out-{os.getpid()}.mrc"
    opts = dict(device=str(device), precision=precision, overwrite=True, resident=variant["resident"])
    warm = write_synthetic(folder / f"warm-{os.getpid()}.mrc", WARMUP_SHAPE, seed=1)
    denoise_file(warm, folder / f"warm-out-{os.getpid()}.mrc", model, **opts)

    def timed(**extra):
        _sync(device)
        t = time.perf_counter()
        denoise_file(src, out, model, **opts, **extra)
        _sync(device)
        return time.perf_counter() - t

    info: dict = {}
    first = timed(info=info)
    plain = [timed() for _ in range(spec["repeats"])]
    stages = []
    for _ in range(spec["repeats"]):
        timings: dict = {}
        timed(timings=timings)
        stages.append(timings)
    medians = {k: statistics.median(t.get(k, 0.0) for t in stages) for k in STAGE_NAMES}
    plan = plan_geometry(model, info["shape"], device, precision, tile=info["tile"][-model.ndim:],
                         overlap=info["overlap"][-model.ndim:], batch_size=info["batch"])
    flops = network_flops(model, plan)
    n = 8192 if device.type == "cuda" else 2048
    peak = matmul_peak(device, torch.bfloat16, n)
    row = {
        "model": spec["model"], "device": device.type, "variant": spec["variant_name"], "precision": precision,
        "shape": list(info["shape"]), "tile": list(info["tile"]), "overlap": list(info["overlap"]),
        "tiles": info["tiles"], "resident": bool(info.get("resident")), "streamed": bool(info.get("streamed")),
        "first_s": first, "seconds": plain, "median_s": statistics.median(plain), "stages": medians,
        "network_tflop": flops / 1e12, "bf16_peak_tflops": peak / 1e12,
        "network_tflops": flops / max(medians["network"], 1e-9) / 1e12,
        "threads": torch.get_num_threads(), "rss_peak_mib": _peak_rss_kib() / 1024,
    }
    if spec.get("batch"):
        row.update(run_batch(spec, model, opts, folder))
    return row


def run_batch(spec: dict, model, opts: dict, folder: Path) -> dict:
    """N files one after the other in this process, then ``cryoden denoise 'dir/*.mrc' -o out/``."""
    import shutil

    from napari_cryoden.inference import denoise_file

    n = spec["batch"]
    batch_in, batch_out = folder / "batch-in", folder / "batch-out"
    batch_in.mkdir(exist_ok=True)
    for i in range(n):
        dst = batch_in / f"tomo{i:02d}.mrc"
        if not dst.exists():
            shutil.copyfile(spec["input"], dst)
    batch_out.mkdir(exist_ok=True)
    files = sorted(batch_in.glob("*.mrc"))
    t = time.perf_counter()
    for f in files:
        denoise_file(f, batch_out / f.name, model, **opts)
    seconds = time.perf_counter() - t
    cli_out = folder / "batch-cli"
    cmd = [sys.executable, "-m", "napari_cryoden.cli", "denoise", str(batch_in / "*.mrc"), "-o", str(cli_out),
           "--model", spec["model"], "--device", spec["device"], "--overwrite", "-q"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    cli_seconds = time.perf_counter() - t
    shutil.rmtree(cli_out, ignore_errors=True)
    return {"batch_files": n, "batch_s": seconds, "batch_cli_s": cli_seconds if proc.returncode == 0 else None,
            "batch_cli_error": proc.stderr.strip().splitlines()[-1:] if proc.returncode else None}


def print_breakdown(rows: list[dict]) -> None:
    print("| model | device | variant | resident | end to end, median s (runs) | first run s | "
          + " | ".join(STAGE_NAMES) + " | sum of stages | network TFLOP/s | % of bf16 peak |")
    print("|---|---|---|---|---|---|" + "---|" * len(STAGE_NAMES) + "---|---|---|")
    for r in rows:
        st = r["stages"]
        print(f"| {r['model']} | {r['device']} | {r['variant']} | {'yes' if r['resident'] else 'no'} | "
              f"{r['median_s']:.3f} ({', '.join(f'{t:.3f}' for t in r['seconds'])}) | {r['first_s']:.3f} | "
              + " | ".join(f"{st[k]:.3f}" for k in STAGE_NAMES)
              + f" | {sum(st.values()):.3f} | {r['network_tflops']:.3g} | "
              f"{100 * r['network_tflops'] / r['bf16_peak_tflops']:.0f} |")
    for r in rows:
        voxels = int(np.prod(r["shape"]))
        line = (f"  {r['model']} {r['device']} {r['variant']}: {voxels / r['median_s'] / 1e6:.1f} Mvox/s, "
                f"tile {'x'.join(map(str, r['tile']))} + {'x'.join(map(str, r['overlap']))}, {r['tiles']} tiles, "
                f"{r['network_tflop']:.1f} TFLOP, bf16 mm peak {r['bf16_peak_tflops']:.0f} TFLOP/s, "
                f"{r['threads']} threads, peak RSS {r['rss_peak_mib']:.0f} MiB")
        if r.get("batch_files"):
            per = r["batch_s"] / r["batch_files"]
            line += (f"; batch of {r['batch_files']}: {r['batch_s']:.2f} s in one process, "
                     f"{60 / per:.0f} files/min, {100 * r['median_s'] / per:.0f} % of the single-file throughput")
            if r.get("batch_cli_s"):
                line += f"; cryoden denoise on the batch: {r['batch_cli_s']:.1f} s (process start included)"
            elif r.get("batch_cli_error"):
                line += f"; cryoden denoise on the batch failed: {r['batch_cli_error']}"
        print(line)


def run_breakdown(args, models: list[str], devices: list[str]) -> None:
    import torch

    print(f"breakdown: shape {tuple(args.shape)} (Z, Y, X) float32, {args.repeats} repeats; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs" + (f"; {torch.cuda.get_device_name()}" if "cuda" in devices else ""), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cryoden-breakdown-", dir=args.tmp) as tmp:
        folder = Path(tmp)
        src = write_synthetic(folder / "input.mrc", args.shape)
        for name in models:
            for device in devices:
                variants = VARIANTS["cuda" if device.startswith("cuda") else "cpu"]
                for vname in args.variants or list(variants):
                    if vname not in variants:
                        continue
                    spec = {"model": name, "device": device, "repeats": args.repeats, "folder": str(folder),
                            "input": str(src), "variant": variants[vname], "variant_name": vname,
                            "breakdown": True, "batch": args.batch if vname in ("resident", "host") else 0}
                    try:
                        row = _child(spec)
                    except RuntimeError as exc:
                        print(f"  {name} {device} {vname}: {exc}", flush=True)
                        continue
                    rows.append(row)
                    print(f"  done: {name} {device} {vname}: {row['median_s']:.3f} s", flush=True)
    print_breakdown(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def _child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec['model']} on {spec['device']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    head = ["model", "dev", "prec", "plan: tile (core) / overlap / batch", "tiles", "waste", "Mvox/s",
            "RSS before", "peak RSS", "GFLOP/tile", "GFLOP/s", "% bf16 mm", "% fp32 mm"]
    lines = []
    for r in rows:
        core = "x".join(map(str, r["tile"] if r["mode"] == "volume" else r["tile"][1:]))
        ov = "x".join(map(str, r["overlap"] if r["mode"] == "volume" else r["overlap"][1:]))
        lines.append([
            r["model"] + (" (2D, slice by slice)" if r["ndim"] == 2 else ""), r["device"], r["precision"],
            f"{core} / {ov} / {r['batch']}", str(r["tiles"]), f"{r['waste']:.2f}", f"{r['mvox_per_s']:.3f}",
            f"{r['rss_before_mib']:.0f} MiB", f"{r['peak_rss_mib']:.0f} MiB", f"{r['tile_gflop']:.1f}",
            f"{r['achieved_gflops']:.1f}", f"{100 * r['achieved_gflops'] / r['mm_peak_gflops']['bf16']:.0f}",
            f"{100 * r['achieved_gflops'] / r['mm_peak_gflops']['fp32']:.0f}",
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
    for r in rows:
        peaks = r["mm_peak_gflops"]
        print(f"  {r['model']} on {r['device']}: runs {', '.join(f'{t:.1f}' for t in r['seconds'])} s; "
              f"matmul peaks bf16 {peaks['bf16']:.0f} GFLOP/s, fp32 {peaks['fp32']:.0f} GFLOP/s; "
              f"{r['threads']} threads; {'streamed' if r['streamed'] else 'in memory'}")


def run_huge(args, models: list[str]) -> None:
    """512 x 1024 x 1024 float32 (2 GiB) through ``python -m napari_cryoden.cli denoise``."""
    import shutil

    folder = Path(tempfile.mkdtemp(prefix="cryoden-huge-", dir=args.tmp))
    try:
        need = 2 * int(np.prod(HUGE_SHAPE)) * 4 + 2**30
        free = shutil.disk_usage(folder).free
        if free < need:
            print(f"--huge needs {need / 2**30:.1f} GiB of disk in {folder.parent}, {free / 2**30:.1f} GiB free; skipped")
            return
        src = folder / "huge.mrc"
        t = time.perf_counter()
        write_synthetic(src, HUGE_SHAPE)
        print(f"wrote {src} ({src.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s")
        for name in models:
            out = folder / "huge_denoised.mrc"
            cmd = [sys.executable, "-c", _CLI_WITH_PEAK, "denoise", str(src), str(out), "--model", name,
                   "--overwrite", *(["--device", args.huge_device] if args.huge_device else []),
                   *(["--max-memory", str(args.max_memory)] if args.max_memory else [])]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - t
            stdout, stderr = proc.stdout, proc.stderr
            if proc.returncode != 0:
                print(f"{name}: failed ({proc.returncode}): {stderr.strip().splitlines()[-2:]}")
                continue
            peak = int(stderr.rsplit("PEAK_RSS_KIB", 1)[1].split()[0])
            print(f"{name}: peak RSS {peak / 1024:.0f} MiB for a {src.stat().st_size / 2**30:.2f} GiB "
                  f"input and {out.stat().st_size / 2**30:.2f} GiB output; {seconds:.0f} s "
                  f"({np.prod(HUGE_SHAPE) / seconds / 1e6:.3f} Mvox/s)")
            print("  " + stdout.strip().splitlines()[-1])
            out.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_ACTIVATION_CHILD = """
import json, sys, torch
from napari_cryoden.inference import resolve_device, resolve_precision
from napari_cryoden.inference.engine import activation_bytes_per_voxel
from napari_cryoden.models import load_model
name, n = sys.argv[1], int(sys.argv[2])
device = resolve_device("cpu"); precision = resolve_precision("auto", device)
model = load_model(name); net = model.module.eval()
dtype = {"bf16": torch.bfloat16}.get(precision)
fmt = torch.channels_last_3d if dtype is not None else torch.contiguous_format
net = net.to(memory_format=fmt)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
def forward(side):
    x = torch.randn(1, 1, side, side, side).contiguous(memory_format=fmt)
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        return net(x)
forward(32)  # warm-up: kernels, allocator
estimate = activation_bytes_per_voxel(model, precision)
base = status("VmRSS")
forward(n)
print(json.dumps({"model": name, "side": n, "precision": precision, "measured": (status("VmHWM") - base) / n**3,
                  "estimate": estimate}))
"""


def run_activations(args, models: list[str]) -> None:
    """Peak memory of one forward pass per input voxel, measured (``VmHWM`` of a fresh process
    minus its RSS before) and as :func:`activation_bytes_per_voxel` estimates it."""
    side = args.activations
    print(f"one {side}^3 forward pass on the CPU, a fresh process per model")
    print("| model | precision | measured peak, bytes per input voxel | estimate (probe) |")
    print("|---|---|---|---|")
    for name in models:
        from napari_cryoden.models import load_model

        if load_model(name).ndim != 3:
            continue
        proc = subprocess.run([sys.executable, "-c", _ACTIVATION_CHILD, name, str(side)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1:]} | | |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['precision']} | {r['measured']:.0f} | {r['estimate']:.0f} |", flush=True)


def run_preview(args, models: list[str]) -> None:
    """Time the widget's Preview (:func:`iter_denoise_slab` around the middle slice) against
    tiling the same slab like a volume (the slab padded again by the margin, as before), and
    check it against the same slices of the full denoised tomogram."""
    import shutil

    import mrcfile
    import torch

    from napari_cryoden.inference import denoise, iter_denoise, resolve_device, resolve_precision
    from napari_cryoden.inference.engine import model_overlap
    from napari_cryoden.inference.normalize import robust_stats
    from napari_cryoden.inference.preview import PREVIEW_HALF_DEPTH, iter_denoise_slab
    from napari_cryoden.models import load_model

    folder = Path(tempfile.mkdtemp(prefix="cryoden-preview-", dir=args.tmp))
    try:
        src = write_synthetic(folder / "input.mrc", tuple(args.shape))
        with mrcfile.open(src, permissive=True) as mrc:
            volume = np.array(mrc.data, dtype=np.float32)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    centre = args.shape[0] // 2
    opts = {"device": str(device), "precision": precision}
    print(f"preview of {2 * PREVIEW_HALF_DEPTH + 1} slices around slice {centre} of a {tuple(args.shape)} "
          f"synthetic float32 tomogram in memory; {device.type}, {precision}, {torch.get_num_threads()} threads; "
          f"median of {args.repeats} after a warm-up")
    print("| model | method | computed (tiles x core, overlap) | median s | runs | max abs difference from the full run |")
    print("|---|---|---|---|---|---|")

    def timed(make):
        info: dict = {}
        gen = make(info)
        t = time.perf_counter()
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return time.perf_counter() - t, info, stop.value

    for name in models:
        model = load_model(name)
        if model.ndim != 3:
            continue
        full = denoise(volume, model, **opts)
        z0, z1 = centre - PREVIEW_HALF_DEPTH, centre + PREVIEW_HALF_DEPTH + 1
        m, s = model_overlap(model)[0], max(1, model.stride)
        a, b = max(0, z0 - m) // s * s, min(args.shape[0], z1 + m)
        stats = robust_stats(volume)
        methods = {
            "Preview (one Z tile, context as margin)":
                lambda info: iter_denoise_slab(volume, model, centre, info=info, **opts),
            "the slab tiled as a volume (padded again)":
                lambda info: iter_denoise(volume[a:b], model, stats=stats, info=info, **opts),
        }
        for label, make in methods.items():
            timed(make)  # warm-up
            runs = [timed(make) for _ in range(args.repeats)]
            times = [r[0] for r in runs]
            info, value = runs[-1][1], runs[-1][2]
            shown = value[1] if isinstance(value, tuple) else value[z0 - a : z1 - a]
            diff = float(np.abs(shown - full[z0:z1]).max())
            print(f"| {name} | {label} | {info['tiles']} x {'x'.join(map(str, info['tile']))}, "
                  f"{'x'.join(map(str, info['overlap']))} | {statistics.median(times):.2f} | "
                  f"{', '.join(f'{t:.2f}' for t in times)} | {diff:.2g} (output std {full.std():.3g}) |", flush=True)


def run_copy_back(args, devices) -> None:
    """``--copy-back``: an output of ``--shape`` on each device, brought back and written to a file
    (header statistics known, as in a resident run) two ways, interleaved: copied back whole and
    then written (:func:`~napari_cryoden.io.write_mrc` with ``stats=``), or written slab by slab
    while the next slab comes back (:class:`~napari_cryoden.io.MrcRowWriter`)."""
    import torch

    from napari_cryoden.inference.resident import tensor_stats, to_host
    from napari_cryoden.io import MrcRowWriter, write_mrc

    print(f"copy back and write: shape {tuple(args.shape)} float32 ({np.prod(args.shape) * 4 / 2**20:.0f} MiB), "
          f"{args.repeats} repeats; torch {torch.__version__}; {os.cpu_count()} CPUs")
    print("| device | copied back, then written: median s (runs) | written while copied back: median s (runs) | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="cryoden-bench-", dir=args.tmp) as tmp:
        dst = Path(tmp) / "out.mrc"
        for name in devices:
            device = torch.device(name)
            tensor = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0)).to(device)
            stats = tensor_stats(tensor)

            def whole():
                out = np.empty(tuple(args.shape), dtype=np.float32)
                to_host(tensor, out)
                write_mrc(dst, out, 1.0, overwrite=True, stats=stats)

            def rows():
                out = np.empty(tuple(args.shape), dtype=np.float32)
                with MrcRowWriter(dst, tuple(args.shape), 1.0, stats, overwrite=True) as writer:
                    to_host(tensor, out, on_slab=lambda a, b: writer.write(a, out[a:b]))

            times: dict = {"whole": [], "rows": []}
            whole(), rows()  # warm-up: pinned buffers, page cache
            for _ in range(args.repeats):
                for key, fn in (("whole", whole), ("rows", rows)):
                    _sync(device)
                    t = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t)
            a, b = (statistics.median(times[k]) for k in ("whole", "rows"))
            runs = {k: ", ".join(f"{t:.3f}" for t in v) for k, v in times.items()}
            print(f"| {name} | {a:.3f} ({runs['whole']}) | {b:.3f} ({runs['rows']}) | {b / a:.2f} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(128, 256, 256), metavar=("Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--models", nargs="+", default=None, help="default: every shipped model")
    parser.add_argument("--huge", action="store_true", help="the 2 GiB streaming run instead of the table")
    parser.add_argument("--preview", action="store_true", help="time the widget's Preview instead of the table")
    parser.add_argument("--activations", type=int, default=None, metavar="N",
                        help="measure the peak memory of one N^3 forward pass per model instead of the table")
    parser.add_argument("--huge-device", default=None, help="--device of the --huge run (default: auto)")
    parser.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                        help="--max-memory of the --huge run (default: automatic)")
    parser.add_argument("--tmp", default=None, help="folder for the temporary files (default: the system's)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--breakdown", action="store_true",
                        help="time each stage of a run, per device and engine variant, instead of the table")
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"--breakdown variants (default: all; CUDA: {'; '.join(repr(v) for v in VARIANTS['cuda'])})")
    parser.add_argument("--copy-back", action="store_true",
                        help="time bringing an output of --shape back from each device and writing it, whole "
                             "after the copy or slab by slab during it, instead of the table")
    parser.add_argument("--batch", type=int, default=0, metavar="N",
                        help="--breakdown: also denoise N copies of the input one after the other")
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_breakdown_case(spec) if spec.get("breakdown") else run_case(spec)))
        return 0

    import torch

    from napari_cryoden.models import available_models

    models = args.models or list(available_models())
    if args.huge:
        run_huge(args, models)
        return 0
    if args.preview:
        run_preview(args, models)
        return 0
    if args.activations:
        run_activations(args, models)
        return 0
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if args.copy_back:
        run_copy_back(args, devices)
        return 0
    if args.breakdown:
        run_breakdown(args, args.models or ["upsampleunet48-gan"], devices)
        return 0
    cards = available_models()
    print(f"shape {tuple(args.shape)} (Z, Y, X), float32, {args.repeats} repeats; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs" + (f"; {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    rows = []
    with tempfile.TemporaryDirectory(prefix="cryoden-bench-", dir=args.tmp) as tmp:
        folder = Path(tmp)
        inputs = {}
        for suffix in (".mrc", ".mrcs"):
            inputs[suffix] = write_synthetic(folder / f"input{suffix}", args.shape)
        for name in models:
            from napari_cryoden.models.registry import ARCHITECTURES

            ndim = ARCHITECTURES[cards[name]["architecture"]].ndim
            suffix = ".mrc" if ndim == 3 else ".mrcs"
            for device in devices:
                spec = {"model": name, "device": device, "repeats": args.repeats, "folder": str(folder),
                        "input": str(inputs[suffix]), "suffix": suffix}
                row = _child(spec)
                rows.append(row)
                print(f"  done: {name} on {device}: {row['mvox_per_s']:.3f} Mvox/s", flush=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
