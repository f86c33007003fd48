import numpy as np
import pytest
import torch

from napari_cryoden.inference import denoise
from napari_cryoden.models import SimpleDiscriminator, UpsampleUnet48, load_model, save_model
from napari_cryoden.simulate import blob_particle
from napari_cryoden.training import ThesisStream, TrainConfig, train
from napari_cryoden.training.supervised import rampdown_factor


@pytest.fixture
def stream():
    rng = np.random.default_rng(0)
    parts = [blob_particle(rng, radius=4) for _ in range(3)]
    return ThesisStream(parts, rng, batch_size=2, patch=32, max_particles=4)


def test_stream_is_seeded_and_normalised(stream):
    x, y = next(iter(stream))
    assert x.shape == y.shape == (2, 1, 32, 32, 32)
    assert abs(float(x.median())) < 0.5
    rng = np.random.default_rng(0)
    parts = [blob_particle(rng, radius=4) for _ in range(3)]
    x2, _ = next(iter(ThesisStream(parts, rng, batch_size=2, patch=32, max_particles=4)))
    torch.testing.assert_close(x, x2)


@pytest.mark.parametrize("mode", ["ae", "gan"])
def test_few_steps_reduce_loss_and_save(tmp_path, stream, mode):
    net = UpsampleUnet48(ch=4, final_activation="identity")
    disc = SimpleDiscriminator(32) if mode == "gan" else None
    logged = []
    res = train(net, stream, TrainConfig(steps=6, mode=mode, log_every=3, lr=1e-3, device="cpu"),
                discriminator=disc, progress=lambda s, n, e: logged.append(e))
    assert res.steps_done == 6 and [e["step"] for e in logged] == [3, 6]
    assert all(np.isfinite(e["content"]) for e in logged)
    card = save_model(net, tmp_path, "smoke", {"architecture": "UpsampleUnet48",
                                               "arch_kwargs": {"ch": 4, "final_activation": "identity"}})
    out = denoise(np.random.default_rng(1).normal(size=(8, 24, 24)).astype(np.float32), load_model(card), device="cpu")
    assert out.shape == (8, 24, 24) and np.isfinite(out).all()


def test_cancel_keeps_weights(stream):
    net = UpsampleUnet48(ch=4, final_activation="identity")
    calls = iter(range(100))
    res = train(net, stream, TrainConfig(steps=50, mode="ae", device="cpu"), cancel=lambda: next(calls) >= 2)
    assert res.cancelled and res.steps_done == 2


def test_nan_data_stops_with_message():
    net = UpsampleUnet48(ch=4, final_activation="identity")
    bad = iter([(torch.full((1, 1, 16, 16, 16), float("nan")), torch.zeros(1, 1, 16, 16, 16))] * 3)
    with pytest.raises(ValueError, match="not finite"):
        train(net, bad, TrainConfig(steps=2, mode="ae", device="cpu"))


def test_gan_needs_discriminator(stream):
    with pytest.raises(ValueError, match="discriminator"):
        train(UpsampleUnet48(ch=4), stream, TrainConfig(steps=1, mode="gan"))


def test_rampdown_factor_is_flat_then_half_cosine():
    f = rampdown_factor(10, 0.4)
    assert [f(d) for d in range(7)] == [1.0] * 7
    assert f(8) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)
    assert rampdown_factor(10, 0.0)(10) == 1.0
    with pytest.raises(ValueError, match="fraction"):
        rampdown_factor(10, 1.5)


def test_rampdown_brings_both_learning_rates_to_zero(stream):
    net, disc = UpsampleUnet48(ch=4, final_activation="identity"), SimpleDiscriminator(32)
    seen = []
    orig = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        train(net, stream, TrainConfig(steps=4, mode="gan", lr=1e-3, rampdown=0.5, device="cpu"), discriminator=disc)
    finally:
        torch.optim.Adam.step = orig
    # per step one discriminator and one generator update; the last step runs at half the rate
    assert seen[:4] == [1e-3] * 4 and seen[-2:] == [pytest.approx(5e-4)] * 2


def test_max_grad_norm_clips_the_generator_update_and_keeps_the_norm_before(stream):
    from napari_cryoden.training.supervised import SupervisedStep

    x, y = next(iter(stream))

    def batch():  # a target far from the output gives gradients far above the limit
        return x, y * 100

    step = SupervisedStep(UpsampleUnet48(ch=4, final_activation="identity"), mode="ae", loss="l2",
                          device="cpu", precision="fp32", max_grad_norm=1e-3)
    step(batch)
    grads = [p.grad for p in step.generator.parameters() if p.grad is not None]
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert step.grad_norm > 1e-2 and float(after) == pytest.approx(1e-3, rel=1e-3)
    free = SupervisedStep(UpsampleUnet48(ch=4, final_activation="identity"), mode="ae", device="cpu", precision="fp32")
    free(batch)
    assert free.grad_norm > 1e-3  # no clipping by default, the norm is still recorded
    for bad in (0, -1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="max_grad_norm must be a positive number"):
            SupervisedStep(UpsampleUnet48(ch=4), mode="ae", max_grad_norm=bad)
