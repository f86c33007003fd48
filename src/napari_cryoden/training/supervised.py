"""Supervised training: auto-encoder (L1/L2) and conditional GAN (adversarial + L1 content).

The GAN follows the thesis (van Gijn 2019, section 3.7): a generator (UpsampleUnet48) and a
conditional discriminator that sees the noisy volume with either the clean or the generated
volume, trained with Adam. As in pix2pix (Isola et al. 2017, eq. 4), the generator loss adds an
L1 content term weighted by `l1_weight` to the adversarial term, which keeps the output faithful
to the target while the discriminator sharpens it.

Progress and cancellation are plain callables, so no Qt is needed here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..inference.engine import resolve_device, resolve_precision

__all__ = ["TrainConfig", "TrainResult", "train"]


@dataclass
class TrainConfig:
    """Settings of :func:`train`.

    Attributes
    ----------
    steps : int
        Generator updates.
    mode : {"ae", "gan"}
        "ae": content loss only; "gan": adversarial loss plus `l1_weight` x content loss.
    loss : {"l1", "l2"}
        Content loss.
    lr, lr_d : float
        Adam learning rates of the generator and the discriminator; betas (0.5, 0.999) as in
        the GAN-training recommendations the thesis follows (Chintala et al. 2016).
    l1_weight : float
        Weight of the content term in GAN mode (pix2pix uses 100).
    device, precision : str
        As in :func:`napari_cryoden.denoise`; bf16 autocast on CPUs with native bf16.
    seed : int
    log_every : int
        Steps between progress reports.
    """

    steps: int = 1000
    mode: str = "gan"
    loss: str = "l1"
    lr: float = 2e-4
    lr_d: float = 2e-4
    l1_weight: float = 100.0
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10


@dataclass
class TrainResult:
    """History of a run: per logged step, the mean losses since the last log."""

    steps_done: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    cancelled: bool = False


def _content_loss(kind: str):
    if kind == "l1":
        return F.l1_loss
    if kind == "l2":
        return F.mse_loss
    raise ValueError(f"loss must be 'l1' or 'l2', got {kind!r}")


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
        :func:`~napari_cryoden.training.data.normalize_pair`).
    config : TrainConfig
    discriminator : torch.nn.Module, optional
        Required in "gan" mode; called as ``discriminator(noisy, candidate)`` and returns logits.
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
        For an unknown mode or loss, or "gan" without a discriminator, or a non-finite loss
        (the data holds NaN/Inf or training diverged).
    """
    if config.mode not in ("ae", "gan"):
        raise ValueError(f"mode must be 'ae' or 'gan', got {config.mode!r}")
    if config.mode == "gan" and discriminator is None:
        raise ValueError("GAN training needs a discriminator")
    content = _content_loss(config.loss)
    torch.manual_seed(config.seed)
    dev = resolve_device(config.device)
    prec = resolve_precision(config.precision, dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
    fmt = torch.channels_last_3d if (dev.type == "cpu" and dtype is not None) else torch.contiguous_format

    def autocast():
        return torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)

    g = generator.to(dev, memory_format=fmt).train()
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=(0.5, 0.999))
    if config.mode == "gan":
        # The discriminator runs in fp32: on the CPU, oneDNN's bf16 backward of its stride-2
        # convolutions on 4^3 inputs gave NaN weight gradients (torch 2.13), and it is small.
        d_net = discriminator.to(dev).train()

        def d(noisy, candidate):
            with torch.autocast(dev.type, enabled=False):
                return d_net(noisy.float().contiguous(), candidate.float().contiguous())

        opt_d = torch.optim.Adam(d_net.parameters(), lr=config.lr_d, betas=(0.5, 0.999))
    scaler = torch.amp.GradScaler("cuda") if prec == "fp16" else None

    def step_opt(loss, opt):
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    result = TrainResult()
    sums: dict[str, float] = {}
    t0 = time.perf_counter()
    it = iter(batches)
    for step in range(1, config.steps + 1):
        if cancel is not None and cancel():
            result.cancelled = True
            break
        x, y = next(it)
        x = x.to(dev).contiguous(memory_format=fmt)
        y = y.to(dev).contiguous(memory_format=fmt)
        losses = {}
        if config.mode == "gan":
            with autocast():
                fake = g(x)
                real_logit = d(x, y)
                fake_logit = d(x, fake.detach())
                loss_d = 0.5 * (
                    F.binary_cross_entropy_with_logits(real_logit.float(), torch.ones_like(real_logit, dtype=torch.float32))
                    + F.binary_cross_entropy_with_logits(fake_logit.float(), torch.zeros_like(fake_logit, dtype=torch.float32))
                )
            step_opt(loss_d, opt_d)
            with autocast():
                adv_logit = d(x, fake)
                adv = F.binary_cross_entropy_with_logits(adv_logit.float(), torch.ones_like(adv_logit, dtype=torch.float32))
                rec = content(fake.float(), y)
                loss_g = adv + config.l1_weight * rec
            step_opt(loss_g, opt_g)
            losses = {"d": loss_d.item(), "adv": adv.item(), "content": rec.item()}
        else:
            with autocast():
                rec = content(g(x).float(), y)
            step_opt(rec, opt_g)
            losses = {"content": rec.item()}
        if not all(map(lambda v: v == v and abs(v) != float("inf"), losses.values())):
            raise ValueError(f"training stopped at step {step}: loss is not finite ({losses}); check the data for NaN/Inf")
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        result.steps_done = step
        if step % config.log_every == 0 or step == config.steps:
            n = config.log_every if step % config.log_every == 0 else step % config.log_every
            entry = {"step": step, "seconds": time.perf_counter() - t0, **{k: v / n for k, v in sums.items()}}
            result.history.append(entry)
            sums = {}
            if progress is not None:
                progress(step, config.steps, entry)
    result.seconds = time.perf_counter() - t0
    g.eval().to(memory_format=torch.contiguous_format)
    if config.mode == "gan":
        discriminator.eval()
    return result
