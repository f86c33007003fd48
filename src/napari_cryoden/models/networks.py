"""3D denoising networks and discriminators of van Gijn (2019), and a 2D Noise2Noise U-Net.

All 3D networks take and return tensors of shape ``(N, C, Z, Y, X)``; the 2D network
(:class:`N2NUNet2D`, for micrographs) takes ``(N, C, Y, X)``. Generators map a one-channel
noisy volume to a one-channel denoised volume of the same shape; the spatial size must be a
multiple of the network's :attr:`stride`.

The published listing (thesis appendix B) applies *one* module at every level of the encoder and
decoder, so the weights are shared across levels. That is kept as the faithful variant
(``shared_weights=True``, the default). ``shared_weights=False`` gives every level its own
weights, as the figures in section 3 draw the networks.

Fixes to the listing
--------------------
* The SimpleAutoEncoder body was mis-indented and its shape comments were wrong
  (``16^3 x 32`` is ``16^3 x 16``); the layer sizes are as in the code.
* The Pix2PixDiscriminator ended in a ``Sigmoid`` marked "manual edit". A WGAN-GP critic must be
  unbounded (Gulrajani et al. 2017), and a GAN discriminator is trained more stably on logits, so
  the sigmoid is gone and both discriminators return logits / critic scores.
* SimpleDiscriminator took a packed two-channel tensor while Pix2PixDiscriminator took two
  tensors; both now take ``(noisy, candidate)``. SimpleDiscriminator's flat size was fixed to
  64^3 inputs; it now follows the patch size.
* Pix2PixDiscriminator can drop batch normalisation (``norm=None``), as a WGAN-GP critic should:
  the gradient penalty is defined per sample (Gulrajani et al. 2017, section 4).

References
----------
.. [1] van Gijn, D. (2019). Denoising Cryo-Electron Tomograms Using Deep Learning. Master's
   thesis, Utrecht University, sections 3.2-3.8 and appendix B.
.. [2] Isola, P. et al. (2017). Image-to-image translation with conditional adversarial
   networks. CVPR, 1125-1134. doi:10.1109/CVPR.2017.632
.. [3] Gulrajani, I. et al. (2017). Improved Training of Wasserstein GANs. NeurIPS 30.
.. [4] Lehtinen, J. et al. (2018). Noise2Noise: Learning image restoration without clean data.
   ICML, PMLR 80, 2965-2974, appendix A.1 (network architecture, table 2).
.. [5] Ouyang, J., He, Y., Tang, H. & Fu, Z. (2020). Research on denoising of cryo-em images
   based on deep learning (received 15 May 2020), section 3.1 (the 2D WGAN critic,
   :class:`Critic2D`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "SimpleAutoEncoder",
    "Unet48",
    "UpsampleUnet48",
    "SimpleDiscriminator",
    "Pix2PixDiscriminator",
    "N2NUNet2D",
    "Critic2D",
    "FINAL_ACTIVATIONS",
]


def _final_activation(name: str) -> nn.Module:
    try:
        return FINAL_ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"final_activation must be one of {sorted(FINAL_ACTIVATIONS)}, got {name!r}"
        ) from None


FINAL_ACTIVATIONS = {"softplus": nn.Softplus, "sigmoid": nn.Sigmoid, "identity": nn.Identity}


class _BatchNormAfterReLU(nn.BatchNorm3d):
    """BatchNorm3d that, at inference, normalises in place.

    Only for a batch norm whose input is a fresh tensor nobody else holds (the output of an
    in-place ReLU after a convolution, as in :func:`_conv_block`): at inference (eval mode, no
    autograd) it overwrites that tensor with ``x * scale + shift``, so the peak memory holds one
    feature map where the stock module holds two. Under bf16 autocast, scale and shift are
    rounded to bf16 (the result differs from the stock module's by about one bf16 step).
    Training, and eval under autograd, are the stock module. Same parameters and state dict.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled() or not self.track_running_stats or self.running_var is None:
            return super().forward(x)
        scale = torch.rsqrt(self.running_var.float() + self.eps)
        if self.affine:
            scale = scale * self.weight.float()
        shift = -self.running_mean.float() * scale
        if self.affine:
            shift = shift + self.bias.float()
        view = (1, -1) + (1,) * (x.dim() - 2)
        # in x's dtype: a float32 scale would make the kernel write a float32 temporary first
        return torch.addcmul(shift.to(x.dtype).view(view), x, scale.to(x.dtype).view(view), out=x)


def _conv_block(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    """Conv3d -> ReLU -> BatchNorm3d, the block of every thesis generator (appendix B)."""
    return nn.Sequential(
        nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2),
        nn.ReLU(inplace=True),
        _BatchNormAfterReLU(cout),
    )


def _up_block(cin: int, cout: int) -> nn.Sequential:
    """ConvTranspose3d (k=5, stride 2) -> ReLU -> BatchNorm3d: doubles the spatial size."""
    return nn.Sequential(
        nn.ConvTranspose3d(cin, cout, 5, stride=2, padding=2, output_padding=1),
        nn.ReLU(inplace=True),
        _BatchNormAfterReLU(cout),
    )


def upsample_concat(low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``cat((nearest_upsample_x2(low), skip), dim=1)`` with less memory at inference.

    Under autograd this is exactly that expression. Without it (inference) the result is
    allocated once and filled in place: the upsampled map is never a tensor of its own, so at
    full resolution the peak holds the concatenation and the skip only, not the upsampled copy
    as well. The values are the same, bit for bit.

    Parameters
    ----------
    low : Tensor, shape (N, C1, D, H, W) or (N, C1, H, W)
    skip : Tensor, shape (N, C2, 2D, 2H, 2W) or (N, C2, 2H, 2W)

    Returns
    -------
    Tensor, shape (N, C1 + C2, 2D, 2H, 2W) (or 2D), in the memory format of `skip`.
    """
    if torch.is_grad_enabled() and (low.requires_grad or skip.requires_grad):
        return torch.cat((F.interpolate(low, scale_factor=2, mode="nearest"), skip), 1)
    if tuple(skip.shape[2:]) != tuple(2 * n for n in low.shape[2:]):
        raise ValueError(f"skip shape {tuple(skip.shape)} is not twice low shape {tuple(low.shape)}")
    fmt = torch.contiguous_format
    if skip.dim() == 5 and skip.is_contiguous(memory_format=torch.channels_last_3d) and not skip.is_contiguous():
        fmt = torch.channels_last_3d
    elif skip.dim() == 4 and skip.is_contiguous(memory_format=torch.channels_last) and not skip.is_contiguous():
        fmt = torch.channels_last
    c = low.shape[1]
    out = torch.empty((skip.shape[0], c + skip.shape[1], *skip.shape[2:]), dtype=torch.promote_types(low.dtype, skip.dtype),
                      device=skip.device, memory_format=fmt)
    out[:, c:] = skip
    nd = low.dim() - 2
    for k in range(2**nd):
        phase = tuple(slice((k >> (nd - 1 - a)) & 1, None, 2) for a in range(nd))
        out[(slice(None), slice(0, c), *phase)] = low
    return out


def _levels(make, n: int, shared: bool) -> nn.ModuleList:
    """One module reused at all ``n`` levels (shared) or ``n`` independent modules."""
    return nn.ModuleList([make() for _ in range(1 if shared else n)])


class _Generator(nn.Module):
    """Common interface: ``stride`` is the factor the spatial size must be divisible by."""

    stride: int = 1

    @staticmethod
    def _pick(mods: nn.ModuleList, i: int) -> nn.Module:
        return mods[min(i, len(mods) - 1)]


class SimpleAutoEncoder(_Generator):
    """Eight-layer strided convolutional auto-encoder (thesis section 3.2).

    Four stride-2 5^3 convolutions take ``64^3 x 1`` to ``4^3 x 256`` (channels 4, 16, 64, 256),
    and four transposed convolutions mirror them.

    Parameters
    ----------
    final_activation : {"sigmoid", "softplus", "identity"}, default="sigmoid"
        The listing ends in a sigmoid, which needs targets in [0, 1].
    """

    stride = 16

    def __init__(self, final_activation: str = "sigmoid"):
        super().__init__()
        a, b, c, d = 4, 16, 64, 256
        self.network = nn.Sequential(
            nn.BatchNorm3d(1),
            _conv_block(1, a, 5, 2),
            _conv_block(a, b, 5, 2),
            _conv_block(b, c, 5, 2),
            _conv_block(c, d, 5, 2),
            _up_block(d, c),
            _up_block(c, b),
            _up_block(b, a),
            nn.ConvTranspose3d(a, 1, 5, stride=2, padding=2, output_padding=1),
            _final_activation(final_activation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class Unet48(_Generator):
    """U-Net with 48 channels, strided encoder and transposed-convolution decoder (section 3.5).

    Encoder: ``64^3 -> 32^3 -> 16^3 -> 8^3`` (5^3 kernels, stride 2), a bottleneck down to 4^3
    and back, then three decoder steps that concatenate the skip connection, convolve (3^3) and
    upsample by a transposed convolution, and a last 3^3 block that also sees the input.

    Parameters
    ----------
    ch : int, default=48
        Channels of every intermediate feature map.
    shared_weights : bool, default=True
        Reuse one encoder module (levels 2 and 3) and one decoder module (all three levels), as in
        the published listing. ``False`` gives each level its own weights.
    final_activation : {"softplus", "sigmoid", "identity"}, default="softplus"
    """

    stride = 16

    def __init__(self, ch: int = 48, *, shared_weights: bool = True, final_activation: str = "softplus"):
        super().__init__()
        self.ch, self.shared_weights = ch, shared_weights
        self.e0 = _conv_block(1, ch, 5, 2)
        self.e1 = _levels(lambda: _conv_block(ch, ch, 5, 2), 2, shared_weights)
        self.bot = nn.Sequential(_conv_block(ch, ch, 5, 2), _up_block(ch, ch))
        self.d0 = _levels(lambda: nn.Sequential(_conv_block(2 * ch, ch, 3), _up_block(ch, ch)), 3, shared_weights)
        self.d3 = nn.Sequential(
            _conv_block(ch + 1, ch, 3),
            nn.Conv3d(ch, 1, 3, padding=1),
            _final_activation(final_activation),
        )

    def forward(self, x64: torch.Tensor) -> torch.Tensor:
        x32 = self.e0(x64)
        x16 = self._pick(self.e1, 0)(x32)
        x8 = self._pick(self.e1, 1)(x16)
        out = self.bot(x8)
        for i, skip in enumerate((x8, x16, x32)):
            out = self._pick(self.d0, i)(torch.cat((out, skip), 1))
        return self.d3(torch.cat((out, x64), 1))


class UpsampleUnet48(_Generator):
    """U-Net with 48 channels and nearest-neighbour upsampling in the decoder (sections 3.6-3.7).

    A 3^3 input block, three stride-2 5^3 "narrow" blocks (``64^3 -> 8^3``), and three decoder
    steps that upsample by nearest neighbour (Odena et al. 2016, against checkerboard artefacts),
    concatenate the skip connection and convolve (3^3). A 3^3 convolution gives one channel.

    Parameters
    ----------
    ch : int, default=48
    shared_weights : bool, default=True
        Reuse one "narrow" module at all three encoder levels and one "convolve" module at all
        three decoder levels, as in the published listing. ``False`` gives each level its own.
    final_activation : {"softplus", "sigmoid", "identity"}, default="softplus"
        The listing ends in a softplus (non-negative densities). Models that work on normalised,
        zero-centred tomograms use ``"identity"``.
    """

    stride = 8

    def __init__(self, ch: int = 48, *, shared_weights: bool = True, final_activation: str = "softplus"):
        super().__init__()
        self.ch, self.shared_weights = ch, shared_weights
        self.input = _conv_block(1, ch, 3)
        self.narrow = _levels(lambda: _conv_block(ch, ch, 5, 2), 3, shared_weights)
        self.convolve = _levels(lambda: _conv_block(2 * ch, ch, 3), 3, shared_weights)
        self.output = nn.Sequential(nn.Conv3d(ch, 1, 3, padding=1), _final_activation(final_activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.input(x)]
        skips.append(self._pick(self.narrow, 0)(skips[-1]))
        skips.append(self._pick(self.narrow, 1)(skips[-1]))
        out = self._pick(self.narrow, 2)(skips[-1])
        for i in range(3):
            # nothing keeps the upsampled map or the skip alive once concatenated: at full
            # resolution the peak of inference holds 3 maps of 48 channels instead of 5
            out = self._pick(self.convolve, i)(upsample_concat(out, skips.pop()))
        return self.output(out)


class SimpleDiscriminator(nn.Module):
    """Strided convolutional discriminator with a fully connected head (thesis section 3.7).

    Four stride-2 5^3 convolutions (48, 48, 48, 64 channels, LeakyReLU 0.2, batch norm) and four
    linear layers, each 8 times narrower than the last (at least 8 wide). It is conditional: it sees the noisy
    volume and a candidate (real or generated) as two channels.

    Parameters
    ----------
    patch : int, default=64
        Edge of the cubic input; a multiple of 16 and at least 32.

    Returns a logit of shape ``(N, 1)``.
    """

    def __init__(self, patch: int = 64):
        super().__init__()
        if patch % 16 or patch < 32:
            raise ValueError(f"patch must be a multiple of 16 and >= 32, got {patch}")
        a, b, c, d = 48, 48, 48, 64
        e = d * (patch // 16) ** 3
        f, g, h = max(e // 8, 8), max(e // 64, 8), max(e // 512, 8)  # >= 8 wide for small patches

        def conv(cin, cout):
            return [nn.Conv3d(cin, cout, 5, stride=2, padding=2), nn.LeakyReLU(0.2, True), nn.BatchNorm3d(cout)]

        def lin(cin, cout):
            return [nn.Linear(cin, cout), nn.LeakyReLU(0.2, True), nn.BatchNorm1d(cout)]

        self.network = nn.Sequential(
            *conv(2, a), *conv(a, b), *conv(b, c), *conv(c, d),
            nn.Flatten(1),
            *lin(e, f), *lin(f, g), *lin(g, h),
            nn.Linear(h, 1),
        )

    def forward(self, noisy: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return self.network(torch.cat((noisy, candidate), 1))


class Pix2PixDiscriminator(nn.Module):
    """3D PatchGAN discriminator / critic adapted from pix2pix (Isola et al. 2017; thesis 3.8).

    Four stride-2 4^3 convolutions (64, 128, 256, 512 channels, LeakyReLU 0.2) and a final 4^3
    convolution to one channel: one score per patch of the input.

    Parameters
    ----------
    norm : {"batch", None}, default="batch"
        Normalisation after blocks 2-4 (the listing uses batch norm). Use ``None`` for a WGAN-GP
        critic.
    base : int, default=64
        Channels of the first block; later blocks double it.

    Returns scores of shape ``(N, 1, z, y, x)``: logits for a GAN, critic values for WGAN-GP.
    """

    def __init__(self, norm: str | None = "batch", base: int = 64):
        super().__init__()
        if norm not in ("batch", None):
            raise ValueError(f"norm must be 'batch' or None, got {norm!r}")

        def block(cin, cout, use_norm):
            layers = [nn.Conv3d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
            if use_norm and norm == "batch":
                layers.append(nn.BatchNorm3d(cout))
            return layers

        c = base
        self.model = nn.Sequential(
            *block(2, c, False),
            *block(c, 2 * c, True),
            *block(2 * c, 4 * c, True),
            *block(4 * c, 8 * c, True),
            nn.ZeroPad3d((1, 0, 1, 0, 1, 0)),
            nn.Conv3d(8 * c, 1, 4, padding=1, bias=False),
        )

    def forward(self, noisy: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat((noisy, candidate), 1))


class N2NUNet2D(nn.Module):
    """The 2D U-Net of Noise2Noise (Lehtinen et al. 2018, appendix A.1, table 2), for micrographs.

    Encoder: ``enc_conv0`` and ``enc_conv1`` at full resolution, then five times a 2x2 max-pool
    followed by one convolution (``enc_conv2``-``enc_conv6``), all with `ch` channels. Decoder:
    four times nearest-neighbour upsampling by 2, concatenation with the encoder output of that
    scale, and two convolutions with ``2 * ch`` channels (``dec_conv5a``-``dec_conv2b``); then
    upsampling, concatenation with the input and three convolutions with 64, 32 and 1 channels
    (``dec_conv1a``-``dec_conv1c``; scaled as ``ch * 4/3`` and ``ch * 2/3``). Every convolution is
    3x3 with padding 1 and followed by a leaky ReLU with slope 0.1, except the last, which is
    linear. No normalisation layers.

    Parameters
    ----------
    ch : int, default=48
        Channels of the encoder (48 in the paper); the decoder uses ``2 * ch``.

    Notes
    -----
    Input and output: ``(N, 1, Y, X)`` float tensors, Y and X multiples of :attr:`stride` (32,
    five poolings). The network output is linear, so it suits zero-centred, normalised
    micrographs.
    """

    stride = 32

    def __init__(self, ch: int = 48):
        super().__init__()
        if not isinstance(ch, int) or isinstance(ch, bool) or ch < 1:
            raise ValueError(f"ch must be a positive integer, got {ch!r}")
        self.ch = ch
        d = 2 * ch
        d1a, d1b = max(1, round(ch * 4 / 3)), max(1, round(ch * 2 / 3))

        def conv(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))

        self.enc_conv0 = conv(1, ch)
        self.enc_conv1 = conv(ch, ch)
        self.enc = nn.ModuleList([conv(ch, ch) for _ in range(5)])  # enc_conv2 .. enc_conv6
        # dec5 sees upsampled enc_conv6 (ch) + pool4 (ch); dec4..dec2 see 2*ch + ch.
        self.dec = nn.ModuleList(
            [nn.Sequential(conv(2 * ch if i == 0 else d + ch, d), conv(d, d)) for i in range(4)]
        )  # dec_conv5a/b .. dec_conv2a/b
        self.dec_conv1a = conv(d + 1, d1a)
        self.dec_conv1b = conv(d1a, d1b)
        self.dec_conv1c = nn.Conv2d(d1b, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]  # concat1 uses the input
        out = self.enc_conv1(self.enc_conv0(x))
        for i, layer in enumerate(self.enc):
            out = F.max_pool2d(out, 2)  # pool1 .. pool5
            if i < 4:
                skips.append(out)  # pool1 .. pool4 feed concat2 .. concat5
            out = layer(out)  # enc_conv2 .. enc_conv6
        for layer in self.dec:
            out = F.interpolate(out, scale_factor=2, mode="nearest")
            out = layer(torch.cat((out, skips.pop()), 1))
        out = F.interpolate(out, scale_factor=2, mode="nearest")
        out = torch.cat((out, skips.pop()), 1)
        return self.dec_conv1c(self.dec_conv1b(self.dec_conv1a(out)))


class Critic2D(nn.Module):
    """2D conditional Wasserstein critic for micrographs (Ouyang et al. 2020, section 3.1).

    Section 3.1 of the paper describes the discriminator as "a convolutional neural network with
    a similar structure to the generator", with 4x4 convolutions of stride 2 (against
    checkerboard artefacts), residual learning, no final sigmoid (WGAN), taking a grayscale image
    and returning "a result vector". It gives no layer counts or widths; chosen here: `depth`
    stride-2 4x4 convolutions (LeakyReLU 0.2; channels ``base``, ``2 base``, ... at most
    ``8 base``, as the pix2pix PatchGAN), each followed by a residual block of two 3x3
    convolutions (``x + conv(lrelu(conv(x)))``, then LeakyReLU), and a 3x3 convolution to one
    channel: one unbounded score per patch of the input, averaged per sample by the trainer.
    No normalisation layers: the WGAN-GP gradient penalty is per sample (Gulrajani et al. 2017,
    section 4).

    The paper's critic sees the candidate only (its eq. 6, ``D(x)`` and ``D(G(y))``); like the
    other discriminators here it is conditional by default (pix2pix, which the paper builds on):
    the noisy image and the candidate enter as two channels. ``conditional=False`` ignores the
    noisy image, as in the paper.

    Parameters
    ----------
    base : int, default=64
        Channels of the first block.
    depth : int, default=4
        Stride-2 blocks; the input's Y and X must be at least ``2**depth``.
    conditional : bool, default=True

    Notes
    -----
    Called as ``critic(noisy, candidate)`` with two ``(N, 1, Y, X)`` float tensors; returns
    scores of shape ``(N, 1, Y / 2**depth, X / 2**depth)`` (rounded down).

    Raises
    ------
    ValueError
        For a `base` or `depth` that is not a positive integer.
    """

    def __init__(self, base: int = 64, *, depth: int = 4, conditional: bool = True):
        super().__init__()
        for name, v in (("base", base), ("depth", depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.conditional = bool(conditional)
        chans = [2 if conditional else 1] + [base * 2 ** min(i, 3) for i in range(depth)]
        self.down = nn.ModuleList(
            nn.Conv2d(cin, cout, 4, stride=2, padding=1) for cin, cout in zip(chans[:-1], chans[1:])
        )
        self.res = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 3, padding=1))
            for c in chans[1:]
        )
        self.head = nn.Conv2d(chans[-1], 1, 3, padding=1)

    def forward(self, noisy: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        x = torch.cat((noisy, candidate), 1) if self.conditional else candidate
        for down, res in zip(self.down, self.res):
            x = F.leaky_relu(down(x), 0.2)
            x = F.leaky_relu(x + res(x), 0.2)
        return self.head(x)
