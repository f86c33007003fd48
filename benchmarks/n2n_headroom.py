"""Is the shipped 2D model at a plateau? Continue its training and watch the held-out score.

``n2n-unet-2d`` misses one target of its issue: 1.5 dB median PSNR over BM3D on the simulated
held-out micrographs (it has about 0.8 dB). This script asks whether more training of the same
network would close the gap. It starts from the shipped weights, goes on training with the
recipe's data stream (new micrographs, seeded by ``--seed``) and, every ``--every`` steps,
prints the median PSNR of the first ``--n`` held-out micrographs (the recipe's learning-curve
set) for the raw weights and for an exponential moving average of them (Polyak averaging).

``--target half`` continues Noise2Noise exactly as the recipe trains (the other half is the
target). ``--target clean`` trains against the noiseless image instead: supervised training,
which no user data allows, but which shows what the same network could reach without the
noise of Noise2Noise targets. If neither moves the score, the network is at its plateau on
this data, and more steps on a CPU will not close the gap.

Run (the numbers in the issue's closing note; about 13 and 7 minutes on 2 CPU threads)::

    python benchmarks/n2n_headroom.py --target half --lr 1e-4 --steps 600 --every 200 --ema 0.995
    python benchmarks/n2n_headroom.py --target clean --lr 2e-5 --steps 300 --every 150 --ema 0.98
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from napari_cryoden.evaluation.experiments import HELD_OUT, micrograph_held_out_set
from napari_cryoden.inference import denoise
from napari_cryoden.metrics import image_metrics
from napari_cryoden.models import LoadedModel, load_model
from napari_cryoden.simulate import load_particle_maps
from napari_cryoden.recipes import RECIPES
from napari_cryoden.training.data import MicrographPairs
from napari_cryoden.training.supervised import SupervisedStep

NAME = "n2n-unet-2d"


def median_psnr(module: torch.nn.Module, sims) -> float:
    """Median PSNR (dB) of `module` on `sims`, through the same tiled inference as the recipe."""
    copy_ = copy.deepcopy(module).float().to("cpu", memory_format=torch.contiguous_format).eval()
    model = LoadedModel.from_module(copy_, name="probe", ndim=2)
    return float(np.median([image_metrics(denoise(s.noisy, model, device="cpu", precision="auto"), s.clean)["psnr"]
                            for s in sims]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--maps", default="../shared/data/maps_5A", help="particle maps at 5 Å/voxel")
    p.add_argument("--target", choices=("half", "clean"), default="half")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.995, help="decay of the weight average per step")
    p.add_argument("--n", type=int, default=4, help="held-out micrographs to score")
    p.add_argument("--seed", type=int, default=7, help="seed of the training stream")
    args = p.parse_args(argv)

    r, shipped = RECIPES[NAME], load_model(NAME)
    maps = load_particle_maps(args.maps)
    sims = micrograph_held_out_set(maps, n=r["held_out"]["n"], seed=r["held_out"]["seed"])[: args.n]
    train = {k: v for k, v in maps.items() if k not in HELD_OUT}
    stream = MicrographPairs.from_recipe(r, train, np.random.default_rng(args.seed), target=args.target)
    print(f"{NAME} shipped: median PSNR {median_psnr(shipped.module, sims):.3f} dB on {len(sims)} held-out "
          f"micrographs; continuing with target={args.target}, lr {args.lr:g}", flush=True)
    torch.manual_seed(args.seed)
    step_fn = SupervisedStep(copy.deepcopy(shipped.module).train(), mode="ae", loss=r["loss"], lr=args.lr,
                             betas=tuple(r["betas"]), device="cpu", precision="auto", ndim=2,
                             max_grad_norm=r.get("max_grad_norm"), channels_last=True)
    average = copy.deepcopy(shipped.module).float()
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        step_fn(stream.batch)
        with torch.no_grad():
            for a, w in zip(average.parameters(), step_fn.generator.parameters()):
                a.lerp_(w.detach().float(), 1.0 - args.ema)
        if step % args.every == 0 or step == args.steps:
            print(f"step {step}: {time.perf_counter() - t0:.0f} s, median PSNR raw "
                  f"{median_psnr(step_fn.generator, sims):.3f} dB, averaged {median_psnr(average, sims):.3f} dB",
                  flush=True)


if __name__ == "__main__":
    main()
