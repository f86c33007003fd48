import numpy as np
import pytest
import torch

from napari_cryoden.inference import denoise
from napari_cryoden.models import LoadedModel, SimpleDiscriminator, UpsampleUnet48, load_model, save_model
from napari_cryoden.simulate import blob_particle
from napari_cryoden.training import ThesisStream, TrainConfig, train


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
