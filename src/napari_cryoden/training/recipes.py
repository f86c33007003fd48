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
from ..models import NORMALIZATION, LoadedModel, SimpleDiscriminator, build, save_model
from ..simulate import load_particle_maps, thesis_pair
from .data import MixedStream, RealisticStream, ThesisStream
from .supervised import TrainConfig, train

__all__ = ["HELD_OUT", "RECIPES", "evaluate_held_out", "run_recipe"]

#: Proteins never used in training; the held-out test set is made from these alone.
HELD_OUT = ("1u6g", "3h84")

RECIPES = {
    "upsampleunet48-gan": {
        "description": "UpsampleUnet48 GAN (van Gijn 2019, sec. 3.7), 3D tomograms at ~10 Å/voxel, default",
        "architecture": "UpsampleUnet48",
        "arch_kwargs": {"ch": 48, "shared_weights": True, "final_activation": "identity"},
        "mode": "gan",
        "discriminator": "SimpleDiscriminator",
        "patch": 32,
        "batch_size": 8,
        "steps": 1600,
        "lr": 2e-4,
        "l1_weight": 100.0,
        "seed": 0,
        "overlap": 24,
        "stream": {"p_single": 0.3, "max_particles": 40, "snr_range": [0.1, 2.0], "tilt_range": [50.0, 70.0]},
    },
    "fast-3d": {
        "description": "FastUNet3D (half-resolution U-Net, ~10x less arithmetic than the default), 3D tomograms "
                       "at ~10 Å/voxel, for speed and previews",
        "architecture": "FastUNet3D",
        "arch_kwargs": {"ch": 32, "refine": 8, "final_activation": "identity"},
        "mode": "ae",
        "loss": "l1",
        "patch": 40,
        "batch_size": 8,
        "steps": 2400,
        "lr": 5e-4,
        "seed": 0,
        "overlap": 32,
        "deviations": "not a thesis network: designed here for throughput (see napari_cryoden.models.fast)",
        "stream": {"p_single": 0.3, "max_particles": 40, "snr_range": [0.1, 2.0], "tilt_range": [50.0, 70.0]},
        "realistic": {"weight": 0.75, "shape": [64, 128, 128], "patches_per_volume": 32, "density": [0.05, 0.25],
                      "defocus_um": [1.5, 5.0], "dose_total": [40.0, 160.0], "tilt_range": [50.0, 65.0],
                      "max_membranes": 2},
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


def realistic_held_out_set(maps: dict[str, np.ndarray], *, n: int = 4, seed: int = 54321,
                           shape: tuple[int, int, int] = (64, 128, 128)):
    """The fixed realistic held-out set: crowded tomograms of :data:`HELD_OUT` proteins only.

    Volume fraction 0.15, one vesicle, ice, ±60° in 3° steps, defocus 2, 3, 4, 5 µm and dose
    120, 100, 80, 60 e-/Å² (cycled), 10 Å/voxel; see :func:`~napari_cryoden.simulate.simulate_tomogram`.
    """
    from ..simulate.tomogram import simulate_tomogram

    parts = {k: maps[k] for k in HELD_OUT if k in maps}
    if not parts:
        raise ValueError(f"none of the held-out particles {HELD_OUT} is in the maps folder")
    out = []
    for i in range(n):
        sim = simulate_tomogram(shape, particles=parts, density=0.15, membranes=1, defocus_um=2.0 + i % 4,
                                dose_total=120.0 - 20 * (i % 4), seed=seed + i)
        out.append((sim.noisy, sim.clean))
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


def _stream(r: dict, maps: dict[str, np.ndarray], train_names: list[str], rng: np.random.Generator):
    st = r["stream"]
    thesis = ThesisStream([maps[k] for k in train_names], rng, batch_size=r["batch_size"], patch=r["patch"],
                          p_single=st["p_single"], max_particles=st["max_particles"],
                          snr_range=tuple(st["snr_range"]), tilt_range=tuple(st["tilt_range"]))
    if "realistic" not in r:
        return thesis
    re_ = r["realistic"]
    realistic = RealisticStream(
        {k: maps[k] for k in train_names}, rng, batch_size=r["batch_size"], patch=r["patch"],
        shape=tuple(re_["shape"]), patches_per_volume=re_["patches_per_volume"],
        density=tuple(re_["density"]), defocus_um=tuple(re_["defocus_um"]),
        dose_total=tuple(re_["dose_total"]), tilt_range=tuple(re_["tilt_range"]), max_membranes=re_["max_membranes"],
    )
    return MixedStream([realistic, thesis], [re_["weight"], 1 - re_["weight"]], rng, batch_size=r["batch_size"])


def _realistic_text(r: dict) -> str:
    re_ = r["realistic"]
    return (
        f"; mixed with probability {re_['weight']} with patches of realistic simulated tomograms "
        f"(napari_cryoden.simulate.simulate_tomogram, {tuple(re_['shape'])} voxels, {re_['patches_per_volume']} patches "
        f"each, protein volume fraction {re_['density']}, 0-{re_['max_membranes']} vesicles, ice, tilt series to "
        f"{re_['tilt_range']} deg in 3 deg steps, CTF at defocus {re_['defocus_um']} um with phase flipping, "
        f"dose {re_['dose_total']} e-/A^2 with shot noise and radiation damage, weighted back-projection; target: "
        "the noiseless reconstruction)"
    )


def run_recipe(name: str, maps_dir: str | Path, out_dir: str | Path, *, steps: int | None = None, log=print) -> Path:
    """Train recipe `name` on the maps in `maps_dir` and write the model into `out_dir`."""
    r = RECIPES[name]
    steps = r["steps"] if steps is None else steps
    maps = load_particle_maps(maps_dir)
    train_names = sorted(k for k in maps if k not in HELD_OUT)
    rng = np.random.default_rng(r["seed"])
    torch.manual_seed(r["seed"])
    stream = _stream(r, maps, train_names, rng)
    gen = build(r["architecture"], **r["arch_kwargs"])
    disc = SimpleDiscriminator(r["patch"]) if r["mode"] == "gan" else None
    cfg = TrainConfig(steps=steps, mode=r["mode"], loss=r.get("loss", "l1"), lr=r["lr"], lr_d=r["lr"],
                      l1_weight=r.get("l1_weight", 100.0), seed=r["seed"], log_every=20)
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
    realistic_scores = evaluate_held_out(lm, realistic_held_out_set(maps)) if "realistic" in r else None
    if realistic_scores is not None:
        log(json.dumps(realistic_scores), flush=True)
    card = {
        "description": r["description"],
        "architecture": r["architecture"],
        "arch_kwargs": r["arch_kwargs"],
        "ndim": 3,
        "voxel_size_A": 10.0,
        "normalization": NORMALIZATION,
        "overlap": r["overlap"],
        "training": {
            "command": f"python -m napari_cryoden.training.recipes {name} --maps ../shared/data/maps_10A --out models"
                       + (f" --steps {steps}" if steps != r["steps"] else ""),
            "data": (
                "thesis dataset (van Gijn 2019, sec. 3.1) made on the fly from SHREC protein maps at 10 Å/voxel "
                f"(shared/data/maps_10A): {', '.join(train_names)}; {r['patch']}^3 volumes with one centred particle "
                f"(p={r['stream']['p_single']}) or 2-{r['stream']['max_particles']} non-overlapping particles in random orientations"
                + (_realistic_text(r) if "realistic" in r else "")
            ),
            "noise_model": (
                f"thesis samples: missing wedge of a single-axis tilt series about Y, max tilt uniform in {r['stream']['tilt_range']} deg, "
                f"plus white Gaussian noise, SNR = var(clean)/var(noise) log-uniform in {r['stream']['snr_range']}; "
                "augmentation: flips along Z, Y, X and random contrast sign"
            ),
            "losses": (f"GAN: BCE adversarial (SimpleDiscriminator, conditional) + {r['l1_weight']} x L1 content"
                       if r["mode"] == "gan" else f"supervised {r.get('loss', 'l1').upper()} to the clean target"),
            "optimizer": f"Adam lr {r['lr']}, betas (0.5, 0.999)",
            "batch_size": r["batch_size"],
            "patch": r["patch"],
            "steps": result.steps_done,
            "seed": r["seed"],
            "precision": "bf16 autocast" + (" (generator), fp32 (discriminator)" if r["mode"] == "gan" else ""),
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
            "command": f"python -m napari_cryoden.training.recipes {name} --evaluate-only --maps ../shared/data/maps_10A --out models",
            **({"realistic_set": realistic_held_out_set.__doc__.split("\n\n")[1].strip().replace("\n", " "),
                "realistic_metrics": realistic_scores} if realistic_scores is not None else {}),
        },
        "deviations_from_thesis": r.get("deviations", (
            "final activation is identity instead of softplus, because inputs are normalised to zero median; "
            "training patches are 32^3 instead of 64^3 to fit a one-hour CPU budget; "
            "the SimpleDiscriminator head is at least 8 wide and runs in fp32"
        )),
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
        maps = load_particle_maps(a.maps)
        scores = {"thesis": evaluate_held_out(lm, held_out_set(maps))}
        if "realistic" in RECIPES[a.name]:
            scores["realistic"] = evaluate_held_out(lm, realistic_held_out_set(maps))
        print(json.dumps(scores, indent=1))
        return 0
    path = run_recipe(a.name, a.maps, a.out, steps=a.steps)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
