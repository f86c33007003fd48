"""Out of memory on a tile: halve the tile (and the batch) and go on; the result is unchanged."""

import logging

import numpy as np
import pytest
import torch

from napari_cryoden.inference import denoise
from napari_cryoden.models import UpsampleUnet48
from napari_cryoden.models.registry import LoadedModel

FP32 = {"device": "cpu", "precision": "fp32", "overlap": 24}  # covers the receptive field: tiling-invariant


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UpsampleUnet48(ch=4, final_activation="identity").eval()


@pytest.fixture
def vol(rng):
    return rng.normal(size=(16, 48, 40)).astype(np.float32)


def test_out_of_memory_halves_the_tile_and_gives_the_same_result(net, vol, fussy_net, caplog):
    expected = denoise(vol, net, tile=(16, 48, 40), **FP32)
    fussy = fussy_net(net, limit=56 * 72 * 72)  # the whole volume (64x96x88) does not fit; its halves do
    info = {}
    with caplog.at_level(logging.WARNING, logger="napari_cryoden.inference.engine"):
        out = denoise(vol, LoadedModel.from_module(fussy), tile=(16, 48, 40), info=info, **FP32)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4 * vol.std())
    assert info["oom_splits"] >= 1
    assert any("out of memory" in r.getMessage() and "smaller tiles" in r.getMessage() for r in caplog.records)
    assert max(fussy.sizes[1:]) <= fussy.limit  # after the first refusal, only tiles that fit


def test_out_of_memory_on_a_batch_goes_one_tile_at_a_time(net, vol, fussy_net, caplog):
    expected = denoise(vol, net, tile=(16, 16, 16), batch_size=1, **FP32)
    one_tile = 64**3
    fussy = fussy_net(net, limit=one_tile)
    with caplog.at_level(logging.WARNING, logger="napari_cryoden.inference.engine"):
        out = denoise(vol, LoadedModel.from_module(fussy), tile=(16, 16, 16), batch_size=4, **FP32)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4 * vol.std())
    assert any("one tile at a time" in r.getMessage() for r in caplog.records)
    assert sum(size > one_tile for size in fussy.sizes) == 1  # the batch size dropped after the first failure


def test_out_of_memory_on_the_smallest_tile_is_a_memory_error(net, vol, fussy_net):
    fussy = fussy_net(net, limit=10)
    with pytest.raises(MemoryError, match="smallest"):
        denoise(vol, LoadedModel.from_module(fussy), tile=16, **FP32)


def test_other_errors_are_not_retried(net, vol):
    class Broken(torch.nn.Module):
        stride = 8

        def forward(self, x):
            raise RuntimeError("shape mismatch somewhere")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        denoise(vol, Broken(), tile=16, **FP32)
