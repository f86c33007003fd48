"""Training throughput: the data stream alone, the GAN step alone, and the two together.

For each patch size (``--patches``, default 32 and 64) and each device (``--devices``, default
the CPU, and CUDA when PyTorch sees a GPU) it prints samples/s (training patches per second; a
batch holds ``--batch`` of them) of

(a) the data alone: batches of the ``upsampleunet48-gan`` recipe's own stream (the thesis
    stream mixed with realistic simulated tomograms, ``recipes.RECIPES`` and
    :func:`~napari_cryoden.recipes.recipe_stream`, only the patch size changed), moved
    to the device; made on the calling thread (``serial``, what the recipes do by default), by
    ``--workers N`` DataLoader worker processes (:func:`~napari_cryoden.training.data.
    parallel_stream`, one torch thread each), and on the training device itself (``device``:
    :class:`~napari_cryoden.simulate.batched.BatchedStream` built from the same recipe dict
    with ``BatchedStream.from_recipe``, batched torch simulation, no copy);
(b) the step alone: one :class:`~napari_cryoden.training.supervised.SupervisedStep` GAN update
    (discriminator, then generator) of ``UpsampleUnet48`` (the recipe's width) with
    ``SimpleDiscriminator``, the recipe's learning rate and L1 weight, at the device's automatic
    precision (bf16 autocast where supported), on pre-made batches of that stream;
(c) the two together: the same step pulling its batches from the serial stream, then from the
    worker stream, then from the device stream, as ``python -m napari_cryoden.recipes upsampleunet48-gan --workers N``
    trains; the percentage is (c) / (b).

Each figure is the median of ``--repeats`` timed windows, after ``--warmup`` untimed batches
or steps (the workers start during the warm-up); a window is ``--data-steps`` batches for (a)
and ``--steps`` steps for (b) and (c). The realistic part of the stream simulates a new
tomogram every 32 of its patches (a few seconds on one core), so short windows of the serial
stream vary a lot: the rate over all windows together is printed next to the median. A worker
stream keeps up to
``prefetch x workers`` (2 x N) batches ready, so a window that is not much longer than that
overstates (c) when the data is the bottleneck (a GPU): there, use ``--steps 100`` or more.

Usage (on 2 CPU cores shared with other jobs the default took 10 minutes, most of it the 64³
steps of 30-50 s each; ``--patches 32`` alone takes a few minutes)::

    python benchmarks/training.py
    python benchmarks/training.py --patches 32 --steps 2 --data-steps 16 --repeats 3 --workers 2
    python benchmarks/training.py --devices cuda --patches 32 64 --batch 16 --steps 100 --workers 8 16
    python benchmarks/training.py --sources serial device --patches 32 --steps 2 --data-steps 8 --repeats 3

``--sources`` picks the data sources (default ``serial workers device``).

The particle maps come from ``--maps`` (default ``../shared/data/maps_10A``, without the
held-out proteins); without them, procedural particles (``simulate.blob_particle``) stand in
and the header says so.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from napari_cryoden.inference.engine import resolve_device, resolve_precision
from napari_cryoden.models import SimpleDiscriminator, build
from napari_cryoden.simulate import blob_particle, load_particle_maps
from napari_cryoden.simulate.batched import BatchedStream
from napari_cryoden.training.data import parallel_stream
from napari_cryoden.recipes import HELD_OUT, REALISTIC_RANGES, RECIPES, recipe, recipe_stream
from napari_cryoden.training.supervised import SupervisedStep

RECIPE = "upsampleunet48-gan"
SOURCES = ("serial", "workers", "device")
PREFETCH = 2


def particle_maps(folder: str) -> tuple[dict[str, np.ndarray], str]:
    """The training maps of `folder` (held-out proteins left out), or 7 procedural particles."""
    try:
        maps = load_particle_maps(folder)
    except (FileNotFoundError, OSError):
        maps = {}
    maps = {k: v for k, v in maps.items() if k not in HELD_OUT}
    if maps:
        return maps, f"{folder}: {', '.join(sorted(maps))}"
    rng = np.random.default_rng(0)
    return {f"blob{i}": blob_particle(rng, radius=6) for i in range(7)}, "procedural blob particles (no maps found)"


def source_label(what: str, workers: int | str) -> str:
    """Where the batches of a row come from."""
    if what == "step":
        return "pre-made"
    if workers == "device":
        return "device"
    return f"workers {workers}" if workers else "serial"


def timed(call, *, steps: int, repeats: int, warmup: int, sync) -> list[float]:
    """Seconds of each of `repeats` windows of `steps` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            call()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def timed_stream(stream, use, **timing) -> list[float]:
    """:func:`timed` calls of ``use(next_batch)`` on a fresh iterator of `stream`.

    A worker stream's processes start with the iterator and stop when it is dropped on return.
    """
    it = iter(stream)
    return timed(lambda: use(lambda: next(it)), **timing)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patches", type=int, nargs="+", default=[32, 64], help="cube edges in voxels (default 32 64)")
    p.add_argument("--batch", type=int, default=RECIPES[RECIPE]["batch_size"], help="patches per batch (the recipe's)")
    p.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1],
                   help="worker processes of the parallel stream, one or more counts (default: the CPU count)")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES),
                   help="data sources: the serial numpy stream, DataLoader workers, batched torch on the device "
                        "(default: all three)")
    p.add_argument("--steps", type=int, default=1, help="training steps per timed window of (b) and (c) (default 1)")
    p.add_argument("--data-steps", type=int, default=8, help="batches per timed window of (a) (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the median is printed (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches or steps first (default 1)")
    p.add_argument("--maps", default="../shared/data/maps_10A")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--realistic", default="standard", choices=sorted(REALISTIC_RANGES),
                   help="the realistic tomograms' ranges (default standard; low-dose as recipes --realistic)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if min(args.workers) < 1 or min(args.steps, args.data_steps, args.repeats) < 1 or args.warmup < 0:
        p.error("--workers, --steps, --data-steps and --repeats must be >= 1, --warmup >= 0")
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    maps, source = particle_maps(args.maps)
    names = sorted(maps)
    header = {
        "recipe stream": RECIPE, "realistic ranges": args.realistic, "maps": source, "batch": args.batch, "torch": torch.__version__,
        "cpu count": os.cpu_count(), "training torch threads": torch.get_num_threads(), "worker torch threads": 1,
        "prefetch per worker": PREFETCH, "sources": args.sources, "load average": [round(v, 2) for v in os.getloadavg()],
        "cpu": platform.processor() or platform.machine(),
        "windows": f"{args.repeats} of {args.data_steps} batches (data), {args.steps} steps (step, together); "
                   f"{args.warmup} warm-up",
    }
    print(json.dumps(header), flush=True)
    rows = []

    def report(device, patch, what, workers, seconds, step_alone=None):
        per_window = (args.data_steps if what == "data" else args.steps) * args.batch
        rate = statistics.median(per_window / s for s in seconds)
        overall = per_window * len(seconds) / sum(seconds)
        row = {"device": device, "patch": patch, "batch": args.batch, "what": what, "source": source_label(what, workers),
               "workers": workers if isinstance(workers, int) else 0,
               "samples_per_s": round(rate, 3), "batches_per_s": round(rate / args.batch, 4),
               "samples_per_s_all_windows": round(overall, 3), "window_seconds": [round(s, 2) for s in seconds]}
        if step_alone:
            row["of_step_alone"] = round(rate / step_alone, 3)
        rows.append(row)
        share = f"  ({rate / step_alone:.0%} of the step alone)" if step_alone else ""
        print(f"{device:5s} {patch:3d}^3 batch {args.batch:2d}  {what:9s} {source_label(what, workers):10s}"
              f" {rate:9.2f} samples/s  {rate / args.batch:8.3f} batches/s{share}   all windows {overall:.2f} samples/s"
              f" {row['window_seconds']} s",
              flush=True)
        return rate

    for device in devices:
        dev = resolve_device(device)
        prec = resolve_precision("auto", dev)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        print(f"# {dev}: {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else header['cpu']}, "
              f"generator precision {prec}", flush=True)
        for patch in args.patches:
            r = {**recipe(RECIPE, args.realistic), "patch": patch, "batch_size": args.batch}
            timing = {"steps": args.steps, "repeats": args.repeats, "warmup": args.warmup, "sync": sync}
            data_timing = {**timing, "steps": args.data_steps}

            def streams():
                if "serial" in args.sources:
                    yield 0, parallel_stream(recipe_stream, r, maps, names, seed=args.seed, workers=0)
                if "workers" in args.sources:
                    for n in args.workers:
                        yield n, parallel_stream(recipe_stream, r, maps, names, seed=args.seed, workers=n,
                                                 prefetch=PREFETCH, pin_memory=dev.type == "cuda")
                if "device" in args.sources:
                    yield "device", BatchedStream.from_recipe(r, maps, names, device=dev, seed=args.seed)

            def to_device(next_batch):
                return [t.to(dev, non_blocking=True) for t in next_batch()]

            # (a) the data alone
            for n, stream in streams():
                report(device, patch, "data", n, timed_stream(stream, to_device, **data_timing))
            # (b) the step alone, on pre-made batches
            torch.manual_seed(args.seed)
            step = SupervisedStep(build(r["architecture"], **r["arch_kwargs"]), mode=r["mode"],
                                  discriminator=SimpleDiscriminator(patch), lr=r["lr"], l1_weight=r["l1_weight"],
                                  device=dev, precision=prec)
            made = iter(parallel_stream(recipe_stream, r, maps, names, seed=args.seed + 1, workers=0))
            ready = itertools.cycle([next(made) for _ in range(min(4, args.warmup + args.steps * args.repeats))])
            alone = report(device, patch, "step", 0, timed_stream(ready, step, **timing))
            # (c) the two together
            for n, stream in streams():
                report(device, patch, "together", n, timed_stream(stream, step, **timing), alone)
    header["load average at the end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps({"load average at the end": header["load average at the end"]}), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "header": header, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
