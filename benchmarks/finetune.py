"""Does fine-tuning pay off? Noise2Noise and Noise2Void fine-tuning of the default 3D model.

The default model (``upsampleunet48-gan``) was trained on the thesis data: Gaussian noise and a
missing wedge, no CTF. This script simulates a tomogram in another regime: a tilt series with a
CTF (phase-flipped), radiation damage and Poisson shot noise at a low dose, reconstructed by
weighted back-projection (:func:`napari_cryoden.simulate.simulate_tomogram`). It then

1. denoises it with the pretrained default;
2. fine-tunes the default by Noise2Noise on the tomogram's own even/odd halves (cryoCARE's
   protocol, Buchholz et al. 2019; Lehtinen et al. 2018), within a wall-clock budget;
3. fine-tunes the default by Noise2Void on the noisy tomogram alone (Krull et al. 2019);

and prints PSNR and SSIM against the clean target (the noiseless reconstruction of the same
geometry) for each. The clean target is used only to score, never to train. Each model is
applied in two ways: to the full-dose tomogram, and cryoCARE-style to the even and odd halves
with the two results averaged; the table gives both.

Run (the numbers in the issue's closing note)::

    python benchmarks/finetune.py --minutes 10

It uses all the machine's CPU threads (2 here); ``--minutes`` caps each fine-tuning run
(steps stop at the budget; the best validation checkpoint is kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from napari_cryoden.inference import denoise
from napari_cryoden.metrics import image_metrics
from napari_cryoden.models import DEFAULT_MODEL, LoadedModel, load_model
from napari_cryoden.simulate import load_particle_maps, simulate_tomogram
from napari_cryoden.training.finetune import FineTuneConfig, fine_tune


def score(image: np.ndarray, clean: np.ndarray) -> dict:
    m = image_metrics(image, clean)
    return {"psnr": round(m["psnr"], 2), "ssim": round(m["ssim"], 3)}


def apply(model, sim) -> dict:
    """Scores of `model` on the full tomogram and on the averaged even/odd predictions."""
    t0 = time.perf_counter()
    full = denoise(sim.noisy, model)
    seconds = time.perf_counter() - t0
    halves = 0.5 * (denoise(sim.even, model) + denoise(sim.odd, model))
    return {"full": score(full, sim.clean), "halves": score(halves, sim.clean), "denoise_seconds": round(seconds, 1)}


def gaussian_rows(sim) -> dict:
    """Baselines: the flat mean, and a Gaussian filter at each σ, the best σ marked (an oracle:
    σ is chosen against the clean target)."""
    from scipy import ndimage

    rows = {"flat (the mean of the input)": {"full": score(np.full_like(sim.clean, sim.noisy.mean()), sim.clean)}}
    scores = {s: score(ndimage.gaussian_filter(sim.noisy, s), sim.clean) for s in (0.5, 1.0, 1.5, 2.0, 3.0)}
    best = max(scores, key=lambda s: scores[s]["psnr"])
    rows[f"Gaussian filter, best σ = {best} voxel (oracle)"] = {"full": scores[best]}
    return rows


def run_finetune(mode: str, sim, args) -> tuple[LoadedModel, dict]:
    deadline = time.perf_counter() + 60 * args.minutes
    lr = args.n2v_lr if mode == "n2v" else args.lr
    config = FineTuneConfig(mode=mode, steps=args.steps, patch=args.patch, batch=args.batch, lr=lr,
                            val_every=25, seed=args.seed, n2v_blind=args.n2v_blind, n2v_mask=args.n2v_mask)
    source, target = (sim.even, sim.odd) if mode == "n2n" else (sim.noisy, None)
    t0 = time.perf_counter()
    result = fine_tune(source, target, config, model=DEFAULT_MODEL, cancel=lambda: time.perf_counter() > deadline)
    seconds = time.perf_counter() - t0
    model = LoadedModel.from_module(result.module, name=f"{DEFAULT_MODEL}+{mode}", ndim=result.ndim)
    info = {"lr": lr, "steps": result.steps_done, "train_seconds": round(seconds, 1), "stopped_by_budget": result.cancelled,
            "best_val": result.best_val, "best_step": result.best_step}
    return model, info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=(96, 192, 192), metavar=("Z", "Y", "X"))
    p.add_argument("--dose", type=float, default=60.0, help="total dose of the tilt series, e-/Å² (default 60)")
    p.add_argument("--defocus", type=float, default=4.0, help="µm (default 4)")
    p.add_argument("--maps", default="../shared/data/maps_10A", help="particle maps (procedural particles if absent)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of each fine-tuning run")
    p.add_argument("--steps", type=int, default=2000, help="maximum steps of each run")
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of Noise2Noise (default 1e-4)")
    p.add_argument("--n2v-lr", type=float, default=3e-4, help="learning rate of Noise2Void (default 3e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", nargs="+", default=["n2n", "n2v"], choices=["n2n", "n2v"])
    p.add_argument("--n2v-mask", choices=("auto", "voxel"), default="auto",
                   help="N2V blind spots: hide the neighbours with correlated noise (auto) or one voxel")
    p.add_argument("--n2v-blind", type=int, default=0, help="half-width of cubic N2V blind spots (replaces --n2v-mask)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    try:
        particles = load_particle_maps(args.maps)
    except (FileNotFoundError, OSError):
        particles = None
    t0 = time.perf_counter()
    sim = simulate_tomogram(tuple(args.shape), particles=particles, density=0.15, membranes=2,
                            dose_total=args.dose, defocus_um=args.defocus, seed=args.seed)
    print(f"simulated {sim!r} in {time.perf_counter() - t0:.1f} s; torch threads: {torch.get_num_threads()}", flush=True)

    rows = {"noisy input": {"full": score(sim.noisy, sim.clean), "halves": score(0.5 * (sim.even + sim.odd), sim.clean)}}
    rows.update(gaussian_rows(sim))
    default = load_model(DEFAULT_MODEL)
    rows[f"{DEFAULT_MODEL} (pretrained)"] = apply(default, sim)
    print(json.dumps(rows), flush=True)
    for mode in args.modes:
        model, info = run_finetune(mode, sim, args)
        rows[f"{DEFAULT_MODEL} + {mode.upper()} fine-tune"] = {**apply(model, sim), **info}
        print(json.dumps(rows), flush=True)

    base = rows[f"{DEFAULT_MODEL} (pretrained)"]
    print()
    print("| method | PSNR full (dB) | SSIM full | PSNR halves (dB) | SSIM halves | lr | steps | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        halves = f"{r['halves']['psnr']:.2f} | {r['halves']['ssim']:.3f}" if "halves" in r else "| "
        print(f"| {name} | {r['full']['psnr']:.2f} | {r['full']['ssim']:.3f} | {halves} | {r.get('lr', '')} | "
              f"{r.get('steps', '')} | {r.get('train_seconds', '')} |")
    for name, r in rows.items():
        if "fine-tune" in name:
            gain = max(r["full"]["psnr"], r["halves"]["psnr"]) - max(base["full"]["psnr"], base["halves"]["psnr"])
            print(f"{name}: {gain:+.2f} dB PSNR over the pretrained model (best application of each)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "params": sim.params, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
