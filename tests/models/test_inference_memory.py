"""The memory savings of inference change no result: upsampling into the concatenation and the
in-place batch norm give the stock values, and the activation estimate follows the live tensors."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from napari_cryoden.inference.measure import _PeakBytes, activation_bytes_per_voxel
from napari_cryoden.models import LoadedModel, UpsampleUnet48
from napari_cryoden.models.networks import _BatchNormAfterReLU, upsample_concat


@pytest.mark.parametrize("fmt, shape_low", [(torch.contiguous_format, (2, 3, 4, 5, 6)),
                                            (torch.channels_last_3d, (2, 3, 4, 5, 6)),
                                            (torch.contiguous_format, (1, 3, 5, 6))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upsample_concat_equals_interpolate_then_cat(fmt, shape_low, dtype):
    g = torch.Generator().manual_seed(0)
    low = torch.randn(shape_low, generator=g).to(dtype)
    skip_shape = (shape_low[0], 5, *(2 * n for n in shape_low[2:]))
    skip = torch.randn(skip_shape, generator=g).to(dtype).contiguous(memory_format=fmt)
    want = torch.cat((F.interpolate(low, scale_factor=2, mode="nearest"), skip), 1)
    with torch.no_grad():
        got = upsample_concat(low, skip)
    assert torch.equal(got, want) and got.is_contiguous(memory_format=fmt)
    # with autograd it is the plain expression, gradients included
    low.requires_grad_(True)
    upsample_concat(low, skip).sum().backward()
    assert torch.equal(low.grad, torch.full_like(low, 2.0 ** (low.dim() - 2)))  # each voxel copied 2^ndim times
    with pytest.raises(ValueError, match="twice"):
        with torch.no_grad():
            upsample_concat(low.detach(), skip[..., :-1])


def test_inplace_batch_norm_matches_the_stock_module():
    torch.manual_seed(0)
    bn = _BatchNormAfterReLU(6)
    stock = torch.nn.BatchNorm3d(6)
    with torch.no_grad():
        for m in (bn, stock):
            m.running_mean.copy_(torch.linspace(-1, 1, 6))
            m.running_var.copy_(torch.linspace(0.5, 2, 6))
            m.weight.copy_(torch.linspace(0.2, 3, 6))
            m.bias.copy_(torch.linspace(-0.5, 0.5, 6))
    bn.eval(), stock.eval()
    assert bn.state_dict().keys() == stock.state_dict().keys()
    x = torch.randn(2, 6, 5, 5, 5)
    want = stock(x)
    with torch.no_grad():
        y = x.clone()
        got = bn(y)
    assert got.data_ptr() == y.data_ptr()  # in place at inference
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # under autograd (and in training) it is the stock module and leaves its input alone
    x2 = x.clone()
    torch.testing.assert_close(bn(x2), want)
    assert torch.equal(x2, x)


def test_upsampleunet48_inference_is_unchanged_by_the_savings():
    torch.manual_seed(0)
    net = UpsampleUnet48(ch=8, final_activation="identity").eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        fast = net(x)
    stock = net(x).detach()  # autograd on: interpolate + cat and the stock batch norm
    torch.testing.assert_close(fast, stock, rtol=1e-5, atol=1e-6)


def test_peak_bytes_follows_the_live_tensors():
    counter = _PeakBytes()
    with torch.inference_mode(), counter:
        a = torch.ones(1000)          # 4,000 bytes
        b = a * 2                     # 8,000 live
        del a
        c = b + 1                     # 8,000 live again (a was freed)
        c.add_(1)                     # in place: nothing new
        v = c[:10]                    # a view: nothing new
        del b, c, v
    assert counter.peak == 8000 and counter.current == 0


def test_activation_estimate_tracks_the_channel_count():
    small = LoadedModel.from_module(UpsampleUnet48(ch=4, final_activation="identity"), name="a", ndim=3)
    big = LoadedModel.from_module(UpsampleUnet48(ch=16, final_activation="identity"), name="b", ndim=3)
    s, b = activation_bytes_per_voxel(small, "fp32"), activation_bytes_per_voxel(big, "fp32")
    # full resolution dominates: the concatenation (2 ch) and a convolution's output (ch), 4 bytes each
    assert 12 * 16 * 0.9 < b < 12 * 16 * 1.6
    assert 3.0 < b / s < 4.5
    probe = LoadedModel.from_module(UpsampleUnet48(ch=4), name="c", ndim=3)
    probe.module.train()  # the probe runs in eval mode and restores the mode
    activation_bytes_per_voxel(probe, "fp32")
    assert probe.module.training
