"""A 3D denoiser designed for throughput on CPUs: most of the work at half resolution.

The thesis networks (:mod:`~napari_cryoden.models.networks`) spend most of their arithmetic at
full resolution: UpsampleUnet48's last decoder convolution alone (96 -> 48 channels, 3^3) costs
about 250 kFLOP per output voxel, two thirds of the network. :class:`FastUNet3D` instead folds
each 2^3 block of voxels into 8 channels (space-to-depth, the 3D form of the sub-pixel layout of
Shi et al. 2016), runs a small three-level U-Net at half, quarter and eighth resolution, unfolds
the result and refines it with a two-layer full-resolution convolution that sees the input.
That is about 40 kFLOP per voxel, a tenth of UpsampleUnet48, with a larger receptive field.

References
----------
.. [1] Shi, W. et al. (2016). Real-time single image and video super-resolution using an
   efficient sub-pixel convolutional neural network. CVPR, 1874-1883 (section 2.2).
.. [2] Ronneberger, O. et al. (2015). U-Net: Convolutional networks for biomedical image
   segmentation. MICCAI, LNCS 9351, 234-241.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .networks import _final_activation, _Generator

__all__ = ["FastUNet3D", "space_to_depth_3d", "depth_to_space_3d"]


def space_to_depth_3d(x: torch.Tensor, r: int = 2) -> torch.Tensor:
    """Fold each ``r^3`` block into channels: ``(N, C, Z, Y, X) -> (N, C r^3, Z/r, Y/r, X/r)``.

    Raises
    ------
    ValueError
        If a spatial size is not a multiple of `r`.
    """
    n, c, z, y, x_ = x.shape
    if z % r or y % r or x_ % r:
        raise ValueError(f"spatial size {(z, y, x_)} is not a multiple of {r}")
    x = x.reshape(n, c, z // r, r, y // r, r, x_ // r, r)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(n, c * r**3, z // r, y // r, x_ // r)


def depth_to_space_3d(x: torch.Tensor, r: int = 2) -> torch.Tensor:
    """Inverse of :func:`space_to_depth_3d`: ``(N, C r^3, Z, Y, X) -> (N, C, Z r, Y r, X r)``."""
    n, c8, z, y, x_ = x.shape
    c = c8 // r**3
    x = x.reshape(n, c, r, r, r, z, y, x_)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(n, c, z * r, y * r, x_ * r)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1, inplace=True))


class FastUNet3D(_Generator):
    """Throughput-oriented 3D U-Net working at half resolution (model ``fast-3d``).

    Input and output are ``(N, 1, Z, Y, X)`` float tensors with Z, Y, X multiples of 8
    (:attr:`stride`). No batch normalisation, so a tile's output does not depend on the batch.

    Parameters
    ----------
    ch : int, default=32
        Channels at half resolution; the quarter and eighth levels use ``3 ch / 2`` and ``2 ch``.
    refine : int, default=8
        Channels of the full-resolution refinement (0 disables it).
    final_activation : {"identity", "softplus", "sigmoid"}, default="identity"
    """

    stride = 8

    def __init__(self, ch: int = 32, *, refine: int = 8, final_activation: str = "identity"):
        super().__init__()
        c0, c1, c2 = ch, ch * 3 // 2, ch * 2
        self.ch, self.refine_ch = ch, refine
        self.e0 = nn.Sequential(_conv(8, c0), _conv(c0, c0))
        self.e1 = nn.Sequential(_conv(c0, c1, 2), _conv(c1, c1))
        self.e2 = nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2))
        self.d1 = _conv(c2 + c1, c1)
        self.d0 = _conv(c1 + c0, c0)
        self.head = nn.Conv3d(c0, 8, 1)
        self.refine = (
            nn.Sequential(_conv(2, refine), nn.Conv3d(refine, 1, 3, padding=1)) if refine else None
        )
        self.final = _final_activation(final_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.e0(space_to_depth_3d(x))
        h1 = self.e1(h0)
        h2 = self.e2(h1)
        u = self.d1(torch.cat((F.interpolate(h2, scale_factor=2, mode="nearest"), h1), 1))
        u = self.d0(torch.cat((F.interpolate(u, scale_factor=2, mode="nearest"), h0), 1))
        coarse = depth_to_space_3d(self.head(u))
        if self.refine is not None:
            coarse = coarse + self.refine(torch.cat((coarse, x), 1))
        return self.final(coarse)
