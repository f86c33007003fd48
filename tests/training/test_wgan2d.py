"""The 2D WGAN with the gray-level constraint of Ouyang et al. (2020, section 3.1) on micrographs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from napari_cryoden.inference import denoise
from napari_cryoden.models import Critic2D, N2NUNet2D, load_model
from napari_cryoden.training import FineTuneConfig, SupervisedStep, fine_tune, save_finetuned
from napari_cryoden.training.checkpoint import CHECKPOINT_NAME
from napari_cryoden.training.supervised import content_loss

SCRATCH_2D = {"architecture": "N2NUNet2D", "arch_kwargs": {"ch": 4}}


def cfg(**kw) -> FineTuneConfig:
    base = dict(mode="supervised", adversarial="wgangp", loss="graylevel", l1_weight=0.1, patch=32, batch=2,
                steps=3, lr=1e-3, val_every=1, val_patches=2, n_critic=2, disc_base=4, device="cpu",
                precision="fp32")
    return FineTuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pair():
    """clean, noisy: a (72, 64) micrograph of smooth structure and its noisy copy."""
    rng = np.random.default_rng(7)
    y, x = np.meshgrid(np.arange(72), np.arange(64), indexing="ij")
    clean = (np.sin(y / 4.0) + np.cos(x / 5.0)).astype(np.float32)
    return clean, (clean + rng.normal(0, 1, clean.shape)).astype(np.float32)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------
# The critic


@pytest.mark.parametrize("conditional", [True, False])
def test_critic2d_gives_patch_scores_and_has_no_normalisation(conditional):
    critic = Critic2D(base=4, conditional=conditional)
    noisy, cand = torch.randn(3, 1, 32, 48), torch.randn(3, 1, 32, 48)
    out = critic(noisy, cand)
    assert out.shape == (3, 1, 2, 3) and torch.isfinite(out).all()
    assert not any(isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
                   for m in critic.modules())
    assert critic.down[0].in_channels == (2 if conditional else 1)
    assert [d.out_channels for d in critic.down] == [4, 8, 16, 32]
    changed = critic(noisy + 1, cand)  # the conditional critic sees the noisy image, the other not
    assert torch.equal(changed, out) != conditional
    with pytest.raises(ValueError, match="base must be a positive integer"):
        Critic2D(base=0)


# --------------------------------------------------------------------------------------------
# The gray-level constraint


def test_graylevel_loss_is_the_per_image_sum_of_squared_errors_averaged_over_the_batch():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]], [[[3.0, 0.0], [0.0, 0.0]]]])
    # image 1: 1 + 4 + 0 + 1 = 6; image 2: 9; (6 + 9) / 2 = 7.5 (Ouyang et al. 2020, eq. 8)
    assert content_loss("graylevel")(pred, target).item() == pytest.approx(7.5)
    assert content_loss("l2")(pred, target).item() == pytest.approx(15 / 8)  # l2 unchanged: the mean
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    assert content_loss("graylevel")(pred, target, mask).item() == pytest.approx(2.5)  # (1 + 4) / 2
    with pytest.raises(ValueError, match="loss must be one of l1, l2, graylevel"):
        content_loss("l3")


def test_one_wgangp_step_on_2d_patches_with_the_graylevel_term_updates_the_generator():
    torch.manual_seed(0)
    gen, critic = N2NUNet2D(ch=4), Critic2D(base=4)
    before_g, before_d = _state(gen), _state(critic)
    step = SupervisedStep(gen, mode="wgangp", loss="graylevel", l1_weight=0.1, discriminator=critic, n_critic=2,
                          ndim=2, generator_rng=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)

    def batch():
        clean = torch.randn(2, 1, 32, 32, generator=g)
        return clean + 0.5 * torch.randn(2, 1, 32, 32, generator=g), clean

    losses = step(batch)
    assert set(losses) == {"d", "gp", "wdist", "adv", "content"}
    assert all(np.isfinite(v) for v in losses.values()) and losses["gp"] >= 0
    # the content term is a per-image sum: ~ (32 * 32) x the per-pixel squared error
    assert losses["content"] > 32 * 32 * 0.1
    for before, module in ((before_g, gen), (before_d, critic)):
        assert any(not torch.equal(v, module.state_dict()[k]) for k, v in before.items())


def test_weight_clipping_keeps_the_critic_in_the_box():
    """The original WGAN critic of the paper: clipped to [-c, c] with c = 0.001, no penalty."""
    critic = Critic2D(base=4)
    step = SupervisedStep(N2NUNet2D(ch=4), mode="wgangp", loss="graylevel", l1_weight=0.1, discriminator=critic,
                          n_critic=1, gp_weight=0.0, weight_clip=0.001, ndim=2)
    losses = step(lambda: (torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)))
    assert all(np.isfinite(v) for v in losses.values())
    assert max(p.abs().max().item() for p in critic.parameters()) == pytest.approx(0.001)  # float32 0.001
    assert all((p.abs() <= torch.tensor(0.001)).all() for p in critic.parameters())
    with pytest.raises(ValueError, match="weight_clip must be a positive number"):
        SupervisedStep(N2NUNet2D(ch=4), mode="wgangp", discriminator=critic, weight_clip=0, ndim=2)


# --------------------------------------------------------------------------------------------
# Fine-tuning a 2D network adversarially


def test_fine_tune_2d_wgan_saves_a_card_and_denoises(pair, tmp_path, monkeypatch):
    clean, noisy = pair
    res = fine_tune(noisy, clean, cfg(), **SCRATCH_2D)
    assert res.ndim == 2 and res.steps_done == 3
    losses = res.history[-1].losses
    assert set(losses) == {"d", "gp", "wdist", "adv", "content"} and all(np.isfinite(v) for v in losses.values())
    assert all(np.isfinite(e.val_loss) for e in res.history)
    monkeypatch.setenv("CRYODEN_USER_MODELS", str(tmp_path))
    path = save_finetuned(res, "mic-wgan")
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["ndim"] == 2 and card["architecture"] == "N2NUNet2D"
    assert (card["training"]["adversarial"], card["training"]["loss"]) == ("wgangp", "graylevel")
    assert "WGAN-GP" in card["description"]
    out = denoise(noisy, load_model(path), device="cpu", precision="fp32")
    assert out.shape == noisy.shape and np.isfinite(out).all() and not np.array_equal(out, noisy)


def test_fine_tune_2d_wgan_in_bf16(pair):
    """bf16 autocast of the generator (the critic stays fp32, see SupervisedStep)."""
    clean, noisy = pair
    res = fine_tune(noisy, clean, cfg(steps=2, precision="bf16"), **SCRATCH_2D)
    assert res.steps_done == 2 and all(np.isfinite(v) for e in res.history for v in e.losses.values())


def test_gan_on_2d_data_is_still_refused(pair):
    clean, noisy = pair
    with pytest.raises(ValueError, match="GAN training needs a 3D network"):
        fine_tune(noisy, clean, cfg(adversarial="gan"), **SCRATCH_2D)


class Crash(Exception):
    pass


def test_2d_wgan_resumes_where_it_stopped(pair, tmp_path):
    clean, noisy = pair
    config = cfg(steps=4, val_every=2, log_every=1)
    whole = fine_tune(noisy, clean, config, **SCRATCH_2D)

    def crash_at_3(event):
        if event.step == 3:
            raise Crash  # the last checkpoint is the one of step 2

    with pytest.raises(Crash):
        fine_tune(noisy, clean, config, workdir=tmp_path, progress=crash_at_3, **SCRATCH_2D)
    saved = json.loads((tmp_path / f"{CHECKPOINT_NAME}.json").read_text())
    assert saved["step"] == 2
    res = fine_tune(noisy, clean, config, workdir=tmp_path, resume=True, **SCRATCH_2D)
    assert res.steps_done == 4 and [e.step for e in res.history] == [1, 2, 3, 4]
    # critic, optimizers and random generators restored: the same weights as the uninterrupted run
    for k, v in _state(whole.module).items():
        torch.testing.assert_close(_state(res.module)[k], v, rtol=1e-5, atol=1e-6)
    assert res.best_val == pytest.approx(whole.best_val, rel=1e-5)
