"""WGAN-GP (Gulrajani et al. 2017, algorithm 1) in the supervised trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_cryoden.models import Pix2PixDiscriminator, UpsampleUnet48
from napari_cryoden.training import SupervisedStep, TrainConfig, train


def batches(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        clean = torch.randn(n, 1, size, size, size, generator=g)
        yield clean + 0.5 * torch.randn(n, 1, size, size, size, generator=g), clean


class LinearCritic(nn.Module):
    """D(noisy, c) = <w, c>: its gradient with respect to c is w everywhere."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, noisy, candidate):
        return (candidate * self.w).flatten(1).sum(1).view(-1, 1, 1, 1, 1)


@pytest.mark.parametrize("norm, penalty", [(1.0, 0.0), (3.0, 4.0), (0.5, 0.25)])
def test_gradient_penalty_is_the_squared_distance_of_the_gradient_norm_from_one(norm, penalty):
    w = torch.randn(1, 1, 4, 4, 4)
    w *= norm / w.norm()
    step = SupervisedStep(nn.Conv3d(1, 1, 1), mode="wgangp", discriminator=LinearCritic(w))
    real, fake = torch.randn(3, 1, 4, 4, 4), torch.randn(3, 1, 4, 4, 4)
    gp = step.gradient_penalty(torch.zeros_like(real), real, fake)
    assert gp.item() == pytest.approx(penalty, rel=1e-5, abs=1e-6)
    gp.backward()  # the penalty is differentiable with respect to the critic (create_graph)
    assert step.discriminator.w.grad is not None and torch.isfinite(step.discriminator.w.grad).all()


def test_wgangp_training_runs_with_finite_losses():
    gen = UpsampleUnet48(ch=4, final_activation="identity")
    critic = Pix2PixDiscriminator(norm=None, base=8)
    logged = []
    cfg = TrainConfig(steps=4, mode="wgangp", n_critic=2, log_every=2, device="cpu", precision="fp32")
    res = train(gen, batches(), cfg, discriminator=critic, progress=lambda s, n, e: logged.append(e))
    assert res.steps_done == 4 and [e["step"] for e in logged] == [2, 4]
    for e in logged:
        assert set(e) == {"step", "seconds", "d", "gp", "wdist", "adv", "content"}
        assert all(np.isfinite(v) for v in e.values())
        assert e["gp"] >= 0
    assert not gen.training and not critic.training


def test_wgangp_defaults_follow_the_paper():
    step = SupervisedStep(UpsampleUnet48(ch=4), mode="wgangp", discriminator=Pix2PixDiscriminator(norm=None, base=4))
    for opt in (step.opt_g, step.opt_d):
        group = opt.param_groups[0]
        assert group["lr"] == 1e-4 and tuple(group["betas"]) == (0.0, 0.9)
    assert step.n_critic == 5 and step.gp_weight == 10.0


def test_critic_takes_n_critic_batches_per_generator_step():
    pulls = []
    stream = batches()

    def next_batch():
        pulls.append(1)
        return next(stream)

    step = SupervisedStep(UpsampleUnet48(ch=4, final_activation="identity"), mode="wgangp", n_critic=3,
                          discriminator=Pix2PixDiscriminator(norm=None, base=4))
    step(next_batch)
    assert len(pulls) == 3


def test_wgangp_refuses_a_critic_with_batch_norm():
    with pytest.raises(ValueError, match="must not use batch normalisation"):
        SupervisedStep(UpsampleUnet48(ch=4), mode="wgangp", discriminator=Pix2PixDiscriminator(norm="batch"))
    with pytest.raises(ValueError, match="needs a discriminator"):
        train(UpsampleUnet48(ch=4), batches(), TrainConfig(steps=1, mode="wgangp"))


def test_non_finite_gradients_are_skipped_then_refused():
    """An update with Inf/NaN gradients is skipped (weights unchanged); too many in a row raise."""
    net = nn.Conv3d(1, 1, 3, padding=1)
    before = net.weight.detach().clone()
    step = SupervisedStep(net, mode="ae", loss="l2", max_skipped=3)

    def batch():
        x = torch.ones(1, 1, 4, 4, 4)
        return x, x

    handle = net.weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    for _ in range(2):
        assert np.isfinite(step(batch)["content"])
    assert step.skipped == 2
    torch.testing.assert_close(net.weight.detach(), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not finite in 3 updates in a row"):
        step(batch)
    handle.remove()
    step(batch)  # a good update resets the count
    assert step.skipped == 3 and not torch.equal(net.weight.detach(), before)


def test_non_finite_loss_is_refused():
    step = SupervisedStep(nn.Conv3d(1, 1, 3, padding=1), mode="ae")
    x = torch.full((1, 1, 4, 4, 4), float("nan"))
    with pytest.raises(ValueError, match="loss is not finite"):
        step(lambda: (x, x))
