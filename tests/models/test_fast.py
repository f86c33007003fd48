"""FastUNet3D (the ``fast-3d`` architecture): layout, cost and tiling."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_cryoden.inference import denoise, receptive_margin
from napari_cryoden.models import FastUNet3D, UpsampleUnet48, build
from napari_cryoden.models.fast import depth_to_space_3d, space_to_depth_3d
from napari_cryoden.models.registry import LoadedModel


def test_space_to_depth_round_trip_and_layout():
    x = torch.arange(2 * 3 * 4 * 6 * 8, dtype=torch.float32).reshape(2, 3, 4, 6, 8)
    folded = space_to_depth_3d(x)
    assert folded.shape == (2, 24, 2, 3, 4)
    assert torch.equal(depth_to_space_3d(folded), x)
    # channel k of input channel c holds the voxel at offset (k // 4, k // 2 % 2, k % 2) of each block
    assert torch.equal(folded[:, 1 * 8 + 3], x[:, 1, 0::2, 1::2, 1::2])  # c=1, k=3 -> (0, 1, 1)
    with pytest.raises(ValueError, match="multiple of 2"):
        space_to_depth_3d(torch.zeros(1, 1, 3, 4, 4))


def test_shape_and_a_tenth_of_the_default_arithmetic():
    net, ref = FastUNet3D().eval(), UpsampleUnet48().eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as fast:
        y = net(x)
    with torch.no_grad(), FlopCounterMode(display=False) as slow:
        ref(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert fast.get_total_flops() * 8 < slow.get_total_flops()


def test_registry_builds_it_with_whitelisted_kwargs():
    net = build("FastUNet3D", ch=8, refine=0)
    assert isinstance(net, FastUNet3D) and net.refine is None


def test_tiled_output_equals_one_pass_with_the_measured_margin():
    torch.manual_seed(0)
    lm = LoadedModel.from_module(FastUNet3D(ch=8).eval())
    margin = receptive_margin(lm)
    assert all(m % 4 == 0 and m <= 48 for m in margin)  # 2 * margin is a multiple of the stride
    vol = np.random.default_rng(1).normal(size=(40, 56, 48)).astype(np.float32)
    whole = denoise(vol, lm, tile=(40, 56, 48), overlap=margin, device="cpu", precision="fp32")
    tiled = denoise(vol, lm, tile=16, overlap=margin, device="cpu", precision="fp32")
    assert np.abs(tiled - whole).max() <= 1e-4 * vol.std()
