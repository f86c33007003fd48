"""Fine-tune a denoising network on the user's own tomogram or micrograph (or train one from scratch).

Three ways to learn from the data at hand:

``"n2n"`` -- Noise2Noise (Lehtinen et al. 2018) on the even/odd halves of a tilt series or
movie, as cryoCARE does for tomograms (Buchholz et al. 2019): the two halves hold the same
signal and independent noise, so a network trained to map patches of one half to the same
patches of the other learns the signal. Which half is input and which is target is swapped at
random; the loss is L2 by default (the minimiser of the expected L2 loss against a noisy target
is the clean signal, Lehtinen et al. 2018, section 2).

``"supervised"`` -- noisy -> clean pairs (e.g. simulated data) with an L1/L2 content loss,
optionally adversarial: a conditional GAN with
:class:`~napari_cryoden.models.SimpleDiscriminator` (van Gijn 2019, section 3.7) or a WGAN-GP with
:class:`~napari_cryoden.models.Pix2PixDiscriminator` as critic (section 3.8; Gulrajani et al.
2017), through :class:`~napari_cryoden.training.supervised.SupervisedStep`.

``"n2v"`` -- Noise2Void (Krull et al. 2019) on a single volume: in every patch a fraction of the
voxels (`n2v_fraction`) is replaced by the value of a random other voxel of its neighbourhood
(uniform pixel manipulation in a window of ``2 * n2v_radius + 1`` voxels per axis, the voxel
itself excluded), and the loss is taken on those voxels only against their original values, so
the network cannot learn the identity and learns to predict a voxel from its surroundings. That
assumes noise independent from voxel to voxel. The noise of a tomogram reconstructed by
back-projection is correlated along Z and X over a few voxels, so by default (``n2v_mask=
"auto"``) each blind spot also hides the neighbours whose noise is correlated with it, offsets
estimated from the volume itself (:func:`noise_correlation_mask`; structured Noise2Void,
Broaddus et al. 2020 [6]). Prefer "n2n" when even/odd halves exist (``docs/finetune.md``).

Normalisation is the one of inference (:mod:`napari_cryoden.inference.normalize`): median and
IQR / 1.349 of the whole *source* volume (the even half for "n2n", the noisy volume for
"supervised"), applied to source and target alike, so a fine-tuned model works in
:func:`~napari_cryoden.inference.denoise` unchanged (model card field ``normalization``).
NaN/Inf voxels become the median (0 after normalisation).

A slab along axis 0 is held out for validation; the weights with the lowest validation loss are
kept (the starting weights included: fine-tuning never returns a network that is worse on the
held-out slab than the one it started from). Checkpoints (safetensors + JSON, written
atomically) let an interrupted run resume where it stopped.

:func:`iter_fine_tune` is the run as a generator, driving the one training loop
(:func:`~napari_cryoden.training.loop.iter_train`): it yields :class:`TrainEvent` progress
reports and, for previews, :class:`PreviewWeights` (a frozen copy of the network), and returns
the :class:`FineTuneResult`. The Train widget runs it in a napari worker thread, ``cryoden
train`` iterates it in the main thread, and :func:`fine_tune` drives it with callbacks. The
settings are a frozen :class:`FineTuneConfig`, checked when it is built; :func:`check_settings`
adds the checks that need the data and the network.

References
----------
.. [1] Lehtinen, J. et al. (2018). Noise2Noise: Learning image restoration without clean data.
   ICML, PMLR 80, 2965-2974.
.. [2] Buchholz, T.-O. et al. (2019). Cryo-CARE: Content-aware image restoration for
   cryo-transmission electron microscopy data. ISBI, 502-506. doi:10.1109/ISBI.2019.8759519
.. [3] Krull, A., Buchholz, T.-O. & Jug, F. (2019). Noise2Void - Learning denoising from single
   noisy images. CVPR, 2129-2137 (blind-spot masking scheme). doi:10.1109/CVPR.2019.00223
.. [4] van Gijn, D. (2019). Denoising Cryo-Electron Tomograms Using Deep Learning. Master's
   thesis, Utrecht University, sections 3.7-3.8.
.. [5] Gulrajani, I. et al. (2017). Improved Training of Wasserstein GANs. NeurIPS 30.
.. [6] Broaddus, C. et al. (2020). Removing structured noise with self-supervised blind-spot
   networks. ISBI, 159-163. doi:10.1109/ISBI45749.2020.9098336
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch
from torch import nn

from ..device import autocast_dtype, check_device, check_precision, memory_budget, resolve_device, resolve_precision
from ..inference.normalize import robust_stats
from ..models import networks
from ..models.registry import ARCHITECTURES, LoadedModel, build, check_arch_kwargs, load_model, model_card
from .checks import check_betas, check_choice, check_number
from .checkpoint import (
    CHECKPOINT_NAME, CheckpointMismatch, check_finite_weights, check_workdir, cpu_state, finite_number,
    load_checkpoint, restore_optimizer, save_checkpoint, stepper_tensors, sub_state,
)
from .loop import Checkpoint, Done, LoopConfig, Losses, Preview, Step, Validation, drive, iter_train
from .patches import PatchSampler
from .supervised import LOSSES, SupervisedStep, content_loss

__all__ = [
    "DEFAULT_PATCH",
    "FineTuneConfig",
    "FineTuneResult",
    "PreviewWeights",
    "TrainEvent",
    "card_voxel_size",
    "check_settings",
    "default_patch",
    "default_val_slab",
    "fine_tune",
    "iter_fine_tune",
    "scratch_arch_kwargs",
    "validation_axis",
]

MODES = ("n2n", "supervised", "n2v")
#: Blind-spot shapes of Noise2Void (``FineTuneConfig.n2v_mask``).
N2V_MASKS = ("auto", "voxel")
ADVERSARIAL = ("none", "gan", "wgangp")
#: Settings that may change when a run is resumed; all others must match the checkpoint.
_RESUMABLE_CHANGES = {"steps", "val_every", "preview_every", "log_every", "device", "precision"}
#: Settings added after the first checkpoint format, with the value a checkpoint without them ran with.
_LEGACY_SETTINGS = {"rampdown": 0.0, "max_grad_norm": None, "val_axis": 0}
#: Largest automatic training patch edge, by the network's dimensionality (the 2D one a multiple
#: of the N2NUNet2D stride, 32); smaller data gets the largest multiple of the stride that fits.
DEFAULT_PATCH = {3: 48, 2: 64}


def default_val_slab(n: int, patch: int) -> tuple[int, int]:
    """The validation slab the trainer holds out by default: the last ``max(patch, 10 %)`` slices.

    Parameters
    ----------
    n : int
        Length of the validation axis (:func:`validation_axis`), in voxels.
    patch : int
        Training patch edge in voxels.

    Returns
    -------
    (start, stop) : tuple of int
        Indices ``start:stop`` along that axis.

    Examples
    --------
    >>> default_val_slab(200, 48)
    (152, 200)
    >>> default_val_slab(600, 48)
    (540, 600)
    """
    n = int(n)
    k = min(n, max(int(patch), math.ceil(0.1 * n)))
    return n - k, n


def scratch_arch_kwargs(architecture: str, channels: int | None = None) -> dict[str, Any]:
    """Keyword arguments of a network trained from scratch.

    The output is linear (``final_activation="identity"``): training targets are robustly
    normalised and take negative values. `channels` sets the width where the architecture has one
    (None: the architecture's default).

    Raises
    ------
    ValueError
        If the architecture is not in :data:`~napari_cryoden.models.ARCHITECTURES`.

    Examples
    --------
    >>> scratch_arch_kwargs("UpsampleUnet48", 8)
    {'ch': 8, 'final_activation': 'identity'}
    >>> scratch_arch_kwargs("SimpleAutoEncoder", 8)
    {'final_activation': 'identity'}
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    allowed = ARCHITECTURES[architecture].kwargs
    kwargs: dict[str, Any] = {}
    if "ch" in allowed and channels is not None:
        kwargs["ch"] = int(channels)
    if "final_activation" in allowed:
        kwargs["final_activation"] = "identity"
    return kwargs


def card_voxel_size(voxel_size: Sequence[float], known: bool = True) -> float | None:
    """The ``voxel_size_A`` a fine-tuned model's card records: the in-plane voxel size in Å, the
    mean of the Y and X sizes of the training data (the scale of what the network saw).

    Used alike by ``cryoden train`` (from the MRC header) and the Train widget (from the layer's
    scale, in which the reader puts the header's voxel size).

    Parameters
    ----------
    voxel_size : sequence of float
        Å per voxel in array order: (Z, Y, X) or (Y, X).
    known : bool, default=True
        Whether the header held a voxel size (``metadata["voxel_size_known"]`` of the reader).

    Returns
    -------
    float or None
        None when unknown, or when Y or X is not a finite positive number.

    Examples
    --------
    >>> card_voxel_size((12.0, 10.0, 10.0))
    10.0
    >>> card_voxel_size((1.0, 1.0), known=False) is None
    True
    """
    if not known:
        return None
    xy = [float(v) for v in tuple(voxel_size)[-2:]]
    if not xy or not all(math.isfinite(v) and v > 0 for v in xy):
        return None
    return sum(xy) / len(xy)


def validation_axis(shape: Sequence[int]) -> int:
    """The axis across which the validation slab is cut: the longest in-plane axis, Y or X
    (the first on a tie). Never Z, the thinnest axis of a tomogram.

    Parameters
    ----------
    shape : sequence of int
        (Z, Y, X) or (Y, X) voxels.

    Returns
    -------
    int
        The axis index in `shape` (1 or 2 for a volume; 0 or 1 for an image).

    Examples
    --------
    >>> validation_axis((36, 206, 94)), validation_axis((64, 128, 128)), validation_axis((300, 512))
    (1, 1, 1)
    """
    shape = tuple(int(n) for n in shape)
    a, b = len(shape) - 2, len(shape) - 1
    return b if shape[b] > shape[a] else a


def default_patch(shape: Sequence[int], stride: int, ndim: int) -> int:
    """The automatic training patch edge for data of `shape`: :data:`DEFAULT_PATCH` for the
    network's `ndim`, or, when the data is smaller, the largest multiple of `stride` that fits
    every axis and half the validation axis (room for the validation slab and the training part).

    Parameters
    ----------
    shape : sequence of int
        (Z, Y, X) or (Y, X) voxels.
    stride : int
        The network's stride; the patch is a multiple of it.
    ndim : int
        The network's spatial dimensions (3 or 2).

    Returns
    -------
    int
        Patch edge in voxels (at least `stride`).

    Examples
    --------
    >>> default_patch((36, 206, 94), 8, 3), default_patch((64, 128, 128), 8, 3), default_patch((512, 512), 32, 2)
    (32, 48, 64)
    """
    shape = tuple(int(n) for n in shape)
    axis = validation_axis(shape)
    limit = min([DEFAULT_PATCH.get(ndim, 48), shape[axis] // 2] + [n for a, n in enumerate(shape) if a != axis])
    return max(stride, limit // stride * stride)


@dataclass(frozen=True)
class FineTuneConfig:
    """Settings of :func:`fine_tune` and :func:`iter_fine_tune`.

    Checked when built and frozen afterwards (change a setting with :func:`dataclasses.replace`,
    which checks again). What does not depend on the data is checked here: the choices (mode,
    loss, adversarial, device, precision, n2v_mask), adversarial training only in supervised mode,
    and the type and range of every number; what depends on the data or the network (the patch
    against the stride and the data, the validation slab and axis against the data's shape, the
    memory a batch needs, whether a CUDA GPU is there) is checked by :func:`check_settings`.
    `betas` and `val_slab` given as lists are stored as tuples (the config is hashable).

    Raises
    ------
    ValueError
        One line naming the field, e.g. ``steps must be an integer > 0, got 0``.

    Attributes
    ----------
    mode : {"n2n", "supervised", "n2v"}, default="n2n"
        "n2n": source = even half, target = odd half (swapped at random); "supervised": source =
        noisy, target = clean; "n2v": source only, target None.
    loss : {"l1", "l2", "graylevel"}, default="l2"
        Content loss. "graylevel" is the gray-level constraint of Ouyang et al. (2020, eq. 8):
        the squared error summed per patch, averaged over the batch (see
        :func:`~napari_cryoden.training.supervised.content_loss`); validation then reports the
        mean squared error.
    adversarial : {"none", "gan", "wgangp"}, default="none"
        Supervised mode only. "gan" (3D models only) needs a patch that is a multiple of 16 and
        at least 32 (SimpleDiscriminator), "wgangp" a patch of at least 16 (Pix2PixDiscriminator
        without normalisation as critic for 3D models, :class:`~napari_cryoden.models.Critic2D`
        for 2D ones: the 2D WGAN of Ouyang et al. 2020, who use ``loss="graylevel"`` with
        ``l1_weight=0.1``). The discriminator starts from random weights (none is shipped with
        the models).
    patch : int, optional
        Edge of the cubic (3D models) or square (2D models) training patches, in voxels; a
        multiple of the network stride (8 for UpsampleUnet48, 32 for N2NUNet2D). Default:
        :func:`default_patch`, 48 (3D) or 64 (2D), less for data too small for it.
    batch : int, default=4
        Patches per step.
    steps : int, default=200
        Generator updates in total (a resumed run counts the steps already done).
    lr : float, default=1e-4
        Adam learning rate of the network.
    val_slab : (int, int), optional
        ``(start, stop)`` along `val_axis` held out for validation (no training patch overlaps
        it); at least `patch` thick. Default: the last ``max(patch, ceil(10 %))`` voxels.
    val_axis : int, optional
        Axis of the data across which `val_slab` is cut. Default: :func:`validation_axis`, the
        longest of Y and X (a tomogram's Z is often too thin to spare a slab).
    val_every : int, default=20
        Steps between validation-loss evaluations and checkpoints.
    preview_every : int, default=0
        Steps between calls of the `preview` callback (0 = never).
    n2v_fraction : float, default=0.005
        Fraction of blind-spot voxels per patch (at least one).
    seed : int, default=0
        Seeds patch sampling, augmentation, blind spots, validation patches and (from scratch)
        the initial weights.
    device : {"auto", "cpu", "cuda"}, default="auto"
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast dtype of the network; "auto" is bf16 (with channels-last memory format) on CPUs
        with native bf16 and on recent GPUs, fp16 on older GPUs, else fp32.
    log_every : int, default=0
        Steps between progress events without validation (0: events only on validation steps
        and at the end).
    val_patches : int, default=8
        Number of fixed (seeded) validation patches drawn from the validation slab.
    augment : bool, default=True
        Random flips and 90° rotations in the Y/X plane (the 8 symmetries of the square). For
        tomograms a 90° rotation turns the tilt axis from Y to X, so the network sees missing
        wedges about both axes.
    n2v_radius : int, default=2
        Half-width of the neighbourhood a blind-spot voxel takes its new value from (2 gives the
        5-voxel window of Krull et al. 2019).
    n2v_mask : {"auto", "voxel"}, default="auto"
        Shape of the blind spots. "voxel" is classic single-voxel Noise2Void. "auto" hides, with
        each blind spot, every neighbour whose noise is correlated with it: the offsets are
        estimated from the volume itself by :func:`noise_correlation_mask` (structured
        Noise2Void, Broaddus et al. 2020). Tomograms reconstructed by back-projection need it:
        their noise is correlated along Z and X over a few voxels (the ramp filter, the
        interpolation and the streaks), and single-voxel blind spots let the network copy it.
        For noise that is independent from voxel to voxel "auto" finds the single voxel.
    n2v_blind : int, default=0
        Half-width of a cubic structured blind spot (see :func:`n2v_manipulate`); when above 0
        it replaces `n2v_mask`.
    lr_d : float, optional
        Learning rate of the discriminator/critic (default: `lr`).
    betas : (float, float), optional
        Adam betas. Default: (0.9, 0.999) without adversarial loss (Kingma & Ba 2015),
        (0.5, 0.999) for "gan", (0.0, 0.9) for "wgangp" (Gulrajani et al. 2017).
    l1_weight : float, default=100.0
        Weight of the content loss next to the adversarial loss (pix2pix uses 100).
    n_critic : int, default=5
        WGAN-GP critic updates per generator update.
    gp_weight : float, default=10.0
        WGAN-GP gradient-penalty weight λ.
    disc_base : int, default=64
        Channels of the first block of the WGAN-GP critic (Pix2PixDiscriminator, or Critic2D
        for 2D models).
    rampdown : float, default=0.0
        Fraction of `steps`, at the end, over which the learning rates fall to zero along a half
        cosine (Lehtinen et al. 2018, appendix A.1, ramp-down over the last 30 %; see
        :func:`~napari_cryoden.training.supervised.rampdown_factor`). The rate of a step depends
        only on its number and `steps`, so a resumed run follows the same schedule; one resumed
        with more `steps` moves the ramp-down to the new end. 0 keeps the rates constant.
    max_grad_norm : float, optional
        Clip the network's gradient to this global L2 norm before each update (Pascanu et al.
        2013); guards against the rare huge step that makes training diverge. Default: no
        clipping.
    """

    mode: str = "n2n"
    loss: str = "l2"
    adversarial: str = "none"
    patch: int | None = None
    batch: int = 4
    steps: int = 200
    lr: float = 1e-4
    val_slab: tuple[int, int] | None = None
    val_axis: int | None = None
    val_every: int = 20
    preview_every: int = 0
    n2v_fraction: float = 0.005
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    log_every: int = 0
    val_patches: int = 8
    augment: bool = True
    n2v_radius: int = 2
    n2v_blind: int = 0
    n2v_mask: str = "auto"
    lr_d: float | None = None
    betas: tuple[float, float] | None = None
    l1_weight: float = 100.0
    n_critic: int = 5
    gp_weight: float = 10.0
    disc_base: int = 64
    rampdown: float = 0.0
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        for name, choices in (("mode", MODES), ("loss", LOSSES), ("adversarial", ADVERSARIAL)):
            check_choice(name, getattr(self, name), choices)
        if self.adversarial != "none" and self.mode != "supervised":
            raise ValueError(f"adversarial training ({self.adversarial}) needs clean targets: use mode 'supervised'")
        check_number("steps", self.steps, integer=True, positive=True)
        check_number("batch", self.batch, integer=True, positive=True)
        if self.patch is not None:
            check_number("patch", self.patch, integer=True, positive=True)
        check_number("lr", self.lr, positive=True)
        if self.lr_d is not None:
            check_number("lr_d", self.lr_d, positive=True)
        check_number("val_every", self.val_every, integer=True, positive=True)
        check_number("preview_every", self.preview_every, integer=True, minimum=0)
        check_number("log_every", self.log_every, integer=True, minimum=0)
        check_number("val_patches", self.val_patches, integer=True, positive=True)
        check_number("n2v_fraction", self.n2v_fraction, positive=True, maximum=0.5)
        check_number("n2v_radius", self.n2v_radius, integer=True, positive=True)
        check_number("n2v_blind", self.n2v_blind, integer=True, minimum=0, maximum=8)
        check_choice("n2v_mask", self.n2v_mask, N2V_MASKS)
        check_number("seed", self.seed, integer=True, minimum=0)
        check_number("l1_weight", self.l1_weight, minimum=0)
        check_number("n_critic", self.n_critic, integer=True, positive=True)
        check_number("gp_weight", self.gp_weight, minimum=0)
        check_number("disc_base", self.disc_base, integer=True, positive=True)
        check_number("rampdown", self.rampdown, minimum=0, maximum=1)
        if self.max_grad_norm is not None:
            check_number("max_grad_norm", self.max_grad_norm, positive=True)
        object.__setattr__(self, "betas", check_betas(self.betas))
        if self.val_slab is not None:
            try:
                v0, v1 = (int(v) for v in self.val_slab)
                if (v0, v1) != tuple(self.val_slab):
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(f"val_slab must be two integers (start, stop), got {self.val_slab!r}") from None
            object.__setattr__(self, "val_slab", tuple(self.val_slab))
        if self.val_axis is not None:
            check_number("val_axis", self.val_axis, integer=True, minimum=0)
        check_device(self.device)
        check_precision(self.precision)


@dataclass
class TrainEvent:
    """A progress report of :func:`iter_fine_tune` (the `progress` callback of :func:`fine_tune`).

    Attributes
    ----------
    step, steps : int
        Steps done and planned.
    seconds : float
        Training time so far (earlier sessions of a resumed run included).
    train_loss : float
        Mean content loss of the steps since the previous event.
    val_loss : float or None
        Validation loss, on validation steps.
    best_val : float or None
        Lowest validation loss so far (the starting weights included).
    losses : dict
        Means of every loss term since the previous event (``content``; ``d``, ``adv`` for GAN;
        ``d``, ``gp``, ``wdist``, ``adv`` for WGAN-GP).
    """

    step: int
    steps: int
    seconds: float
    train_loss: float
    val_loss: float | None
    best_val: float | None
    losses: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PreviewWeights:
    """The network after `step`, for a preview (yielded by :func:`iter_fine_tune`).

    Attributes
    ----------
    step : int
        Steps done (a resumed run's earlier steps included).
    module : torch.nn.Module
        A copy of the network in eval mode, on the training device, whose parameters do not
        require gradients; training goes on with its own weights, whatever is done to this one.
    """

    step: int
    module: nn.Module


@dataclass
class FineTuneResult:
    """What :func:`fine_tune` returns (and :func:`iter_fine_tune`, as its generator's return value).

    Attributes
    ----------
    module : torch.nn.Module
        The network with the weights of the best validation loss (also after a cancel), in eval
        mode, on the CPU.
    ndim : int
        2 (micrograph model) or 3 (tomogram model).
    architecture : str
    arch_kwargs : dict
    parent : str or None
        Registry name of the model fine-tuned, None when trained from scratch.
    steps_done : int
    seconds : float
    cancelled : bool
    best_val : float or None
    history : list of TrainEvent
    checkpoint : Path or None
        ``checkpoint.safetensors`` in the work folder, if one was given.
    config : FineTuneConfig or None
        The settings, with `val_slab` resolved.
    initial_val, final_val : float or None
        Validation loss of the starting weights and of the last weights.
    best_step : int or None
        Step of the best weights (0: the starting weights).
    data_shape : tuple of int
    parent_card : dict
        The parent model's card (empty from scratch).
    skipped_steps : int
        Updates skipped in this session because their gradients were not finite.
    """

    module: nn.Module
    ndim: int
    architecture: str
    arch_kwargs: dict
    parent: str | None
    steps_done: int
    seconds: float
    cancelled: bool
    best_val: float | None
    history: list[TrainEvent]
    checkpoint: Path | None
    config: FineTuneConfig | None = None
    initial_val: float | None = None
    final_val: float | None = None
    best_step: int | None = None
    data_shape: tuple = ()
    parent_card: dict = field(default_factory=dict)
    skipped_steps: int = 0


# --------------------------------------------------------------------------------------------
# Settings


@dataclass
class _Net:
    architecture: str
    arch_kwargs: dict
    ndim: int
    stride: int
    parent: str | None
    card: dict
    loaded: LoadedModel | None = None


@dataclass
class _Plan:
    net: _Net
    val_slab: tuple[int, int]
    starts: list[tuple[int, int]]  # inclusive ranges of training-patch starts along val_axis
    center: float
    scale: float
    shape: tuple[int, ...]
    patch: int = 48
    axis: int = 0  # of the validation slab


def _resolve_net(model, architecture, arch_kwargs, *, load: bool) -> _Net:
    if model is None:
        if architecture is None:
            raise ValueError("give a model to fine-tune or an architecture to train from scratch")
        kwargs = dict(arch_kwargs or {})
        check_arch_kwargs(architecture, kwargs)  # ModelError, a ValueError
        spec = ARCHITECTURES[architecture]
        kwargs = {**scratch_arch_kwargs(architecture), **kwargs}  # outputs are zero-centred: linear
        return _Net(architecture, kwargs, spec.ndim, spec.stride, None, {})
    if isinstance(model, LoadedModel):
        card = dict(model.card or {})
        arch = card.get("architecture") or architecture
        if arch is None or arch not in ARCHITECTURES:
            raise ValueError(f"model {model.name!r} has no model card naming a known architecture; pass architecture=")
        kwargs = dict(card.get("arch_kwargs", arch_kwargs or {}))
        net = _Net(arch, kwargs, model.ndim, model.stride, model.name, card, model)
    elif isinstance(model, (str, os.PathLike)):
        card = model_card(model)  # ModelError (a ValueError) names the available models
        arch = card["architecture"]
        lm = load_model(model) if load else None
        net = _Net(arch, dict(card["arch_kwargs"]), ARCHITECTURES[arch].ndim, ARCHITECTURES[arch].stride,
                   card["name"], card, lm)
    else:
        raise TypeError(f"model must be a registry name, a card path or a LoadedModel, got {type(model).__name__}")
    if architecture is not None and architecture != net.architecture:
        raise ValueError(f"model {net.parent!r} is a {net.architecture}, not a {architecture}; give one of them")
    return net


def _check_array(name: str, arr) -> np.ndarray:
    if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
        arr = np.asarray(arr)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D micrograph or a 3D tomogram, got shape {tuple(arr.shape)}")
    if min(arr.shape) < 1:
        raise ValueError(f"{name} is empty: shape {tuple(arr.shape)}")
    return arr


def _names(mode: str) -> tuple[str, str]:
    return {"n2n": ("even half", "odd half"), "supervised": ("noisy volume", "clean volume")}.get(mode, ("input", "target"))


def _plan(config: FineTuneConfig, source, target, net: _Net) -> _Plan:
    c = config
    if not isinstance(c, FineTuneConfig):
        raise TypeError(f"config must be a FineTuneConfig, got {type(c).__name__}")
    # the choices and numbers were checked when the config was built (FineTuneConfig.__post_init__)
    dev = resolve_device(c.device)
    resolve_precision(c.precision, dev)

    src_name, tgt_name = _names(c.mode)
    source = _check_array(src_name, source)
    if c.mode == "n2v":
        if target is not None:
            raise ValueError("Noise2Void trains on one volume: give no target (or use mode 'n2n' for even/odd halves)")
    else:
        if target is None:
            raise ValueError(f"mode {c.mode!r} needs a target: the {tgt_name}")
        target = _check_array(tgt_name, target)
        if tuple(target.shape) != tuple(source.shape):
            raise ValueError(f"the {src_name} and the {tgt_name} differ in shape: "
                             f"{tuple(source.shape)} vs {tuple(target.shape)}")
    shape = tuple(int(n) for n in source.shape)
    if source.ndim != net.ndim:
        kind = {2: "2D (micrograph)", 3: "3D (tomogram)"}
        raise ValueError(f"{net.architecture} is a {kind[net.ndim]} network and the data is "
                         f"{kind.get(source.ndim, f'{source.ndim}D')}, shape {shape}")
    if c.adversarial == "gan" and net.ndim != 3:
        raise ValueError("GAN training needs a 3D network (SimpleDiscriminator is 3D); use adversarial 'wgangp' "
                         "for 2D networks")
    p = default_patch(shape, net.stride, net.ndim) if c.patch is None else int(c.patch)
    if p % net.stride:
        lo, hi = max(net.stride, p // net.stride * net.stride), -(-p // net.stride) * net.stride
        raise ValueError(f"patch {p} is not a multiple of the {net.architecture} stride {net.stride}; "
                         f"use e.g. {lo} or {hi}")
    if c.adversarial == "gan" and (p % 16 or p < 32):
        raise ValueError(f"GAN training needs a patch that is a multiple of 16 and at least 32, got {p}")
    if c.adversarial == "wgangp" and p < 16:
        raise ValueError(f"WGAN-GP training needs a patch of at least 16, got {p}")
    if c.val_axis is None:
        axis = validation_axis(shape)
    else:
        check_number("val_axis", c.val_axis, integer=True, minimum=0, maximum=len(shape) - 1)
        axis = int(c.val_axis)
    n0 = shape[axis]

    def smaller_patch(room: int) -> str:
        fit = room // net.stride * net.stride
        return f"use a patch of at most {fit}" if fit >= net.stride else "the data is too small to train on"

    for a in range(len(shape)):
        if p > shape[a]:
            raise ValueError(f"patch {p} is larger than the data along axis {a} ({shape[a]} voxels, shape {shape}); "
                             + smaller_patch(min(shape) if a != axis else shape[a] // 2))
    _check_batch_memory(int(c.batch), p, net.ndim, dev)
    if c.val_slab is None:
        val = default_val_slab(n0, p)
    else:
        v0, v1 = c.val_slab  # two integers (FineTuneConfig.__post_init__)
        if not 0 <= v0 < v1 <= n0:
            raise ValueError(f"val_slab {(v0, v1)} must satisfy 0 <= start < stop <= {n0} (axis {axis} has {n0})")
        val = (v0, v1)
    if val[1] - val[0] < p:
        raise ValueError(f"the validation slab {val} along axis {axis} is {val[1] - val[0]} voxels thick, less than "
                         f"the patch {p}; " + smaller_patch(val[1] - val[0]))
    starts = [(lo, hi) for lo, hi in ((0, val[0] - p), (val[1], n0 - p)) if hi >= lo]
    if not starts:
        raise ValueError(f"outside the validation slab {val} along axis {axis} ({val[0]} voxels before it, "
                         f"{n0 - val[1]} after) there is no room for a training patch of {p}; "
                         + smaller_patch(max(val[0], n0 - val[1])))
    try:
        center, scale = robust_stats(source)
    except ValueError:
        raise ValueError(f"the {src_name} holds no finite values (all NaN or Inf)") from None
    if target is not None:
        try:
            robust_stats(target)
        except ValueError:
            raise ValueError(f"the {tgt_name} holds no finite values (all NaN or Inf)") from None
    return _Plan(net, val, starts, center, scale, shape, p, axis)


def _check_batch_memory(batch: int, patch: int, ndim: int, dev: torch.device) -> None:
    """Refuse a batch whose float32 input and target patches alone exceed the memory budget
    (:func:`~napari_cryoden.device.memory_budget`), before anything is allocated; the
    network's activations need many times more."""
    need = 2 * 4 * batch * patch**ndim
    budget = memory_budget(dev)
    if need > budget:
        raise ValueError(f"batch {batch} x patch {patch}^{ndim} needs {need / 2**30:.3g} GiB for the float32 patches "
                         f"alone, more than the {budget / 2**30:.3g} GiB training may use on {dev.type}; "
                         "lower batch or patch")


def check_settings(
    config: FineTuneConfig,
    source: np.ndarray,
    target: np.ndarray | None = None,
    *,
    model: str | LoadedModel | None = None,
    architecture: str | None = None,
    arch_kwargs: dict | None = None,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> None:
    """Refuse bad settings before any training, with a one-line :class:`ValueError`.

    Checks what depends on the data and the network (the choices and numbers of `config` were
    checked when it was built, :class:`FineTuneConfig`): a target given for "n2n" and
    "supervised" and not for "n2v"; halves (or noisy/clean) of the same shape; 2D or 3D data
    matching the network (a 2D architecture on 3D data or vice versa is refused); a patch that
    is a multiple of the network stride, fits the data and fits the training part of the
    validation axis outside the validation slab; a validation slab inside that axis and at least
    a patch thick (each refusal names one fix: a smaller patch); a batch of patches that fits in
    the memory budget; data with at least one finite voxel; the device; and, with `workdir`, a
    checkpoint to resume (``resume=True``) or none in the way (``resume=False`` and
    ``overwrite=False``).

    Parameters
    ----------
    config : FineTuneConfig
    source, target : ndarray
        As for :func:`fine_tune`. Large memory-mapped volumes are only sampled.
    model, architecture, arch_kwargs
        As for :func:`fine_tune`; a model given by name is checked through its card (its weights
        are not read).
    workdir, resume, overwrite
        As for :func:`fine_tune`.

    Raises
    ------
    ValueError
        With a message naming the setting to change (a ModelError for an unknown model).
    """
    net = _resolve_net(model, architecture, arch_kwargs, load=False)
    _plan(config, source, target, net)
    check_workdir(workdir, resume, overwrite)


def _config_json(config: FineTuneConfig) -> dict:
    d = asdict(config)
    for k in ("val_slab", "betas"):
        if d[k] is not None:
            d[k] = list(d[k])
    return d


# --------------------------------------------------------------------------------------------
# Training


def fine_tune(
    source: np.ndarray,
    target: np.ndarray | None,
    config: FineTuneConfig,
    *,
    model: str | LoadedModel | None = None,
    architecture: str | None = None,
    arch_kwargs: dict | None = None,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Callable[[TrainEvent], None] | None = None,
    preview: Callable[[nn.Module], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> FineTuneResult:
    """Fine-tune a registry model (or train an architecture from scratch) on the user's data.

    Drives :func:`iter_fine_tune`, passing its events to the callbacks in the training thread.

    Parameters
    ----------
    source : (Z, Y, X) or (Y, X) ndarray of real dtype
        "n2n": the even half; "supervised": the noisy volume; "n2v": the volume to denoise.
        Never modified; a memmap is read patch by patch.
    target : ndarray of the same shape, or None
        "n2n": the odd half; "supervised": the clean volume; "n2v": None.
    config : FineTuneConfig
    model : str or LoadedModel, optional
        Registry name, card path or loaded model to start from (its weights are copied, the
        model itself is not changed).
    architecture : str, optional
        A :data:`~napari_cryoden.models.ARCHITECTURES` name to train from scratch; required
        when `model` is None. UpsampleUnet48 and Unet48 default to ``final_activation="identity"``
        (normalised data is zero-centred).
    arch_kwargs : dict, optional
        Keyword arguments of `architecture`, e.g. ``{"ch": 16}``.
    workdir : str or Path, optional
        Folder for ``checkpoint.safetensors`` (weights, optimizer state, random-generator state,
        best weights; the state as JSON in its metadata) and ``checkpoint.json`` (a readable copy
        of the state), both written atomically every `val_every` steps, at the end and on cancel.
    resume : bool, default=False
        Continue the run checkpointed in `workdir`, with the same data and settings (only
        steps, val_every, preview_every, log_every, device and precision may change); the steps
        already done count towards ``config.steps``.
    progress : callable(TrainEvent), optional
        Called on every validation step (with `val_loss`), every `log_every` steps and at the
        end, after the checkpoint of that step is written.
    preview : callable(torch.nn.Module), optional
        Called every ``config.preview_every`` steps in the training thread with a copy of the
        network in eval mode, under ``torch.no_grad()``.
    cancel : callable() -> bool, optional
        Polled before every step; True stops training: the current state is validated and
        checkpointed (unless no step was done), and the result holds the best weights
        (``result.cancelled``).
    overwrite : bool, default=False
        Start afresh although `workdir` holds a checkpoint (it is replaced at the first
        checkpoint of the new run).

    Returns
    -------
    FineTuneResult

    Raises
    ------
    ValueError
        For bad settings (see :func:`check_settings`), a checkpoint that does not match the data
        or settings, a damaged or tampered checkpoint (``checkpoint unreadable: ...``: missing
        fields, wrong types, NaN, a step count outside 0 to the steps planned, tensors that do
        not fit), or a loss that is not finite (training diverged).
    MemoryError
        If a training step runs out of memory (CPU or GPU); one line naming batch and patch.
    napari_cryoden.models.ModelError
        If `model` cannot be loaded.
    """
    events = iter_fine_tune(
        source, target, config, model=model, architecture=architecture, arch_kwargs=arch_kwargs, workdir=workdir,
        resume=resume, preview_every=None if preview is not None else 0, cancel=cancel, overwrite=overwrite,
    )

    def handle(ev) -> None:
        if isinstance(ev, PreviewWeights):
            with torch.no_grad():
                preview(ev.module)
        elif progress is not None:
            progress(ev)

    return drive(events, handle)


def iter_fine_tune(
    source: np.ndarray,
    target: np.ndarray | None,
    config: FineTuneConfig,
    *,
    model: str | LoadedModel | None = None,
    architecture: str | None = None,
    arch_kwargs: dict | None = None,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    preview_every: int | None = None,
    cancel: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> Generator[TrainEvent | PreviewWeights, None, FineTuneResult]:
    """Fine-tune a registry model (or train an architecture from scratch) on the user's data,
    yielding progress as it goes; the generator :func:`fine_tune` drives.

    Nothing runs until the first event is asked for: bad settings raise then. The generator
    waits while the caller handles an event, in the caller's thread (napari's ``thread_worker``
    runs it in a worker thread and emits each event as ``yielded`` and the result as
    ``returned``); ``result = yield from iter_fine_tune(...)`` gives the result to a generator
    that wraps it. Closing the generator early stops training without a last checkpoint; use
    `cancel` to stop with one and get the best weights back.

    Parameters
    ----------
    source, target, config, model, architecture, arch_kwargs, workdir, resume, cancel, overwrite
        As for :func:`fine_tune`.
    preview_every : int, optional
        Steps between :class:`PreviewWeights` events (0: none). Default: ``config.preview_every``.

    Yields
    ------
    TrainEvent
        On every validation step (with `val_loss`), every ``config.log_every`` steps and at the
        end, after the checkpoint of that step is written (the events :func:`fine_tune` passes
        to `progress`).
    PreviewWeights
        Every `preview_every` steps, after that step's events: a copy of the network in eval
        mode whose parameters do not require gradients (what :func:`fine_tune` passes to
        `preview`); run it under ``torch.no_grad()``.

    Returns
    -------
    FineTuneResult
        The generator's return value (``StopIteration.value``).

    Raises
    ------
    ValueError, MemoryError, napari_cryoden.models.ModelError
        As :func:`fine_tune`; also if `preview_every` is not an integer >= 0.
    """
    if preview_every is not None:
        check_number("preview_every", preview_every, integer=True, minimum=0)
    net = _resolve_net(model, architecture, arch_kwargs, load=True)
    plan = _plan(config, source, target, net)
    folder = check_workdir(workdir, resume, overwrite)
    config = replace(config, val_slab=tuple(plan.val_slab), patch=plan.patch, val_axis=plan.axis)
    if not hasattr(source, "dtype"):
        source = np.asarray(source)
    if target is not None and not hasattr(target, "dtype"):
        target = np.asarray(target)

    dev = resolve_device(config.device)
    prec = resolve_precision(config.precision, dev)
    dtype = autocast_dtype(prec)

    with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's RNG untouched
        torch.manual_seed(int(config.seed))
        if net.loaded is not None:
            module = copy.deepcopy(net.loaded.module).float()
        else:
            module = build(net.architecture, **net.arch_kwargs)
        disc = None
        if config.adversarial == "gan":
            disc = networks.SimpleDiscriminator(int(config.patch))
        elif config.adversarial == "wgangp" and net.ndim == 2:
            disc = networks.Critic2D(base=int(config.disc_base))
        elif config.adversarial == "wgangp":
            disc = networks.Pix2PixDiscriminator(norm=None, base=int(config.disc_base))
    betas = config.betas or {"none": (0.9, 0.999), "gan": (0.5, 0.999), "wgangp": (0.0, 0.9)}[config.adversarial]
    torch_rng = torch.Generator().manual_seed(int(config.seed))
    stepper = SupervisedStep(
        module, mode="ae" if config.adversarial == "none" else config.adversarial, loss=config.loss,
        discriminator=disc, lr=float(config.lr), lr_d=float(config.lr_d or config.lr), betas=tuple(betas),
        l1_weight=config.l1_weight, n_critic=int(config.n_critic), gp_weight=config.gp_weight, device=dev,
        precision=prec, ndim=net.ndim, generator_rng=torch_rng, max_grad_norm=config.max_grad_norm,
        # channels-last bf16 backward misbehaves when the deepest feature map is 2 voxels wide
        channels_last=dev.type == "cpu" and dtype is not None and int(config.patch) // net.stride >= 4,
    )
    g = stepper.generator
    patches = PatchSampler(source, target, config, plan)
    val_batches = patches.validation()
    # validation loss per voxel: the gray-level constraint is the L2 loss summed per patch
    content = content_loss("l2" if config.loss == "graylevel" else config.loss)
    rng = np.random.default_rng(int(config.seed))

    def autocast():
        return torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)

    def validate() -> float:
        g.eval()
        err, count = 0.0, 0.0
        try:
            with torch.no_grad(), autocast():
                for x, y, m in val_batches:
                    pred = g(x.to(dev).contiguous(memory_format=stepper.fmt))
                    y = y.to(dev)
                    m = m.to(dev) if m is not None else None
                    n = float(m.sum()) if m is not None else float(y.numel())
                    err += float(content(pred, y, m)) * n
                    count += n
        finally:
            g.train()
        value = err / max(count, 1.0)
        if not math.isfinite(value):
            raise ValueError(f"validation loss is not finite ({value}); training diverged, lower the learning rate")
        return value

    data_fp = {"shape": list(plan.shape), "center": plan.center, "scale": plan.scale,
               "target": target is not None}
    history: list[TrainEvent] = []
    step, seconds_before = 0, 0.0
    if resume:
        tensors, state = load_checkpoint(folder)
        try:
            _check_resume(state, config, net, data_fp, folder)
            _check_state(state)
            g.load_state_dict(sub_state(tensors, "model"))
            restore_optimizer("opt_g", stepper.opt_g, tensors, state.get("opt_g_extra", {}))
            if stepper.discriminator is not None:
                stepper.discriminator.load_state_dict(sub_state(tensors, "disc"))
                restore_optimizer("opt_d", stepper.opt_d, tensors, state.get("opt_d_extra", {}))
            best_state = sub_state(tensors, "best")
            check_finite_weights(best_state, "its best weights")
            shapes = {k: tuple(v.shape) for k, v in g.state_dict().items()}
            if {k: tuple(v.shape) for k, v in best_state.items()} != shapes:
                raise ValueError("its best weights do not fit the network")
            rng.bit_generator.state = state["rng"]
            torch_rng.set_state(tensors["rng.torch"])
            step, seconds_before = state["step"], float(state["seconds"])
            best_val, best_step = float(state["best_val"]), state["best_step"]
            initial_val, final_val = float(state["initial_val"]), float(state["final_val"])
            history = [TrainEvent(**e) for e in state["history"]]
        except CheckpointMismatch:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            text = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__
            raise ValueError(f"checkpoint unreadable: {folder / CHECKPOINT_NAME}.safetensors: {text}; "
                             "start afresh with --overwrite") from None
    else:
        initial_val = final_val = best_val = validate()
        best_step, best_state = 0, cpu_state(g)

    ckpt_path: Path | None = None
    last_val_step = step

    def checkpoint(at: int, seconds: float) -> None:
        nonlocal ckpt_path
        if folder is None:
            return
        tensors, extra = stepper_tensors(stepper)
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
        tensors["rng.torch"] = torch_rng.get_state()
        state = {
            "step": at, "seconds": seconds,
            "config": _config_json(config), "architecture": net.architecture, "arch_kwargs": net.arch_kwargs,
            "parent": net.parent, "ndim": net.ndim, "data": data_fp, "best_val": best_val,
            "best_step": best_step, "initial_val": initial_val, "final_val": final_val,
            "history": [asdict(e) for e in history], "rng": rng.bit_generator.state,
            **extra,
            "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        ckpt_path = save_checkpoint(folder, tensors, state)

    def event(at: int, seconds: float, means: dict, val: float | None) -> TrainEvent:
        ev = TrainEvent(step=at, steps=int(config.steps), seconds=seconds,
                        train_loss=means.get("content", float("nan")), val_loss=val, best_val=best_val,
                        losses=dict(means))
        history.append(ev)
        return ev

    def after_validation(at: int, val: float) -> None:
        nonlocal best_val, best_step, best_state, final_val, last_val_step
        final_val, last_val_step = val, at
        if best_val is None or val < best_val:
            best_val, best_step, best_state = val, at, cpu_state(g)

    loop = LoopConfig(steps=int(config.steps), rampdown=float(config.rampdown), log_every=int(config.log_every),
                      val_every=int(config.val_every), checkpoint_every=int(config.val_every),
                      preview_every=int(config.preview_every if preview_every is None else preview_every))
    optimizers = [opt for opt in (stepper.opt_g, stepper.opt_d) if opt is not None]
    pending: TrainEvent | None = None  # the event of a validation step, reported after its checkpoint
    cancelled = False
    unreported: dict[str, float] = {}  # loss sums of the steps since the last report
    n_unreported = 0
    for ev in iter_train(lambda: stepper(lambda: patches.batch(rng)), loop, optimizers=optimizers, start=step,
                         seconds_before=seconds_before, validate=validate, cancel=cancel,
                         describe=lambda: f"batch {config.batch}, patch {config.patch}"):
        if isinstance(ev, Step):
            step = ev.step
            for k, v in ev.losses.items():
                unreported[k] = unreported.get(k, 0.0) + v
            n_unreported += 1
        elif isinstance(ev, Validation):
            after_validation(ev.step, ev.value)
        elif isinstance(ev, Losses):
            unreported, n_unreported = {}, 0
            pending = event(ev.step, ev.seconds, ev.means, ev.validation)
            if ev.validation is None:
                yield pending
                pending = None
        elif isinstance(ev, Checkpoint):
            if pending is None and ev.step > last_val_step:  # an early stop: validate its last weights
                after_validation(ev.step, validate())
                means = {k: v / n_unreported for k, v in unreported.items()}
                pending = event(ev.step, ev.seconds, means, final_val)
            checkpoint(ev.step, ev.seconds)
            if pending is not None:
                yield pending
            pending = None
        elif isinstance(ev, Preview):
            snap = copy.deepcopy(g).eval().to(memory_format=torch.contiguous_format)
            for prm in snap.parameters():
                prm.requires_grad_(False)
            yield PreviewWeights(ev.step, snap)
        elif isinstance(ev, Done):
            cancelled = ev.reason == "cancelled"
            elapsed = ev.seconds
    if ckpt_path is None and resume:  # nothing new to write: the checkpoint resumed from stands
        ckpt_path = folder / f"{CHECKPOINT_NAME}.safetensors"

    stepper.finish()
    result_module = g.to("cpu")
    result_module.load_state_dict(best_state)
    result_module.eval()
    return FineTuneResult(
        module=result_module, ndim=net.ndim, architecture=net.architecture, arch_kwargs=dict(net.arch_kwargs),
        parent=net.parent, steps_done=step, seconds=elapsed,
        cancelled=cancelled, best_val=best_val, history=history, checkpoint=ckpt_path, config=config,
        initial_val=initial_val, final_val=final_val, best_step=best_step, data_shape=plan.shape,
        parent_card={k: v for k, v in net.card.items() if not str(k).startswith("_")},
        skipped_steps=stepper.skipped,
    )


def _check_state(state: dict) -> None:
    """Refuse a tampered or damaged checkpoint state: wrong types, NaN, impossible step counts.

    Raises
    ------
    ValueError
        Naming the first bad field.
    """
    planned = state["config"]["steps"]
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= planned:
        raise ValueError(f"step is {step!r}, not a step count from 0 to the {planned} steps planned")
    if finite_number(state["seconds"], "seconds") < 0:
        raise ValueError(f"seconds is {state['seconds']!r}, negative")
    for key in ("best_val", "initial_val", "final_val"):
        finite_number(state[key], key)
    best_step = state["best_step"]
    if isinstance(best_step, bool) or not isinstance(best_step, int) or not 0 <= best_step <= step:
        raise ValueError(f"best_step is {best_step!r}, not a step from 0 to {step}")
    if not isinstance(state["history"], list) or not all(isinstance(e, dict) for e in state["history"]):
        raise ValueError("history is not a list of records")


def _check_resume(state: dict, config: FineTuneConfig, net: _Net, data_fp: dict, folder: Path) -> None:
    """Refuse a checkpoint made with other data, another network or other settings
    (:class:`CheckpointMismatch`)."""
    where = f"the checkpoint in {folder}"
    if (state.get("architecture"), state.get("arch_kwargs"), state.get("parent")) != (
        net.architecture, net.arch_kwargs, net.parent
    ):
        raise CheckpointMismatch(f"{where} is of {state.get('parent') or state.get('architecture')} "
                         f"({state.get('architecture')} {state.get('arch_kwargs')}), not of "
                         f"{net.parent or net.architecture}; resume with the same model")
    old = state.get("data", {})
    if (old.get("shape") != data_fp["shape"] or old.get("target") != data_fp["target"]
            or not math.isclose(old.get("center", math.nan), data_fp["center"], rel_tol=1e-9, abs_tol=1e-12)
            or not math.isclose(old.get("scale", math.nan), data_fp["scale"], rel_tol=1e-9)):
        raise CheckpointMismatch(f"{where} was made with other data (shape {old.get('shape')}); resume with the same data")
    now = _config_json(config)
    old = {**_LEGACY_SETTINGS, **state["config"]}
    diff = [f.name for f in fields(FineTuneConfig)
            if f.name not in _RESUMABLE_CHANGES and old.get(f.name) != now[f.name]]
    if diff:
        pairs = ", ".join(f"{k} {old.get(k)!r} -> {now[k]!r}" for k in diff)
        raise CheckpointMismatch(f"{where} was made with other settings ({pairs}); resume with the same settings")


