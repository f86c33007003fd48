"""Supervised training: auto-encoder (L1/L2), conditional GAN and conditional WGAN-GP.

The GAN follows the thesis (van Gijn 2019, section 3.7): a generator (UpsampleUnet48) and a
conditional discriminator that sees the noisy volume with either the clean or the generated
volume, trained with Adam. As in pix2pix (Isola et al. 2017, eq. 4), the generator loss adds an
L1 content term weighted by `l1_weight` to the adversarial term, which keeps the output faithful
to the target while the discriminator sharpens it.

The WGAN-GP (thesis section 3.8) replaces the discriminator by a critic without sigmoid and
without batch normalisation (:class:`~napari_cryoden.models.Pix2PixDiscriminator` with
``norm=None``) trained on the Wasserstein loss with a gradient penalty on random interpolates of
real and generated volumes (Gulrajani et al. 2017, algorithm 1): `n_critic` critic updates per
generator update, penalty weight λ = 10, Adam with lr 1e-4 and betas (0, 0.9).

The gray-level constraint of Ouyang et al. (2020, section 3.1, eqs. 5 and 8) is the content loss
``"graylevel"``: the squared error summed over the pixels (voxels) of each image and averaged over
the batch, weighted by ``l1_weight`` (λ = 0.1 in the paper) next to the Wasserstein term of their
2D WGAN. Their critic was clipped to [-0.001, 0.001] (WGAN, Arjovsky et al. 2017) rather than
penalised: ``weight_clip=0.001, gp_weight=0`` gives that; the gradient penalty stays the default.

:class:`SupervisedStep` does one generator update (with the discriminator or critic updates that
precede it); :func:`train` loops it over a stream of batches, and
:func:`napari_cryoden.training.finetune.fine_tune` uses it on patches of the user's data.
Progress and cancellation are plain callables, so no Qt is needed here.

References
----------
.. [1] van Gijn, D. (2019). Denoising Cryo-Electron Tomograms Using Deep Learning. Master's
   thesis, Utrecht University, sections 2.7, 3.7 and 3.8.
.. [2] Isola, P. et al. (2017). Image-to-image translation with conditional adversarial
   networks. CVPR, 1125-1134. doi:10.1109/CVPR.2017.632
.. [3] Gulrajani, I. et al. (2017). Improved Training of Wasserstein GANs. NeurIPS 30,
   5767-5777, algorithm 1 and section 4.
.. [4] Ouyang, J., He, Y., Tang, H. & Fu, Z. (2020). Research on denoising of cryo-em images
   based on deep learning (received 15 May 2020), section 3.1, eqs. 5, 6 and 8.
.. [5] Arjovsky, M., Chintala, S. & Bottou, L. (2017). Wasserstein generative adversarial
   networks. ICML, PMLR 70, 214-223, algorithm 1 (weight clipping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..device import autocast_dtype, check_device, check_precision, resolve_device, resolve_precision
from .checks import check_betas, check_choice, check_number
from .loop import Done, LoopConfig, Losses, iter_train, rampdown_factor

__all__ = ["LOSSES", "MODES", "SupervisedStep", "TrainConfig", "TrainResult", "content_loss", "rampdown_factor", "supervised_stepper",
           "train"]

#: Training modes of :func:`train` / :class:`SupervisedStep`.
MODES = ("ae", "gan", "wgangp")
#: Content losses of :func:`content_loss`.
LOSSES = ("l1", "l2", "graylevel")

#: Adam (lr, betas) per mode when not set: GAN recommendations (Chintala et al. 2016) for "ae" and
#: "gan", the WGAN-GP paper's (Gulrajani et al. 2017, algorithm 1) for "wgangp".
_OPTIMIZER_DEFAULTS = {"ae": (2e-4, (0.5, 0.999)), "gan": (2e-4, (0.5, 0.999)), "wgangp": (1e-4, (0.0, 0.9))}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train` (and of the 3D recipes).

    Validated when built (:class:`ValueError`, one line naming the field, from
    :mod:`~napari_cryoden.training.checks`); frozen. Whether the device exists and supports the
    precision is checked when the run starts.

    Attributes
    ----------
    steps : int
        Generator updates.
    mode : {"ae", "gan", "wgangp"}
        "ae": content loss only; "gan": adversarial loss plus `l1_weight` x content loss;
        "wgangp": Wasserstein critic loss with gradient penalty, generator loss
        ``-critic + l1_weight x content``.
    loss : {"l1", "l2", "graylevel"}
        Content loss (see :func:`content_loss`).
    lr, lr_d : float, optional
        Adam learning rates of the generator and the discriminator/critic. Default: 2e-4 for
        "ae" and "gan", 1e-4 for "wgangp" (Gulrajani et al. 2017, algorithm 1).
    betas : (float, float), optional
        Adam betas of both optimizers. Default: (0.5, 0.999) for "ae" and "gan" (the GAN
        recommendations the thesis follows, Chintala et al. 2016), (0.0, 0.9) for "wgangp".
    l1_weight : float
        Weight of the content term in "gan" and "wgangp" mode (pix2pix uses 100).
    n_critic : int
        Critic updates per generator update in "wgangp" mode (5 in the paper).
    gp_weight : float
        Weight λ of the gradient penalty in "wgangp" mode (10 in the paper).
    weight_clip : float, optional
        In "wgangp" mode, clip every critic parameter to ``[-weight_clip, weight_clip]`` after
        each critic update (WGAN, Arjovsky et al. 2017; 0.001 in Ouyang et al. 2020).
    rampdown : float
        Fraction of the steps, at the end, over which both learning rates fall to zero along a
        half cosine (see :func:`rampdown_factor`); 0 keeps them constant.
    device, precision : str
        As in :func:`napari_cryoden.denoise`; bf16 autocast on CPUs with native bf16.
    seed : int
    log_every : int
        Steps between progress reports.
    """

    steps: int = 1000
    mode: str = "gan"
    loss: str = "l1"
    lr: float | None = None
    lr_d: float | None = None
    l1_weight: float = 100.0
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10
    n_critic: int = 5
    gp_weight: float = 10.0
    betas: tuple[float, float] | None = None
    weight_clip: float | None = None
    rampdown: float = 0.0

    def __post_init__(self) -> None:
        check_number("steps", self.steps, integer=True, positive=True)
        check_choice("mode", self.mode, MODES)
        check_choice("loss", self.loss, LOSSES)
        for name in ("lr", "lr_d", "weight_clip"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), positive=True)
        check_number("l1_weight", self.l1_weight, minimum=0)
        check_number("gp_weight", self.gp_weight, minimum=0)
        check_number("n_critic", self.n_critic, integer=True, positive=True)
        check_number("seed", self.seed, integer=True, minimum=0)
        check_number("log_every", self.log_every, integer=True, minimum=0)
        check_number("rampdown", self.rampdown, minimum=0, maximum=1)
        check_device(self.device)
        check_precision(self.precision)
        object.__setattr__(self, "betas", check_betas(self.betas))


@dataclass
class TrainResult:
    """History of a run: per logged step, the mean losses since the last log."""

    steps_done: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    cancelled: bool = False


def content_loss(kind: str) -> Callable[..., torch.Tensor]:
    """The content loss ``f(pred, target, mask=None)``.

    Parameters
    ----------
    kind : {"l1", "l2", "graylevel"}
        "l1", "l2": mean absolute or squared error, over the non-zero voxels of `mask` if given.
        "graylevel": the gray-level constraint of Ouyang et al. (2020, section 3.1, eq. 8),
        ``(1/N) Σ_n Σ_{pixels} (target - pred)^2``: the squared error summed over the pixels (or
        voxels) of each of the N samples, averaged over the batch (only the voxels of `mask`
        count when given). It is the L2 loss times the pixels per sample, so its weight in the
        generator loss depends on the patch size (the paper: λ = 0.1 on 256x256 images).

    Returns
    -------
    callable(pred, target, mask=None) -> scalar tensor (float32)
        `pred` and `target` of shape (N, C, ...) alike; `mask` broadcastable to them.

    Raises
    ------
    ValueError
        If `kind` is not one of :data:`LOSSES`.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")

    def loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        diff = pred.float() - target.float()
        err = diff.abs() if kind == "l1" else diff * diff
        if kind == "graylevel":
            if mask is not None:
                err = err * mask
            return err.flatten(1).sum(1).mean()
        if mask is None:
            return err.mean()
        return (err * mask).sum() / mask.sum().clamp_min(1)

    return loss


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _positive_or_none(name: str, value) -> float | None:
    """`value` as a float; None stays None; anything but a finite positive number raises ValueError."""
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and 0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _finite(losses: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in losses.values())


class SupervisedStep:
    """One generator update of supervised training, with the discriminator/critic updates before it.

    Parameters
    ----------
    generator : torch.nn.Module
        Maps (N, 1, Z, Y, X) (or (N, 1, Y, X) with ``ndim=2``) noisy patches to denoised ones;
        moved to the device and trained in place.
    mode : {"ae", "gan", "wgangp"}
    loss : {"l1", "l2", "graylevel"}
        Content loss (see :func:`content_loss`).
    discriminator : torch.nn.Module, optional
        Required for "gan" and "wgangp"; called as ``discriminator(noisy, candidate)``, returns
        logits (GAN) or critic scores (WGAN-GP, averaged per sample). A WGAN-GP critic must not
        hold batch normalisation (Gulrajani et al. 2017, section 4).
    lr, lr_d : float, optional
    betas : (float, float), optional
        See :class:`TrainConfig` for the defaults per mode.
    l1_weight, n_critic, gp_weight : float, int, float
        See :class:`TrainConfig`.
    weight_clip : float, optional
        "wgangp" mode: clip the critic's parameters to ``[-weight_clip, weight_clip]`` after every
        critic update (WGAN weight clipping, Arjovsky et al. 2017, algorithm 1; Ouyang et al.
        2020, section 3.1, use 0.001). Combine with ``gp_weight=0`` for the original WGAN.
    device : torch.device
    precision : {"fp32", "bf16", "fp16"}
        Resolved precision (see :func:`~napari_cryoden.inference.resolve_precision`). The
        discriminator/critic always runs in fp32: on the CPU, oneDNN's bf16 backward of its
        stride-2 convolutions on 4^3 inputs gave NaN weight gradients (torch 2.13).
    ndim : {2, 3}
        Spatial dimensions of the patches.
    generator_rng : torch.Generator, optional
        CPU generator for the interpolation weights of the gradient penalty (seeded runs and
        exact resumption); default: torch's global generator.
    channels_last : bool, optional
        Run the generator in the channels-last memory format. Default: on the CPU with bf16 (as
        inference does). With torch 2.13 on the CPU, the bf16 channels-last backward pass of
        UpsampleUnet48 is not deterministic when its deepest feature map is 2 voxels wide (16^3
        patches) and now and then gives Inf/NaN weight gradients; it was deterministic at 3^3
        and larger, so callers with small patches should pass False.
    max_skipped : int, default=20
        An update whose gradients are not finite is skipped (as a gradient scaler does);
        this many skipped updates in a row raise ValueError.
    max_grad_norm : float, optional
        Rescale the generator's gradients so that their global L2 norm is at most this before
        each generator update (Pascanu et al. 2013, "On the difficulty of training recurrent
        neural networks", ICML, algorithm 2). Default: no clipping. The norm before clipping of
        the last generator update is kept in ``grad_norm``.

    Calling the object with ``next_batch`` (a callable returning ``(noisy, target)`` or
    ``(noisy, target, mask)`` tensors) does one generator update and returns the losses as
    floats: ``content`` always; ``d`` and ``adv`` for "gan"; ``d`` (critic loss with penalty),
    ``gp`` (the penalty before weighting), ``wdist`` (critic estimate of the Wasserstein distance)
    and ``adv`` for "wgangp". A `mask` restricts the content loss to its non-zero voxels
    (Noise2Void). In "wgangp" mode `next_batch` is called ``n_critic`` times, once per critic
    update; the generator update reuses the last batch.

    Raises
    ------
    ValueError
        For an unknown mode or loss, a missing discriminator, a WGAN-GP critic with batch
        normalisation, a `weight_clip` or `max_grad_norm` that is not a positive number, or
        (when called) a non-finite loss.
    """

    def __init__(
        self,
        generator: nn.Module,
        *,
        mode: str = "ae",
        loss: str = "l1",
        discriminator: nn.Module | None = None,
        lr: float | None = None,
        lr_d: float | None = None,
        betas: tuple[float, float] | None = None,
        l1_weight: float = 100.0,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        weight_clip: float | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        ndim: int = 3,
        generator_rng: torch.Generator | None = None,
        channels_last: bool | None = None,
        max_skipped: int = 20,
        max_grad_norm: float | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "ae" and discriminator is None:
            raise ValueError(f"{'GAN' if mode == 'gan' else 'WGAN-GP'} training needs a discriminator")
        if mode == "wgangp" and _has_batch_norm(discriminator):
            raise ValueError(
                "a WGAN-GP critic must not use batch normalisation (Gulrajani et al. 2017, sec. 4); "
                "use Pix2PixDiscriminator(norm=None)"
            )
        if mode == "wgangp" and (not isinstance(n_critic, int) or n_critic < 1):
            raise ValueError(f"n_critic must be a positive integer, got {n_critic!r}")
        self.weight_clip = _positive_or_none("weight_clip", weight_clip)
        clip_norm = _positive_or_none("max_grad_norm", max_grad_norm)
        self.max_grad_norm = math.inf if clip_norm is None else clip_norm
        self.grad_norm = math.nan
        self.mode, self.content = mode, content_loss(loss)
        self.l1_weight, self.n_critic, self.gp_weight = float(l1_weight), int(n_critic), float(gp_weight)
        self.dev = torch.device(device)
        self.precision = precision
        self.dtype = autocast_dtype(precision)
        if channels_last is None:
            channels_last = self.dev.type == "cpu" and self.dtype is not None
        cl = torch.channels_last_3d if ndim == 3 else torch.channels_last
        self.fmt = cl if channels_last else torch.contiguous_format
        self.max_skipped, self.skipped, self._skipped_in_row = int(max_skipped), 0, 0
        self.rng = generator_rng
        lr_default, betas_default = _OPTIMIZER_DEFAULTS[mode]
        lr = lr_default if lr is None else lr
        lr_d = lr if lr_d is None else lr_d
        betas = tuple(betas) if betas is not None else betas_default
        self.generator = generator.to(self.dev, memory_format=self.fmt).train()
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)
        self.discriminator = self.opt_d = None
        if mode != "ae":
            self.discriminator = discriminator.to(self.dev).train()
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr_d, betas=betas)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    # ----------------------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.dev.type, dtype=self.dtype, enabled=self.dtype is not None)

    def _d(self, noisy: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """The discriminator/critic in fp32 (see the class notes)."""
        with torch.autocast(self.dev.type, enabled=False):
            return self.discriminator(noisy.float().contiguous(), candidate.float().contiguous())

    def _critic(self, noisy: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """One critic value per sample: the mean of the patch scores, shape (N,)."""
        return self._d(noisy, candidate).flatten(1).mean(1)

    def _step_opt(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:  # the scaler skips steps with Inf/NaN gradients itself
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
            return
        loss.backward()
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        limit = self.max_grad_norm if opt is self.opt_g else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, limit) if params else torch.zeros(())
        if opt is self.opt_g:
            self.grad_norm = float(norm)
        if torch.isfinite(norm):
            opt.step()
            self._skipped_in_row = 0
            return
        opt.zero_grad(set_to_none=True)
        self.skipped += 1
        self._skipped_in_row += 1
        if self._skipped_in_row >= self.max_skipped:
            raise ValueError(f"gradients were not finite in {self._skipped_in_row} updates in a row; "
                             "training diverged (lower the learning rate or use fp32 precision)")

    def _to_dev(self, batch):
        x, y, *rest = batch
        x = x.to(self.dev, non_blocking=True).contiguous(memory_format=self.fmt)
        y = y.to(self.dev, non_blocking=True).contiguous(memory_format=self.fmt)
        mask = rest[0].to(self.dev, non_blocking=True) if rest and rest[0] is not None else None
        return x, y, mask

    def gradient_penalty(self, noisy: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """``E[(||∇ D(noisy, x̂)||_2 - 1)^2]`` over x̂ = ε real + (1 - ε) fake, ε ~ U[0, 1] per sample.

        Gulrajani et al. (2017), algorithm 1, lines 4-7; the gradient is taken with respect to
        the candidate volume only (the noisy volume conditions the critic and is the same for
        real and fake).
        """
        n = real.shape[0]
        eps = torch.rand((n,) + (1,) * (real.dim() - 1), generator=self.rng).to(self.dev)
        mix = (eps * real.float() + (1 - eps) * fake.detach().float()).requires_grad_(True)
        scores = self._critic(noisy, mix)
        (grad,) = torch.autograd.grad(scores.sum(), mix, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()

    def __call__(self, next_batch: Callable[[], tuple]) -> dict[str, float]:
        g = self.generator
        if self.mode == "ae":
            x, y, mask = self._to_dev(next_batch())
            with self._autocast():
                rec = self.content(g(x), y, mask)
            self._step_opt(rec, self.opt_g)
            losses = {"content": rec.item()}
        elif self.mode == "gan":
            x, y, mask = self._to_dev(next_batch())
            with self._autocast():
                fake = g(x)
            real_logit = self._d(x, y)
            fake_logit = self._d(x, fake.detach())
            loss_d = 0.5 * (
                F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
            )
            self._step_opt(loss_d, self.opt_d)
            adv_logit = self._d(x, fake)
            adv = F.binary_cross_entropy_with_logits(adv_logit, torch.ones_like(adv_logit))
            rec = self.content(fake, y, mask)
            self._step_opt(adv + self.l1_weight * rec, self.opt_g)
            losses = {"d": loss_d.item(), "adv": adv.item(), "content": rec.item()}
        else:  # wgangp: Gulrajani et al. (2017), algorithm 1
            sums = {"d": 0.0, "gp": 0.0, "wdist": 0.0}
            for _ in range(self.n_critic):
                x, y, mask = self._to_dev(next_batch())
                with torch.no_grad(), self._autocast():
                    fake = g(x)
                real_score = self._critic(x, y).mean()
                fake_score = self._critic(x, fake).mean()
                gp = self.gradient_penalty(x, y, fake)
                loss_d = fake_score - real_score + self.gp_weight * gp
                self._step_opt(loss_d, self.opt_d)
                if self.weight_clip is not None:  # WGAN (Arjovsky et al. 2017, algorithm 1, line 7)
                    with torch.no_grad():
                        for p in self.discriminator.parameters():
                            p.clamp_(-self.weight_clip, self.weight_clip)
                values = {"d": loss_d.item(), "gp": gp.item(), "wdist": (real_score - fake_score).item()}
                if not _finite(values):
                    raise ValueError(f"critic loss is not finite ({values}); check the data for NaN/Inf")
                for k, v in values.items():
                    sums[k] += v / self.n_critic
            for p in self.discriminator.parameters():  # no critic gradients in the generator step
                p.requires_grad_(False)
            try:
                with self._autocast():
                    fake = g(x)
                adv = -self._critic(x, fake).mean()
                rec = self.content(fake, y, mask)
                self._step_opt(adv + self.l1_weight * rec, self.opt_g)
            finally:
                for p in self.discriminator.parameters():
                    p.requires_grad_(True)
            losses = {**sums, "adv": adv.item(), "content": rec.item()}
        if not _finite(losses):
            raise ValueError(f"loss is not finite ({losses}); check the data for NaN/Inf or lower the learning rate")
        return losses

    def finish(self) -> None:
        """Put the networks in eval mode and the generator back in the default memory format."""
        self.generator.eval().to(memory_format=torch.contiguous_format)
        if self.discriminator is not None:
            self.discriminator.eval()


def supervised_stepper(generator: nn.Module, config: TrainConfig, *,
                       discriminator: nn.Module | None = None) -> SupervisedStep:
    """The :class:`SupervisedStep` that :func:`train` runs for `config`, after seeding torch with ``config.seed``.

    Raises
    ------
    ValueError
        As :func:`train`, for bad settings.
    """
    torch.manual_seed(config.seed)
    dev = resolve_device(config.device)
    prec = resolve_precision(config.precision, dev)
    return SupervisedStep(
        generator, mode=config.mode, loss=config.loss, discriminator=discriminator, lr=config.lr,
        lr_d=config.lr_d, betas=config.betas, l1_weight=config.l1_weight, n_critic=config.n_critic,
        gp_weight=config.gp_weight, weight_clip=config.weight_clip, device=dev, precision=prec,
    )


def train(
    generator: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    config: TrainConfig,
    *,
    discriminator: nn.Module | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train `generator` (in place) on (noisy, clean) batches.

    Parameters
    ----------
    generator : torch.nn.Module
        Maps (N, 1, Z, Y, X) noisy patches to denoised ones.
    batches : iterable of (noisy, clean) tensors
        Each of shape (N, 1, Z, Y, X), float32, normalised (see
        :func:`~napari_cryoden.training.data.normalize_pair`). "wgangp" mode takes `n_critic`
        batches per step.
    config : TrainConfig
    discriminator : torch.nn.Module, optional
        Required in "gan" mode (called as ``discriminator(noisy, candidate)``, returns logits)
        and in "wgangp" mode (a critic without batch normalisation, e.g.
        ``Pix2PixDiscriminator(norm=None)``).
    progress : callable(step, steps, losses), optional
        Called every ``config.log_every`` steps with the mean losses since the last call.
    cancel : callable() -> bool, optional
        Polled before every step; True ends training early (``result.cancelled``), keeping the
        weights reached so far.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        For an unknown mode or loss, "gan"/"wgangp" without a discriminator, a WGAN-GP critic
        with batch normalisation, or a non-finite loss (the data holds NaN/Inf or training
        diverged).
    """
    stepper = supervised_stepper(generator, config, discriminator=discriminator)
    loop = LoopConfig(steps=config.steps, rampdown=config.rampdown, log_every=config.log_every)
    result = TrainResult()
    it = iter(batches)
    optimizers = [opt for opt in (stepper.opt_g, stepper.opt_d) if opt]
    for ev in iter_train(lambda: stepper(lambda: next(it)), loop, optimizers=optimizers, cancel=cancel):
        if isinstance(ev, Losses):
            entry = {"step": ev.step, "seconds": ev.seconds, **ev.means}
            result.history.append(entry)
            if progress is not None:
                progress(ev.step, config.steps, entry)
        elif isinstance(ev, Done):
            result.steps_done, result.seconds, result.cancelled = ev.step, ev.seconds, ev.reason == "cancelled"
    stepper.finish()
    return result
