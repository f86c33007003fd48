"""Recipes that (re)build the shipped pretrained models, with their held-out evaluation.

Each recipe is fixed: data, split, network, losses, steps and seed. Run one with::

    python -m napari_cryoden.recipes upsampleunet48-gan \
        --maps ../shared/data/maps_10A --out models

It writes ``<name>.safetensors`` and the model card ``<name>.json`` (architecture, voxel size,
normalisation, data and noise model, steps, seed, time, hardware, held-out metrics, sha256,
licence). Training never runs in CI; tests run the same code for a handful of steps.

The 2D recipe ``n2n-unet-2d`` trains the Noise2Noise U-Net (Lehtinen et al. 2018) on the even/odd
frame sums of micrographs simulated on the fly at 5 Å/pixel (:func:`train_micrograph_n2n`) and
scores it on a fixed held-out set of micrographs against an oracle best-σ Gaussian filter and
BM3D (:func:`evaluate_micrographs`)::

    python -m napari_cryoden.recipes n2n-unet-2d --maps ../shared/data/maps_5A --out models

References
----------
.. [1] Lehtinen, J. et al. (2018). Noise2Noise: Learning image restoration without clean data.
   ICML, PMLR 80, 2965-2974 (section 2: L2 loss against noisy targets; appendix A.1, table 2:
   the network).
.. [2] Tan, Z., Cui, L. & Luo, X. Denoising natural and cryo-EM images without clean data
   (Noise2Noise on the sums of the even and the odd frames of cryo-EM movies; Adam with
   β = (0.9, 0.99), ε = 1e-8, learning rate 0.001, section II.B).
.. [3] Dabov, K. et al. (2007). Image denoising by sparse 3-D transform-domain collaborative
   filtering. IEEE Trans. Image Process. 16(8), 2080-2095 (BM3D; the ``bm3d`` package of
   Mäkinen, Azzari & Foi 2020).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .device import hardware_name
from .evaluation.experiments import HELD_OUT, REALISTIC_SET, micrograph_held_out_set, realistic_held_out_set
from .evaluation.held_out import evaluate_held_out, evaluate_micrographs, held_out_set
from .metrics import image_metrics
from .models import NORMALIZATION, LoadedModel, Pix2PixDiscriminator, SimpleDiscriminator, build, save_model
from .simulate import load_particle_maps
from .training.data import MicrographPairs, MixedStream, RealisticStream, ThesisStream, parallel_stream
from .training.loop import Checkpoint, Done, LoopConfig, Losses, iter_train
from .training.supervised import TrainConfig, TrainResult, supervised_stepper

__all__ = ["REALISTIC_RANGES", "RECIPES", "main", "recipe", "recipe_stream", "run_recipe", "save_recipe_model", "train_micrograph_n2n"]

#: The thesis training stream (van Gijn 2019, sec. 3.1) shared by the 3D recipes.
_THESIS_STREAM = {"p_single": 0.3, "max_particles": 40, "snr_range": [0.1, 2.0], "tilt_range": [50.0, 70.0]}
#: Realistic crowded tomograms mixed into the thesis stream with probability `weight`.
_REALISTIC = {"weight": 0.5, "shape": [64, 128, 128], "patches_per_volume": 32, "density": [0.05, 0.25],
              "defocus_um": [1.5, 5.0], "dose_total": [40.0, 160.0], "tilt_range": [50.0, 65.0], "max_membranes": 2}
#: Named ranges of the realistic tomograms (``--realistic``), merged into a 3D recipe's ``"realistic"``
#: entry: "standard" as the shipped models were trained; "low-dose" widens the stream toward real
#: low-dose data: total dose log-uniform from 15 to 160 e-/Å², defocus 1-6 µm, specimens up to
#: 3000 Å thick (more attenuation), and detector noise correlated between neighbouring pixels.
REALISTIC_RANGES = {
    "standard": {},
    "low-dose": {"dose_total": [15.0, 160.0], "dose_log": True, "defocus_um": [1.0, 6.0],
                 "ice_thickness": [640.0, 3000.0], "detector_correlation": [0.0, 0.5]},
}
_UU48 = {"ch": 48, "shared_weights": True, "final_activation": "identity"}
_THESIS_DEVIATIONS = (
    "final activation is identity instead of softplus, because inputs are normalised to zero median; "
    "training patches are 32^3 instead of 64^3 and the runs are far shorter than the thesis's 100 epochs, "
    "to fit a one-hour CPU budget"
)

#: What the thesis auto-encoder recipes share.
_THESIS_AE = {"arch_kwargs": _UU48, "mode": "ae", "loss": "l1", "patch": 32, "batch_size": 8, "lr": 2e-4, "seed": 0,
              "overlap": 24, "deviations": _THESIS_DEVIATIONS, "stream": _THESIS_STREAM, "realistic": _REALISTIC}

RECIPES = {
    "upsampleunet48-gan": {
        "description": "UpsampleUnet48 GAN (van Gijn 2019, sec. 3.7), 3D tomograms at ~10 Å/voxel, default",
        "architecture": "UpsampleUnet48",
        "arch_kwargs": _UU48,
        "mode": "gan",
        "discriminator": "SimpleDiscriminator",
        "patch": 32,
        "batch_size": 8,
        "steps": 2000,
        "lr": 2e-4,
        "rampdown": 0.3,
        "l1_weight": 100.0,
        "seed": 0,
        "overlap": 24,
        "deviations": _THESIS_DEVIATIONS + "; the SimpleDiscriminator head is at least 8 wide and runs in fp32; "
                      "the learning rates ramp down to 0 over the last 30% of the steps",
        "stream": _THESIS_STREAM,
        "realistic": {**_REALISTIC, "weight": 0.75},
    },
    "upsampleunet48-ae": {
        "description": "UpsampleUnet48 auto-encoder (van Gijn 2019, sec. 3.6), L1, 3D tomograms at ~10 Å/voxel",
        "architecture": "UpsampleUnet48",
        "steps": 500,
        **_THESIS_AE,
    },
    "unet48-ae": {
        "description": "Unet48 auto-encoder (van Gijn 2019, sec. 3.5), L1, 3D tomograms at ~10 Å/voxel",
        "architecture": "Unet48",
        "steps": 1000,
        **_THESIS_AE,
    },
    "upsampleunet48-wgangp": {
        "description": "UpsampleUnet48 WGAN-GP with a Pix2PixDiscriminator critic (van Gijn 2019, sec. 3.8; "
                       "Gulrajani et al. 2017), 3D tomograms at ~10 Å/voxel",
        "architecture": "UpsampleUnet48",
        "arch_kwargs": _UU48,
        "mode": "wgangp",
        "discriminator": "Pix2PixDiscriminator",
        "patch": 32,
        "batch_size": 8,
        "steps": 600,
        "lr": 1e-4,
        "rampdown": 0.3,
        "betas": [0.0, 0.9],
        "n_critic": 2,
        "gp_weight": 10.0,
        "l1_weight": 100.0,
        "seed": 0,
        "overlap": 24,
        "deviations": _THESIS_DEVIATIONS + "; 2 critic updates per generator update instead of 5 (Gulrajani et "
                      "al. 2017), for the same reason; the critic has no batch norm and runs in fp32; the "
                      "learning rates ramp down to 0 over the last 30% of the steps",
        "stream": _THESIS_STREAM,
        "realistic": _REALISTIC,
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
        "stream": _THESIS_STREAM,
        "realistic": {**_REALISTIC, "weight": 0.75},
    },
    "n2n-unet-2d": {
        "description": "Noise2Noise U-Net (Lehtinen et al. 2018, appendix A.1) trained on the even/odd frame sums of "
                       "simulated micrographs, 2D micrographs at ~5 Å/pixel, the 2D default",
        "ndim": 2,
        "maps": "../shared/data/maps_5A",
        "pixel_size": 5.0,
        "architecture": "N2NUNet2D",
        "arch_kwargs": {"ch": 48},
        "mode": "ae",  # content loss only (SupervisedStep); the targets are noisy halves: Noise2Noise
        "noise2noise": True,
        "loss": "l2",
        "patch": 128,
        "batch_size": 8,
        "steps": 4000,
        # at 1e-3 (the paper's rate, bf16) a 3600-step run diverged near step 1850; half the rate
        # and a clipped gradient norm (typical norms 0.05-0.1 early on) kept 4000 steps stable
        "lr": 5e-4,
        "max_grad_norm": 0.5,
        "betas": [0.9, 0.99],
        "rampdown": 0.3,
        "seed": 0,
        "overlap": 128,
        "monitor_every": 500,
        "monitor_n": 4,
        "micrographs": {"shape": [512, 512], "patches_per_micrograph": 32, "density": [0.05, 0.35],
                        "defocus_um": [0.8, 3.0], "dose_total": [30.0, 120.0], "n_frames": 40,
                        "ice_thickness": [300.0, 700.0]},
        "held_out": {"n": 8, "shape": [512, 512], "seed": 24680},
    },
}

def recipe(name: str, realistic: str = "standard", *, patch: int | None = None,
           batch_size: int | None = None) -> dict:
    """Recipe `name` (3D or 2D) with the options of a run at another scale or on other data.

    Parameters
    ----------
    name : str
        A key of :data:`RECIPES`.
    realistic : str, default="standard"
        The ranges of the realistic tomograms (a key of :data:`REALISTIC_RANGES`); 3D recipes
        with realistic tomograms only, unless "standard".
    patch : int, optional
        Training patch edge in voxels (pixels for 2D), a multiple of 16 and at least 16 (the
        GPU runs use 64 for 3D, 256 for 2D); for 2D at most the simulated micrographs' edge.
    batch_size : int, optional
        Patches per step (>= 1).

    Returns
    -------
    dict
        ``RECIPES[name]`` itself when nothing changes, else a merged copy.

    Raises
    ------
    ValueError
        For an unknown `realistic`, one other than "standard" for a recipe without realistic
        tomograms (the 2D recipe and the thesis-only ones), or a bad `patch` or `batch_size`.
    """
    if realistic not in REALISTIC_RANGES:
        raise ValueError(f"realistic must be one of {', '.join(REALISTIC_RANGES)}, got {realistic!r}")
    r = RECIPES[name]
    changes: dict = {}
    if realistic != "standard":
        if "realistic" not in r:
            raise ValueError(f"recipe {name} trains on no realistic tomograms; realistic={realistic!r} needs one that does")
        changes["realistic"] = REALISTIC_RANGES[realistic]
    if patch is not None:
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 16 or patch % 16:
            raise ValueError(f"patch must be a multiple of 16, at least 16, got {patch!r}")
        if r.get("ndim", 3) == 2 and patch > min(r["micrographs"]["shape"]):
            raise ValueError(f"patch {patch} does not fit in the recipe's {r['micrographs']['shape']} micrographs")
        changes["patch"] = patch
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        changes["batch_size"] = batch_size
    return _deep_update(r, changes) if changes else r


def _run_options(realistic: str = "standard", patch: int | None = None, batch_size: int | None = None) -> dict:
    """The run options that differ from the recipe's, as recorded in checkpoints (JSON-safe)."""
    return {k: v for k, v in (("realistic", realistic), ("patch", patch), ("batch_size", batch_size))
            if v is not None and v != "standard"}


def _options_flags(options: dict) -> str:
    """The command-line flags of :func:`_run_options`' dict (empty for the recipe as it is)."""
    return "".join(f" --{k.replace('_', '-')} {v}" for k, v in options.items())


def recipe_stream(r: dict, maps: dict[str, np.ndarray], train_names: list[str], rng: np.random.Generator):
    """The training stream of 3D recipe `r` (an entry of :data:`RECIPES`).

    :class:`~.data.ThesisStream` of the `train_names` maps, mixed (:class:`~.data.MixedStream`)
    with :class:`~.data.RealisticStream` when the recipe has a ``"realistic"`` entry, all drawing
    from `rng`. A module-level function of plain arguments, so that
    :func:`~.data.parallel_stream` can build it in worker processes.

    Returns
    -------
    ThesisStream or MixedStream
        Endless batches ``(noisy, clean)``, float32 tensors of shape
        (``r["batch_size"]``, 1, ``r["patch"]``, ``r["patch"]``, ``r["patch"]``).
    """
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
        dose_log=re_.get("dose_log", False), ice_thickness=re_.get("ice_thickness"),
        detector_correlation=re_.get("detector_correlation"),
    )
    return MixedStream([realistic, thesis], [re_["weight"], 1 - re_["weight"]], rng, batch_size=r["batch_size"])


def _discriminator(r: dict) -> torch.nn.Module | None:
    """The recipe's discriminator (GAN) or critic (WGAN-GP, no batch norm); None for auto-encoders."""
    kind = r.get("discriminator")
    if r["mode"] == "ae":
        return None
    if kind == "SimpleDiscriminator":
        return SimpleDiscriminator(r["patch"])
    if kind == "Pix2PixDiscriminator":
        return Pix2PixDiscriminator(norm=None if r["mode"] == "wgangp" else "batch")
    raise ValueError(f"recipe mode {r['mode']!r} needs a discriminator, got {kind!r}")


def _losses_text(r: dict) -> str:
    content = f"{r.get('loss', 'l1').upper()} content"
    if r["mode"] == "gan":
        return f"GAN: BCE adversarial ({r['discriminator']}, conditional) + {r['l1_weight']} x {content}"
    if r["mode"] == "wgangp":
        return (f"WGAN-GP (Gulrajani et al. 2017, algorithm 1): Wasserstein critic loss with gradient penalty "
                f"lambda = {r['gp_weight']}, {r['n_critic']} critic updates per generator update "
                f"({r['discriminator']} without batch norm, conditional); generator: -critic + {r['l1_weight']} x {content}")
    return f"supervised {r.get('loss', 'l1').upper()} to the clean target"


def _rampdown_text(r: dict) -> str:
    return f"half-cosine ramp-down to 0 over the last {r['rampdown']:.0%} of the steps"


def _realistic_text(r: dict) -> str:
    re_ = r["realistic"]
    return (
        f"; mixed with probability {re_['weight']} with patches of realistic simulated tomograms "
        f"(napari_cryoden.simulate.simulate_tomogram, {tuple(re_['shape'])} voxels, {re_['patches_per_volume']} patches "
        f"each, protein volume fraction {re_['density']}, 0-{re_['max_membranes']} vesicles, ice, tilt series to "
        f"{re_['tilt_range']} deg in 3 deg steps, CTF at defocus {re_['defocus_um']} um with phase flipping, "
        f"dose {re_['dose_total']} e-/A^2{' (log-uniform)' if re_.get('dose_log') else ''} with shot noise and "
        "radiation damage"
        + (f", specimen thickness {re_['ice_thickness']} A (beam attenuation)" if re_.get("ice_thickness") else "")
        + (f", detector noise with neighbour correlation {re_['detector_correlation']}"
           if re_.get("detector_correlation") else "")
        + ", weighted back-projection; target: the noiseless reconstruction)"
    )


#: Format tag of a recipe run's checkpoint (``--workdir``).
RECIPE_CHECKPOINT_FORMAT = "napari-cryoden recipe checkpoint 1"
#: Steps between the checkpoints of a run with a work folder (and one when a window ends).
CHECKPOINT_EVERY = 500
#: Where a 3D recipe's batches are simulated (:func:`run_recipe`'s `data`).
DATA_SOURCES = ("host", "device")


def window_seed(seed: int, start: int) -> int:
    """The data seed of a window of training that starts after `start` steps.

    The first window (``start == 0``) uses the recipe's seed itself, so an uninterrupted run
    draws the batches the shipped models were trained on. A resumed window cannot restore the
    state of a stream that simulates volumes ahead of the batches it serves, so its stream is
    seeded anew from ``SeedSequence([seed, start])``: equally distributed batches, the same ones
    for the same window boundaries.
    """
    if start == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(start)]).generate_state(1)[0])


class RecipeSession:
    """The state of a recipe run on disk, for runs split into windows of wall-clock time.

    Without a work folder it only counts time (nothing is written). With one, every
    :class:`~napari_cryoden.training.loop.Checkpoint` writes ``checkpoint.safetensors`` (the
    generator, the discriminator, both Adam states and torch's random state; under 16 MiB for
    the 3D recipes) and ``checkpoint.json``, atomically, through
    :mod:`~napari_cryoden.training.checkpoint`. The state records the recipe, the steps planned
    and done, the training seconds and one entry per window (steps, seconds, device, hardware,
    where the batches were made), which the model card copies.

    Parameters
    ----------
    name : str
        The recipe.
    steps : int
        Steps planned in all.
    workdir : path-like, optional
    resume : bool
        Continue the checkpoint in `workdir` (same recipe and steps).
    data : {"host", "device"}, default="host"
        Where this window's batches are made (:data:`DATA_SOURCES`); recorded per window.
    options : dict, optional
        The run's options that differ from the recipe (``realistic``, ``patch``, ``batch_size``;
        see :func:`recipe`); recorded, and a resume must use the same.

    Raises
    ------
    ValueError
        For a resume without a work folder or checkpoint, a work folder that already holds a
        checkpoint without `resume`, or a checkpoint of another recipe, step count or options.
    """

    def __init__(self, name: str, steps: int, workdir: str | Path | None, *, resume: bool, data: str = "host",
                 options: dict | None = None):
        from .training.checkpoint import check_workdir

        self.name, self.steps, self.data, self.options = name, int(steps), data, dict(options or {})
        self.folder = check_workdir(workdir, resume, overwrite=False)
        self.resume = resume
        self.windows: list[dict] = []
        self.history: list[dict] = []
        self.start, self.seconds_before = 0, 0.0
        self.device, self.precision = "cpu", "fp32"

    def restore(self, stepper) -> None:
        """Load the checkpoint into `stepper` (weights, optimizers, torch's random state) when resuming."""
        from .training.checkpoint import load_checkpoint, restore_optimizer, sub_state

        self.device, self.precision = str(stepper.dev), stepper.precision
        if not self.resume:
            return
        tensors, state = load_checkpoint(self.folder, fmt=RECIPE_CHECKPOINT_FORMAT)
        if state.get("recipe") != self.name or state.get("steps") != self.steps:
            raise ValueError(f"the checkpoint in {self.folder} is of {state.get('recipe')} for {state.get('steps')} "
                             f"steps, not {self.name} for {self.steps}; resume with the same recipe and --steps")
        if state.get("options", {}) != self.options:
            was, now = _options_flags(state.get("options", {})).strip(), _options_flags(self.options).strip()
            raise ValueError(f"the checkpoint in {self.folder} was trained with options [{was}], not [{now}]; "
                             "resume with the same")
        try:
            stepper.generator.load_state_dict(sub_state(tensors, "model"))
            restore_optimizer("opt_g", stepper.opt_g, tensors, state["opt_g_extra"])
            if stepper.discriminator is not None:
                stepper.discriminator.load_state_dict(sub_state(tensors, "disc"))
                restore_optimizer("opt_d", stepper.opt_d, tensors, state["opt_d_extra"])
            torch.set_rng_state(tensors["rng.torch"])
            self.start, self.seconds_before = int(state["step"]), float(state["seconds"])
            self.windows, self.history = list(state["windows"]), list(state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            text = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__
            raise ValueError(f"checkpoint unreadable: {self.folder}: {text}") from None
        if not 0 <= self.start <= self.steps:
            raise ValueError(f"checkpoint unreadable: {self.folder}: step {self.start} of {self.steps}")

    def window(self, step: int, seconds: float, workers: int, **extra) -> dict:
        """This window's record after `step` steps and `seconds` of training in all (with `extra`
        figures of the window, e.g. the 2D recipes' ``simulation_seconds`` and ``micrographs``)."""
        return {"steps": [self.start, int(step)], "seconds": round(seconds - self.seconds_before, 1),
                "device": self.device, "hardware": hardware_name(torch.device(self.device)),
                "precision": self.precision, "data": self.data, "workers": workers, "torch": torch.__version__, **extra}

    def budget_spent(self, done, minutes: float | None, log=print) -> bool:
        """Whether the time budget ended this window (`done`, the loop's last event) before the
        last step; if so, `log` says where the checkpoint is and how to continue."""
        if done.reason != "budget":
            return False
        log(f"stopped after {done.step} of {self.steps} steps at the {minutes:g}-minute budget; checkpoint in "
            f"{self.folder}; continue with --resume", flush=True)
        return True

    def total(self, key: str, this_window: float = 0.0) -> float:
        """The sum of `key` over the earlier windows' records, plus `this_window`."""
        return sum(float(w.get(key, 0.0)) for w in self.windows) + this_window

    def save(self, stepper, step: int, seconds: float, workers: int, **extra) -> Path | None:
        """Write the checkpoint of `step` (nothing without a work folder)."""
        from .training.checkpoint import save_checkpoint, stepper_tensors

        if self.folder is None:
            return None
        tensors, optimizer_extra = stepper_tensors(stepper)
        tensors["rng.torch"] = torch.get_rng_state()
        state = {"recipe": self.name, "steps": self.steps, "options": self.options, "step": int(step),
                 "seconds": float(seconds),
                 "windows": self.windows + [self.window(step, seconds, workers, **extra)], "history": self.history,
                 **optimizer_extra}
        return save_checkpoint(self.folder, tensors, state, fmt=RECIPE_CHECKPOINT_FORMAT)


def run_recipe(name: str, maps_dir: str | Path, out_dir: str | Path, *, steps: int | None = None, log=print,
               overrides: dict | None = None, bm3d: bool | None = None, workers: int = 0, device: str = "auto",
               minutes: float | None = None, workdir: str | Path | None = None,
               resume: bool = False, data: str = "host", realistic: str = "standard", patch: int | None = None,
               batch_size: int | None = None) -> Path | None:
    """Train recipe `name` on the maps in `maps_dir` and write the model into `out_dir`.

    Parameters
    ----------
    name : str
        A key of :data:`RECIPES`.
    maps_dir, out_dir : path-like
        Particle maps at the recipe's voxel size; output folder.
    steps : int, optional
        Override the recipe's steps (smoke tests).
    log : callable
        Called like :func:`print` with one JSON line per logged step.
    overrides : dict, optional
        2D recipes only: entries merged (recursively) into the recipe, e.g.
        ``{"patch": 64, "micrographs": {"shape": [64, 64]}, "held_out": {"n": 2}}`` for smoke
        tests; recorded in the card as ``training.overrides_not_in_command``.
    bm3d : bool, optional
        2D recipes only: score BM3D on the held-out set (default: when ``bm3d`` is installed).
    workers : int, default=0
        3D recipes only: make the training batches in this many worker processes
        (:func:`~napari_cryoden.training.data.parallel_stream`, each with its own seed derived from the recipe's).
        0 makes them on the training thread, as the shipped models were trained; other values
        draw other (equally distributed) batches, so the weights differ from a ``workers=0`` run.
    device : {"auto", "cpu", "cuda"}, default="auto"
        Where to train (bf16 autocast where the device has it).
    data : {"host", "device"}, default="host"
        3D recipes: where the batches are simulated. ``"host"``: the numpy streams of
        :func:`recipe_stream` on the CPU (with `workers`), as the shipped models were trained;
        ``"device"``: :class:`~napari_cryoden.simulate.batched.BatchedStream`, the same recipe
        simulated in batches with torch on the training device (same distributions, other
        draws), which keeps a GPU fed.
    realistic : str, default="standard"
        3D recipes with realistic tomograms: their ranges (:data:`REALISTIC_RANGES`);
        "low-dose" widens them toward low-dose data (recorded in the card's command).
    patch, batch_size : int, optional
        Train on patches of this edge, in batches of this size (:func:`recipe`; recorded in
        the card's command), e.g. 64 and 16 for a 3D run on a GPU.
    minutes : float, optional
        Wall-clock budget of this window of training; when it is spent, the state
        is checkpointed into `workdir` and None is returned (continue with ``resume=True``).
    workdir : path-like, optional
        Folder of the run's checkpoint (every :data:`CHECKPOINT_EVERY` steps and at
        the end of a window); needed with `minutes`.
    resume : bool, default=False
        Continue the checkpoint in `workdir`, on this or another machine; the batches of each
        window come from a stream seeded by :func:`window_seed`.

    Returns
    -------
    Path or None
        The model card ``<out_dir>/<name>.json``; None when the time budget ended the window
        before the last step.

    Raises
    ------
    ValueError
        For bad options (see :class:`RecipeSession`), or when training diverges.
    """
    r = recipe(name, realistic, patch=patch, batch_size=batch_size)
    options = _run_options(realistic, patch, batch_size)
    if data not in DATA_SOURCES:
        raise ValueError(f"data must be one of {', '.join(DATA_SOURCES)}, got {data!r}")
    if data == "device" and workers:
        raise ValueError("workers make batches on the host; the device stream (data='device') takes none")
    if minutes is not None and workdir is None:
        raise ValueError("a time budget (minutes) needs a work folder for the checkpoint (workdir)")
    if minutes is not None and not (isinstance(minutes, (int, float)) and 0 < minutes < float("inf")):
        raise ValueError(f"minutes must be a positive number, got {minutes!r}")
    if r.get("ndim", 3) == 2:
        if workers or data != "host":
            raise ValueError("workers and the device stream are for 3D recipes only")
        r = _deep_update(r, overrides or {})
        return _run_recipe_2d(name, r, maps_dir, out_dir, steps=steps, log=log, overrides=overrides, bm3d=bm3d,
                              options=options,
                              device=device, minutes=minutes, workdir=workdir, resume=resume)
    if overrides:
        raise ValueError("overrides are for 2D recipes only")
    steps = r["steps"] if steps is None else steps
    session = RecipeSession(name, steps, workdir, resume=resume, data=data, options=options)
    maps = load_particle_maps(maps_dir)
    train_names = sorted(k for k in maps if k not in HELD_OUT)
    torch.manual_seed(r["seed"])
    gen = build(r["architecture"], **r["arch_kwargs"])
    disc = _discriminator(r)
    betas = tuple(r.get("betas", (0.5, 0.999)))
    cfg = TrainConfig(steps=steps, mode=r["mode"], loss=r.get("loss", "l1"), lr=r["lr"], lr_d=r["lr"], betas=betas,
                      l1_weight=r.get("l1_weight", 100.0), n_critic=r.get("n_critic", 5),
                      gp_weight=r.get("gp_weight", 10.0), rampdown=r.get("rampdown", 0.0), seed=r["seed"],
                      log_every=20, device=device)
    stepper = supervised_stepper(gen, cfg, discriminator=disc)
    session.restore(stepper)
    seed = window_seed(r["seed"], session.start)
    if data == "device":
        from .simulate.batched import BatchedStream

        stream = BatchedStream.from_recipe(r, maps, train_names, device=stepper.dev, seed=seed)
    else:
        stream = parallel_stream(recipe_stream, r, maps, train_names, seed=seed, workers=workers)
    batches = iter(stream)
    loop = LoopConfig(steps=steps, rampdown=cfg.rampdown, log_every=cfg.log_every,
                      checkpoint_every=CHECKPOINT_EVERY if session.folder is not None else 0,
                      seconds=None if minutes is None else 60.0 * minutes)
    optimizers = [opt for opt in (stepper.opt_g, stepper.opt_d) if opt is not None]
    done = None
    for ev in iter_train(lambda: stepper(lambda: next(batches)), loop, optimizers=optimizers, start=session.start,
                         seconds_before=session.seconds_before,
                         describe=lambda: f"batch {r['batch_size']}, patch {r['patch']}"):
        if isinstance(ev, Losses):
            entry = {"step": ev.step, "seconds": ev.seconds, **ev.means}
            session.history.append(entry)
            log(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in entry.items()}), flush=True)
        elif isinstance(ev, Checkpoint):
            session.save(stepper, ev.step, ev.seconds, workers)
        elif isinstance(ev, Done):
            done = ev
    stepper.finish()
    if session.budget_spent(done, minutes, log):
        return None
    result = TrainResult(steps_done=done.step, seconds=done.seconds, history=session.history)
    windows = session.windows + [session.window(done.step, done.seconds, workers)]
    return save_recipe_model(name, gen, result, maps, out_dir, train_seconds=done.seconds, steps=steps, log=log,
                             workers=workers, windows=windows, data=data, options=options)


def _precision_text(windows: list[dict], mode: str = "ae") -> str:
    """The card's precision: each window's autocast (e.g. "bf16 autocast (generator), fp32 (discriminator)")."""
    texts = [f"{w.get('precision', 'bf16')} autocast" if w.get("precision", "bf16") != "fp32" else "fp32"
             for w in windows]
    text = "; ".join(dict.fromkeys(texts))
    return text + (" (generator), fp32 (discriminator)" if mode != "ae" and text != "fp32" else "")


def _train_command(name: str, steps: int, workers: int, data: str = "host", options: dict | None = None) -> str:
    """The command line that trains 3D recipe `name` for `steps` steps with `workers` data
    processes, or on batches made on the training device (`data` ``"device"``), with the run
    `options` (:func:`_run_options`)."""
    return (f"python -m napari_cryoden.recipes {name} --maps ../shared/data/maps_10A --out models"
            + (f" --steps {steps}" if steps != RECIPES[name]["steps"] else "")
            + (f" --workers {workers}" if workers else "")
            + (f" --data {data}" if data != "host" else "")
            + _options_flags(options or {}))


def save_recipe_model(name: str, gen: torch.nn.Module, result, maps: dict[str, np.ndarray], out_dir: str | Path, *,
                      train_seconds: float, steps: int, log=print, workers: int = 0,
                      windows: list[dict] | None = None, data: str = "host", options: dict | None = None) -> Path:
    """Score a network trained by 3D recipe `name` on the held-out sets and save it with its card.

    The second half of :func:`run_recipe`. `result` is the :class:`~.supervised.TrainResult` of
    the run (its ``steps_done`` and last history entry go into the card), `maps` the particle maps
    it was trained from (all of them; the held-out proteins are left out of the card's training
    list), `steps` the steps the run was asked for and `workers` the processes that made its
    batches (recorded in the card's command when not 0), `data` where they were made
    (``"host"`` or ``"device"``, see :func:`run_recipe`). `windows` lists the sessions of
    training (:meth:`RecipeSession.window`: steps, seconds, device, hardware); the card records
    them, their total GPU seconds and the hardware (default: one CPU session). `options` are the
    run's options that differ from the recipe (:func:`_run_options`: realistic ranges, patch,
    batch size).

    Returns
    -------
    Path
        The model card ``<out_dir>/<name>.json``.
    """
    options = dict(options or {})
    r = recipe(name, **options)
    train_names = sorted(k for k in maps if k not in HELD_OUT)
    betas = tuple(r.get("betas", (0.5, 0.999)))
    windows = windows or [{"steps": [0, result.steps_done], "seconds": round(train_seconds, 1), "device": "cpu",
                           "hardware": hardware_name(torch.device("cpu")), "data": data, "workers": workers}]
    lm = LoadedModel.from_module(gen.eval(), name=name)
    lm.card["overlap"] = r["overlap"]  # the tiles of the shipped card (else: the measured receptive field)
    t1 = time.time()
    scores = evaluate_held_out(lm, held_out_set(maps), precision="auto")
    log(json.dumps(scores), flush=True)
    realistic_scores = evaluate_held_out(lm, realistic_held_out_set(maps), precision="auto") if "realistic" in r else None
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
            "command": _train_command(name, steps, workers, data, options),
            "data": (
                "thesis dataset (van Gijn 2019, sec. 3.1) made on the fly from SHREC protein maps at 10 Å/voxel "
                f"(shared/data/maps_10A): {', '.join(train_names)}; {r['patch']}^3 volumes with one centred particle "
                f"(p={r['stream']['p_single']}) or 2-{r['stream']['max_particles']} non-overlapping particles in random orientations"
                + (_realistic_text(r) if "realistic" in r else "")
                + ("; batches simulated in torch on the training device (napari_cryoden.simulate.batched)"
                   if data == "device" else "")
            ),
            "noise_model": (
                f"thesis samples: missing wedge of a single-axis tilt series about Y, max tilt uniform in {r['stream']['tilt_range']} deg, "
                f"plus white Gaussian noise, SNR = var(clean)/var(noise) log-uniform in {r['stream']['snr_range']}; "
                "augmentation: flips along Z, Y, X and random contrast sign"
            ),
            "losses": _losses_text(r),
            "optimizer": f"Adam lr {r['lr']}, betas {betas}" + (f", {_rampdown_text(r)}" if r.get("rampdown") else ""),
            "batch_size": r["batch_size"],
            "patch": r["patch"],
            "steps": result.steps_done,
            "seed": r["seed"],
            "precision": _precision_text(windows, r["mode"]),
            "seconds": round(train_seconds, 1),
            "gpu_seconds": round(sum(w["seconds"] for w in windows if w["device"].startswith("cuda")), 1),
            "hardware": "; ".join(dict.fromkeys(w["hardware"] for w in windows)),
            **({"windows": windows} if len(windows) > 1 or windows[0]["device"] != "cpu" else {}),
            "torch": torch.__version__,
            "final_losses": result.history[-1] if result.history else {},
        },
        "held_out": {
            "particles": list(HELD_OUT),
            "set": "40 volumes of 64^3: 20 single centred particles, 20 with 10-40 particles; SNR 0.5, ±60° wedge, seed 12345",
            "metrics": scores,
            "evaluation_seconds": round(time.time() - t1, 1),
            "evaluation_precision": "auto (bf16 autocast where the CPU has it, as cryoden denoise)",
            "command": f"python -m napari_cryoden.recipes {name} --evaluate-only --maps ../shared/data/maps_10A --out models",
            **({"realistic_set": REALISTIC_SET,
                "realistic_metrics": realistic_scores} if realistic_scores is not None else {}),
        },
        "deviations_from_thesis": r["deviations"],
        "licence": "BSD-3-Clause (weights and code); training maps derived from PDB entries (CC0)",
    }
    return save_model(gen, out_dir, name, card)


# --------------------------------------------------------------------------------------------
# 2D: Noise2Noise on the even/odd frame sums of simulated micrographs


def _deep_update(base: dict, changes: dict) -> dict:
    out = dict(base)
    for k, v in changes.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_maps_pixel_size(folder: str | Path, expected: float) -> None:
    """Refuse particle maps whose header voxel size is not `expected` Å (±10 %)."""
    import mrcfile

    for path in sorted(Path(folder).glob("*.mrc")):
        with mrcfile.open(path, permissive=True, header_only=True) as mrc:
            size = float(mrc.voxel_size.x)
        if size > 0 and abs(size - expected) > 0.1 * expected:
            raise ValueError(f"the particle maps in {folder} are at {size:g} Å/voxel ({path.name}); this recipe "
                             f"simulates micrographs at {expected:g} Å/pixel: use maps at that voxel size")
        return


def train_micrograph_n2n(r: dict, particles: dict[str, np.ndarray], *, steps: int | None = None,
                         device: str = "auto", precision: str = "auto", log=print, monitor=None,
                         session: RecipeSession | None = None, minutes: float | None = None) -> dict | None:
    """Train a 2D network by Noise2Noise on simulated even/odd frame sums (recipe `r`).

    Input and target are the two halves of one movie, in random order (Lehtinen et al. 2018,
    section 2: with an L2 loss the minimiser for noisy targets of zero-mean noise is the clean
    signal; Tan et al.: the even and odd frame sums of cryo-EM movies). Adam with ``r["lr"]`` and
    ``r["betas"]`` (ε = 1e-8), the learning rate brought smoothly (half cosine) to zero over the
    last ``r["rampdown"]`` fraction of the steps; bf16 autocast where the CPU has native bf16.
    With ``r["max_grad_norm"]`` the gradient is clipped to that global L2 norm.

    Parameters
    ----------
    monitor : callable, optional
        ``monitor(module) -> dict``, called every ``r["monitor_every"]`` steps and at the end with
        an eval-mode CPU copy of the network (the training copy is not touched); its result goes
        into that step's history entry. For learning curves on held-out data: nothing is selected
        with it, and it changes neither the data stream nor the weights.
    session : RecipeSession, optional
        The run on disk, for time-boxed windows: resumes its checkpoint (the micrographs of a
        resumed window come from a stream seeded by :func:`window_seed`), checkpoints every
        :data:`CHECKPOINT_EVERY` steps and when the window ends, and keeps the history and the
        per-window records. Default: one window, nothing written.
    minutes : float, optional
        Wall-clock budget of this window (needs a `session` with a work folder).

    Returns
    -------
    dict or None
        ``module`` (trained, eval mode, CPU), ``steps``, ``seconds`` (simulation and monitor
        included; all windows), ``simulation_seconds``, ``monitor_seconds`` and ``micrographs``
        (all windows), ``history`` (per logged step: mean loss, mean and largest gradient norm
        before clipping, learning rate, micrographs simulated so far, monitor results),
        ``device``, ``precision``, ``windows`` (the session's records). None when the budget
        ended the window before the last step (its checkpoint is written).
    """
    from .device import resolve_device, resolve_precision
    from .training.supervised import SupervisedStep

    steps = int(r["steps"] if steps is None else steps)
    session = session or RecipeSession("2D recipe", steps, None, resume=False)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r["seed"])
        net = build(r["architecture"], **r["arch_kwargs"])
    stride = int(getattr(net, "stride", 1))
    # channels-last bf16 backward misbehaves when the deepest feature map is 2 pixels wide (see fine_tune)
    stepper = SupervisedStep(net, mode="ae", loss=r["loss"], lr=r["lr"], betas=tuple(r["betas"]), device=dev,
                             precision=prec, ndim=2, max_grad_norm=r.get("max_grad_norm"),
                             channels_last=dev.type == "cpu" and prec != "fp32" and r["patch"] // stride >= 4)
    session.restore(stepper)
    stream = MicrographPairs.from_recipe(r, particles, np.random.default_rng(window_seed(r["seed"], session.start)))
    norms: list[float] = []
    monitor_every = int(r.get("monitor_every", 0)) if monitor is not None else 0
    monitor_seconds = 0.0

    def update() -> dict:
        losses = stepper(stream.batch)
        norms.append(stepper.grad_norm)
        return losses

    def watch() -> dict:
        nonlocal monitor_seconds
        t = time.perf_counter()
        out = monitor(_eval_copy(stepper.generator))
        monitor_seconds += time.perf_counter() - t
        return out

    loop = LoopConfig(steps=steps, rampdown=r.get("rampdown", 0.0), log_every=max(1, min(50, steps)),
                      val_every=monitor_every, checkpoint_every=CHECKPOINT_EVERY if session.folder is not None else 0,
                      seconds=None if minutes is None else 60.0 * minutes)

    def figures() -> dict:  # this window's, for its record
        return {"simulation_seconds": round(stream.simulation_seconds, 1), "micrographs": stream.micrographs,
                "monitor_seconds": round(monitor_seconds, 1)}

    done = None
    for ev in iter_train(update, loop, optimizers=[stepper.opt_g], validate=watch if monitor_every else None,
                         start=session.start, seconds_before=session.seconds_before,
                         describe=lambda: f"batch {r['batch_size']}, patch {r['patch']}"):
        if isinstance(ev, Losses):
            entry = {"step": ev.step, "seconds": ev.seconds, "content": ev.means["content"],
                     "grad_norm": float(np.mean(norms)), "grad_norm_max": float(np.max(norms)),
                     "lr": ev.lr, "micrographs": int(session.total("micrographs", stream.micrographs)),
                     **(ev.validation or {})}
            session.history.append(entry)
            log(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()}), flush=True)
            norms.clear()
        elif isinstance(ev, Checkpoint):
            session.save(stepper, ev.step, ev.seconds, 0, **figures())
        elif isinstance(ev, Done):
            done = ev
    stepper.finish()
    if session.budget_spent(done, minutes, log):
        return None
    windows = session.windows + [session.window(done.step, done.seconds, 0, **figures())]
    return {"module": stepper.generator.to("cpu").eval(), "steps": steps, "seconds": done.seconds,
            "simulation_seconds": sum(w["simulation_seconds"] for w in windows),
            "monitor_seconds": sum(w["monitor_seconds"] for w in windows),
            "micrographs": sum(w["micrographs"] for w in windows), "history": session.history, "device": dev,
            "precision": prec, "windows": windows}


def _eval_copy(module: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of `module` on the CPU in the default memory format (the original is untouched)."""
    import copy

    return copy.deepcopy(module).to("cpu").to(memory_format=torch.contiguous_format).eval()


def _run_recipe_2d(name: str, r: dict, maps_dir, out_dir, *, steps, log, overrides, bm3d, device="auto",
                   minutes=None, workdir=None, resume=False, options=None) -> Path | None:
    options = dict(options or {})
    session = RecipeSession(name, r["steps"] if steps is None else steps, workdir, resume=resume, options=options)
    _check_maps_pixel_size(maps_dir, r["pixel_size"])
    maps = load_particle_maps(maps_dir)
    train_names = sorted(k for k in maps if k not in HELD_OUT)
    if not train_names:
        raise ValueError(f"{maps_dir} holds no particle maps outside the held-out set {HELD_OUT}")
    ho = r["held_out"]
    sims = micrograph_held_out_set(maps, n=ho["n"], seed=ho["seed"], shape=tuple(ho["shape"]), pixel_size=r["pixel_size"])
    watched = sims[:int(r.get("monitor_n", 0))]

    def wrap(module) -> LoadedModel:
        return LoadedModel(name=name, module=module, card={"overlap": r["overlap"]}, stride=int(module.stride), ndim=2)

    def monitor(module):
        from .inference import denoise

        rows = [image_metrics(denoise(s.noisy, wrap(module), device="cpu", precision="auto"), s.clean) for s in watched]
        return {"held_out_psnr": float(np.median([m["psnr"] for m in rows])),
                "held_out_ssim": float(np.median([m["ssim"] for m in rows]))}

    res = train_micrograph_n2n(r, {k: maps[k] for k in train_names}, steps=steps, log=log, device=device,
                               monitor=monitor if watched else None, session=session, minutes=minutes)
    if res is None:
        return None
    net = res["module"]
    windows = res["windows"]
    lm = wrap(net)
    t1 = time.time()
    scores = evaluate_micrographs(lm, sims, bm3d=bm3d, precision="auto")
    log(json.dumps(scores), flush=True)
    m = r["micrographs"]
    default_steps = RECIPES[name]["steps"]
    maps_arg = r["maps"]
    card = {
        "description": r["description"],
        "architecture": r["architecture"],
        "arch_kwargs": r["arch_kwargs"],
        "ndim": 2,
        "voxel_size_A": r["pixel_size"],
        "normalization": NORMALIZATION,
        "overlap": r["overlap"],
        "training": {
            "command": f"python -m napari_cryoden.recipes {name} --maps {maps_arg} --out models"
                       + (f" --steps {res['steps']}" if res["steps"] != default_steps else "")
                       + _options_flags(options),
            **({"overrides_not_in_command": overrides} if overrides else {}),
            "data": (
                f"{res['micrographs']} micrographs of {m['shape'][0]} x {m['shape'][1]} pixels at {r['pixel_size']:g} "
                "Å/pixel simulated on the fly (napari_cryoden.simulate.simulate_micrograph) from SHREC protein maps "
                f"at {r['pixel_size']:g} Å/voxel ({maps_arg}): {', '.join(train_names)}; projections in random orientations "
                f"(Fourier slice), not overlapping, covering an area fraction uniform in {m['density']}, on projected "
                f"ice fluctuations, ice thickness uniform in {m['ice_thickness']} Å; {m['patches_per_micrograph']} "
                f"random {r['patch']}^2 patches of each"
            ),
            "noise_model": (
                f"dose-fractionated movies of {m['n_frames']} frames, total dose log-uniform in {m['dose_total']} "
                "e-/Å^2, 300 kV, Cs 2.7 mm, amplitude contrast 0.07, defocus uniform in "
                f"{m['defocus_um']} µm (CTF), per-frame radiation damage (Grant & Grigorieff 2015), inelastic "
                "attenuation, Poisson shot noise; the sums of the even and of the odd frames are the Noise2Noise "
                f"pair (each carries the statistics of a full sum at half the dose, so the halves cover full sums "
                f"of {m['dose_total'][0] / 2:g}-{m['dose_total'][1] / 2:g} e-/Å^2); augmentation: the 8 rotations/flips of the square and a random "
                "contrast sign, the same for input and target; input and target normalised with the input half's "
                "median and IQR/1.349"
            ),
            "losses": "Noise2Noise: L2 between the output for one half and the other half, which half is the "
                      "input drawn at random per patch (Lehtinen et al. 2018, sec. 2)",
            "optimizer": (f"Adam lr {r['lr']}, betas {tuple(r['betas'])}, eps 1e-8 (Lehtinen et al. 2018; Tan et al.), "
                          + _rampdown_text(r)
                          + (f", gradient clipped to global L2 norm {r['max_grad_norm']} (Pascanu et al. 2013)"
                             if r.get("max_grad_norm") else "")),
            "batch_size": r["batch_size"],
            "patch": r["patch"],
            "steps": res["steps"],
            "seed": r["seed"],
            "precision": _precision_text(windows),
            "seconds": round(res["seconds"], 1),
            "simulation_seconds": round(res["simulation_seconds"], 1),
            "gpu_seconds": round(sum(w["seconds"] for w in windows if w["device"].startswith("cuda")), 1),
            "hardware": "; ".join(dict.fromkeys(w["hardware"] for w in windows)),
            **({"windows": windows} if len(windows) > 1 or windows[0]["device"] != "cpu" else {}),
            "torch": torch.__version__,
            "final_losses": res["history"][-1] if res["history"] else {},
            **({"held_out_curve": {
                "note": f"median PSNR (dB) and SSIM of the first {len(watched)} held-out micrographs every "
                        f"{r['monitor_every']} steps (bf16 autocast); watched only, no checkpoint is selected with it",
                "seconds": round(res["monitor_seconds"], 1),
                "points": [{"step": e["step"], "psnr": round(e["held_out_psnr"], 3), "ssim": round(e["held_out_ssim"], 4)}
                           for e in res["history"] if "held_out_psnr" in e],
            }} if watched else {}),
        },
        "held_out": {
            "particles": list(HELD_OUT),
            "set": " ".join(micrograph_held_out_set.__doc__.split("\n\n")[1].split())
                   + (f" (here n={ho['n']}, shape {tuple(ho['shape'])}, seed {ho['seed']})"
                      if ho != RECIPES[name]["held_out"] else ""),
            "metrics": scores,
            "evaluation_seconds": round(time.time() - t1, 1),
            "evaluation_precision": "auto (bf16 autocast where the CPU has it, as cryoden denoise)",
            "command": f"python -m napari_cryoden.recipes {name} --evaluate-only --maps {maps_arg} --out models",
        },
        "deviations_from_paper": (
            f"trained {res['steps']} steps of {r['batch_size']} patches of {r['patch']}^2 pixels to fit the CPU "
            "budget (Lehtinen et al.: 256^2 crops, batch 4, far more iterations); on simulated micrographs instead "
            "of recorded movies; the encoder width ch and the decoder widths follow table 2"
            + (f"; peak learning rate {r['lr']:g} instead of 0.001 and the gradient norm clipped, because a run at "
               "0.001 in bf16 diverged after ~1850 steps" if r["lr"] < 1e-3 else "")
        ),
        "licence": "BSD-3-Clause (weights and code); training maps derived from PDB entries (CC0)",
    }
    return save_model(net, out_dir, name, card)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m napari_cryoden.recipes", description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument("--maps", default=None, help="folder of particle maps at the recipe's voxel size (default: "
                   "../shared/data/maps_10A for 3D recipes, ../shared/data/maps_5A for n2n-unet-2d)")
    p.add_argument("--out", default="models", help="output folder")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps (smoke tests)")
    p.add_argument("--workers", type=int, default=0,
                   help="3D recipes: make the training batches in N worker processes, each with its own seed "
                        "derived from the recipe's (default 0: on the training thread, as the shipped models)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to train (default: auto)")
    p.add_argument("--data", default="host", choices=DATA_SOURCES,
                   help="3D recipes: simulate the batches on the host with numpy (default, as the shipped models; "
                        "see --workers) or in torch on the training device (keeps a GPU fed)")
    p.add_argument("--realistic", default="standard", choices=sorted(REALISTIC_RANGES),
                   help="3D recipes with realistic tomograms: their ranges (default: standard, as the shipped "
                        "models; low-dose: 15-160 e-/A^2 log-uniform, defocus 1-6 um, specimens up to 3000 A "
                        "thick, correlated detector noise)")
    p.add_argument("--patch", type=int, default=None, help="train on patches of this edge, a multiple of 16 "
                   "(default: the recipe's; 64 for a 3D run on a GPU, 256 for 2D)")
    p.add_argument("--batch-size", type=int, default=None, help="patches per step (default: the recipe's)")
    p.add_argument("--minutes", type=float, default=None,
                   help="train for at most this wall-clock time, then checkpoint into --workdir and "
                        "stop (exit 0; continue later with --resume, here or on another machine)")
    p.add_argument("--workdir", default=None, help="folder of the run's checkpoint (every "
                   f"{CHECKPOINT_EVERY} steps and at the end of a --minutes window)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --workdir")
    p.add_argument("--evaluate-only", action="store_true", help="re-measure the held-out scores of an existing model")
    p.add_argument("--skip-bm3d", action="store_true",
                   help="2D recipes: leave BM3D out of the held-out scores (otherwise the bm3d package is required)")
    a = p.parse_args(argv)
    r = RECIPES[a.name]
    if a.maps is None:
        a.maps = r.get("maps", "../shared/data/maps_10A")
    if a.workers < 0:
        p.error("--workers must be 0 or more")
    if a.minutes is not None and not 0 < a.minutes < float("inf"):
        p.error("--minutes must be a positive number")
    if (a.minutes is not None or a.resume) and a.workdir is None:
        p.error("--minutes and --resume need --workdir")
    if a.data == "device" and a.workers:
        p.error("--workers makes batches on the host; --data device takes none")
    if r.get("ndim", 3) == 2:
        if a.workers:
            p.error("--workers is for 3D recipes only")
        if a.data != "host":
            p.error("--data device is for 3D recipes only")
        if a.realistic != "standard":
            p.error("--realistic is for 3D recipes with realistic tomograms")
        return _main_2d(a)
    if a.evaluate_only:
        from .models import load_model

        lm = load_model(Path(a.out) / f"{a.name}.json")
        maps = load_particle_maps(a.maps)
        scores = {"thesis": evaluate_held_out(lm, held_out_set(maps), precision="auto")}
        if "realistic" in RECIPES[a.name]:
            scores["realistic"] = evaluate_held_out(lm, realistic_held_out_set(maps), precision="auto")
        print(json.dumps(scores, indent=1))
        return 0
    return _train_and_report(a, workers=a.workers, data=a.data, realistic=a.realistic)


def _train_and_report(a, **kwargs) -> int:
    """Run the recipe of the parsed arguments `a` (plus `kwargs` for :func:`run_recipe`); print
    the card written, or a one-line error (exit status 2)."""
    try:
        path = run_recipe(a.name, a.maps, a.out, steps=a.steps, device=a.device, minutes=a.minutes,
                          workdir=a.workdir, resume=a.resume, patch=a.patch, batch_size=a.batch_size, **kwargs)
    except ValueError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if path is not None:
        print(f"wrote {path}")
    return 0


def _main_2d(a) -> int:
    r = RECIPES[a.name]
    bm3d = not a.skip_bm3d
    try:
        _check_maps_pixel_size(a.maps, r["pixel_size"])
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bm3d:
        try:
            import bm3d  # noqa: F401
        except ImportError:
            print("error: the held-out scores need the bm3d package (pip install 'napari-cryoden[benchmark]'), "
                  "or pass --skip-bm3d", file=sys.stderr)
            return 2
    if a.evaluate_only:
        from .models import load_model

        lm = load_model(Path(a.out) / f"{a.name}.json")
        ho = r["held_out"]
        sims = micrograph_held_out_set(load_particle_maps(a.maps), n=ho["n"], seed=ho["seed"], shape=tuple(ho["shape"]),
                                       pixel_size=r["pixel_size"])
        print(json.dumps(evaluate_micrographs(lm, sims, bm3d=bm3d, precision="auto"), indent=1))
        return 0
    return _train_and_report(a, bm3d=bm3d)


if __name__ == "__main__":
    sys.exit(main())
