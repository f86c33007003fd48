"""The 2D Noise2Noise U-Net (Lehtinen et al. 2018, appendix A.1, table 2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_cryoden.models import ARCHITECTURES, N2NUNet2D, load_model, save_model


def test_keeps_shape_of_multiples_of_32():
    net = N2NUNet2D(ch=4).eval()
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        assert net(x).shape == x.shape
    assert N2NUNet2D.stride == 32


def test_layers_follow_table_2():
    net = N2NUNet2D()  # ch=48 as in the paper
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    # enc_conv0..6 (7), dec_conv5a..2b (8), dec_conv1a, 1b, 1c (3): 18 3x3 convolutions.
    assert len(convs) == 18 and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    io = [(c.in_channels, c.out_channels) for c in convs]
    assert io[:7] == [(1, 48)] + [(48, 48)] * 6
    assert io[7:15] == [(96, 96), (96, 96)] + [(144, 96), (96, 96)] * 3
    assert io[15:] == [(97, 64), (64, 32), (32, 1)]
    acts = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 17 and all(a.negative_slope == 0.1 for a in acts)  # the last conv is linear
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in net.modules())


def test_output_is_linear_and_can_be_negative():
    torch.manual_seed(0)
    net = N2NUNet2D(ch=4).eval()
    assert isinstance(net.dec_conv1c, nn.Conv2d)
    with torch.no_grad():
        net.dec_conv1c.bias.zero_()
        out = net(torch.randn(1, 1, 32, 32))
    assert (out < 0).any() and (out > 0).any()  # no activation after dec_conv1c


@pytest.mark.parametrize("ch", [0, -1, 2.5, True])
def test_bad_width_is_refused(ch):
    with pytest.raises(ValueError, match="ch must be a positive integer"):
        N2NUNet2D(ch=ch)


def test_registered_as_2d_and_round_trips(tmp_path):
    spec = ARCHITECTURES["N2NUNet2D"]
    cls, kwargs, ndim = spec.cls, spec.kwargs, spec.ndim
    assert cls is N2NUNet2D and kwargs == {"ch"} and ndim == 2
    net = N2NUNet2D(ch=4)
    card = save_model(net, tmp_path, "n2n2d", {"architecture": "N2NUNet2D", "arch_kwargs": {"ch": 4}})
    lm = load_model(card)
    assert lm.ndim == 2 and lm.stride == 32
    x = torch.randn(1, 1, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), net.eval()(x))
