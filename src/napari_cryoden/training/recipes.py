"""Recipes that (re)build the shipped pretrained models, with their held-out evaluation.

Each recipe is fixed: data, split, network, losses, steps and seed. Run one with::

    python -m napari_cryoden.training.recipes upsampleunet48-gan \
        --maps ../shared/data/maps_10A --out models

It writes ``<name>.safetensors`` and the model card ``<name>.json`` (architecture, voxel size,
normalisation, data and noise model, steps, seed, time, hardware, held-out metrics, sha256,
licence). Training never runs in CI; tests run the same code for a handful of steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..metrics import image_metrics, summarize
from ..models import NORMALIZATION, LoadedModel, SimpleDiscriminator, UpsampleUnet48, save_model
from ..simulate import load_particle_maps, thesis_pair
from .data import ThesisStream
from .supervised import TrainConfig, train

__all__ = ["HELD_OUT", "RECIPES", "evaluate_held_out", "run_recipe"]

#: Proteins never used in training; the held-out test set is made from these alone.
HELD_OUT = ("1u6g", "3h84")

RECIPES = {
    "upsampleunet48-gan": {
        "description": "UpsampleUnet48 GAN (van Gijn 2019, sec. 3.7), 3D tomograms at ~10 Å/voxel, default",
        "architecture": "UpsampleUnet48",
        "arch_kwargs": {"ch": 48, "shared_weights": True, "final_activation": "identity"},
        "discriminator": "SimpleDiscriminator",
        "patch": 32,
        "batch_size": 8,
        "steps": 1600,
        "lr": 2e-4,
        "l1_weight": 100.0,
        "seed": 0,
        "stream": {"p_single": 0.3, "max_particles": 40, "snr_range": [0.1, 2.0], "tilt_range": [50.0, 70.0]},
    },
}


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def held_out_set(maps: dict[str, np.ndarray], *, n: int = 40, seed: int = 12345, box: int = 64):
    """The fixed held-out test set: half single centred particles, half 10-40 particles.

    Made only from :data:`HELD_OUT` proteins, SNR 0.5 and a ±60° missing wedge.
    """
    parts = [maps[k] for k in HELD_OUT if k in maps]
    if not parts:
        raise ValueError(f"none of the held-out particles {HELD_OUT} is in the maps folder")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 1 if i < n // 2 else int(rng.integers(10, 41))
        out.append(thesis_pair(parts, rng, box=box, n_particles=k, snr=0.5, tilt_max_deg=60.0))
    return out


def evaluate_held_out(model: LoadedModel, pairs, *, precision: str = "fp32") -> dict:
    """Median (5th, 50th, 95th percentiles) of SSIM/PSNR/MSE/NRMSE for input and output."""
    from ..inference import denoise

    noisy_rows, out_rows = [], []
    for noisy, clean in pairs:
        den = denoise(noisy, model, device="cpu", precision=precision)
        noisy_rows.append(image_metrics(noisy, clean))
        out_rows.append(image_metrics(den, clean))
    return {"input": summarize(noisy_rows), "denoised": summarize(out_rows), "n_volumes": len(pairs)}


def run_recipe(name: str, maps_dir: str | Path, out_dir: str | Path, *, steps: int | None = None, log=print) -> Path:
    """Train recipe `name` on the maps in `maps_dir` and write the model into `out_dir`."""
    r = RECIPES[name]
    steps = r["steps"] if steps is None else steps
    maps = load_particle_maps(maps_dir)
    train_names = sorted(k for k in maps if k not in HELD_OUT)
    rng = np.random.default_rng(r["seed"])
    torch.manual_seed(r["seed"])
    stream = ThesisStream([maps[k] for k in train_names], rng, batch_size=r["batch_size"], patch=r["patch"],
                          p_single=r["stream"]["p_single"], max_particles=r["stream"]["max_particles"],
                          snr_range=tuple(r["stream"]["snr_range"]), tilt_range=tuple(r["stream"]["tilt_range"]))
    gen = UpsampleUnet48(**r["arch_kwargs"])
    disc = SimpleDiscriminator(r["patch"])
    cfg = TrainConfig(steps=steps, mode="gan", lr=r["lr"], lr_d=r["lr"], l1_weight=r["l1_weight"], seed=r["seed"], log_every=20)
    t0 = time.time()

    def progress(step, total, entry):
        log(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in entry.items()}), flush=True)

    result = train(gen, stream, cfg, discriminator=disc, progress=progress)
    train_seconds = time.time() - t0
    dev = torch.device("cpu")
    lm = LoadedModel.from_module(gen.eval(), name=name)
    t1 = time.time()
    scores = evaluate_held_out(lm, held_out_set(maps))
    log(json.dumps(scores), flush=True)
    card = {
        "description": r["description"],
        "architecture": r["architecture"],
        "arch_kwargs": r["arch_kwargs"],
        "ndim": 3,
        "voxel_size_A": 10.0,
        "normalization": NORMALIZATION,
        "overlap": 24,
        "training": {
            "command": f"python -m napari_cryoden.training.recipes {name} --maps ../shared/data/maps_10A --out models"
                       + (f" --steps {steps}" if steps != r["steps"] else ""),
            "data": (
                "thesis dataset (van Gijn 2019, sec. 3.1) made on the fly from SHREC protein maps at 10 Å/voxel "
                f"(shared/data/maps_10A): {', '.join(train_names)}; {r['patch']}^3 volumes with one centred particle "
                f"(p={r['stream']['p_single']}) or 2-{r['stream']['max_particles']} non-overlapping particles in random orientations"
            ),
            "noise_model": (
                f"missing wedge of a single-axis tilt series about Y, max tilt uniform in {r['stream']['tilt_range']} deg, "
                f"plus white Gaussian noise, SNR = var(clean)/var(noise) log-uniform in {r['stream']['snr_range']}; "
                "augmentation: flips along Z, Y, X and random contrast sign"
            ),
            "losses": f"GAN: BCE adversarial (SimpleDiscriminator, conditional) + {r['l1_weight']} x L1 content",
            "optimizer": f"Adam lr {r['lr']}, betas (0.5, 0.999)",
            "batch_size": r["batch_size"],
            "patch": r["patch"],
            "steps": result.steps_done,
            "seed": r["seed"],
            "precision": "bf16 autocast (generator), fp32 (discriminator)",
            "seconds": round(train_seconds, 1),
            "hardware": _hardware(dev),
            "torch": torch.__version__,
            "final_losses": result.history[-1] if result.history else {},
        },
        "held_out": {
            "particles": list(HELD_OUT),
            "set": "40 volumes of 64^3: 20 single centred particles, 20 with 10-40 particles; SNR 0.5, ±60° wedge, seed 12345",
            "metrics": scores,
            "evaluation_seconds": round(time.time() - t1, 1),
            "command": "python -m napari_cryoden.training.recipes upsampleunet48-gan --evaluate-only --maps ../shared/data/maps_10A --out models",
        },
        "deviations_from_thesis": (
            "final activation is identity instead of softplus, because inputs are normalised to zero median; "
            "training patches are 32^3 instead of 64^3 to fit a one-hour CPU budget; "
            "the SimpleDiscriminator head is at least 8 wide and runs in fp32"
        ),
        "licence": "BSD-3-Clause (weights and code); training maps derived from PDB entries (CC0)",
    }
    return save_model(gen, out_dir, name, card)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m napari_cryoden.training.recipes", description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument("--maps", default="../shared/data/maps_10A", help="folder of particle maps (10 Å/voxel)")
    p.add_argument("--out", default="models", help="output folder")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps (smoke tests)")
    p.add_argument("--evaluate-only", action="store_true", help="re-measure the held-out scores of an existing model")
    a = p.parse_args(argv)
    if a.evaluate_only:
        from ..models import load_model

        lm = load_model(Path(a.out) / f"{a.name}.json")
        print(json.dumps(evaluate_held_out(lm, held_out_set(load_particle_maps(a.maps))), indent=1))
        return 0
    path = run_recipe(a.name, a.maps, a.out, steps=a.steps)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
