"""The tiled output equals one pass over the whole volume (issue: seam-free tiling)."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from napari_cryoden.inference import denoise, receptive_margin
from napari_cryoden.inference.engine import DEFAULT_OVERLAP, activation_bytes_per_voxel
from napari_cryoden.models import DEFAULT_MODEL, UpsampleUnet48, load_model
from napari_cryoden.models.registry import LoadedModel


def test_default_overlap_covers_the_stride_aligned_receptive_field():
    """Output voxel c depends on inputs c-a..c+b; with tile starts on the stride grid a voxel at
    phase r = c mod 8 of a core has r extra voxels on its left, so the margin needed is
    max_r(a(r) - r, b(r) - (7 - r)). Measured from the gradient of each output phase."""
    torch.manual_seed(0)
    net = UpsampleUnet48(ch=4, final_activation="identity").eval()
    x = torch.randn(1, 1, 80, 8, 8, requires_grad=True)
    need = 0
    for r in range(8):
        c = 40 + r
        x.grad = None
        net(x)[0, 0, c, 4, 4].backward()
        dep = torch.nonzero(x.grad[0, 0].abs().sum(dim=(1, 2)) > 0).ravel()
        left, right = c - int(dep.min()), int(dep.max()) - c
        need = max(need, left - r, right - (7 - r))
    assert need <= DEFAULT_OVERLAP, f"receptive radius {need} > default overlap {DEFAULT_OVERLAP}"


def test_measured_margin_agrees_with_the_gradient_test():
    """The engine's own measurement (used when a card has no overlap) gives the same 23 -> 24."""
    torch.manual_seed(0)
    lm = LoadedModel.from_module(UpsampleUnet48(ch=4, final_activation="identity").eval())
    assert receptive_margin(lm) == (24, 24, 24)


def test_automatic_tiles_equal_one_pass():
    """The automatic geometry (here forced by a small memory budget to cut Y and X, and to give
    the thin Z axis one tile) keeps the tiled result equal to one pass."""
    torch.manual_seed(0)
    lm = LoadedModel.from_module(UpsampleUnet48(ch=4, final_activation="identity").eval())
    rng = np.random.default_rng(5)
    vol = (gaussian_filter(rng.normal(size=(36, 80, 72)), 2) * 10 + rng.normal(size=(36, 80, 72))).astype(np.float32)
    whole = denoise(vol, lm, tile=(40, 80, 72), device="cpu", precision="fp32")
    info = {}
    budget = int(activation_bytes_per_voxel(lm, "fp32") * 88 * 88 * 88)
    auto = denoise(vol, lm, device="cpu", precision="fp32", memory_bytes=budget, info=info)
    assert info["tiles"] > 1 and info["tile"][0] >= 36 and info["overlap"] == (24, 24, 24)
    assert info["waste"] > 1
    err = np.abs(auto - whole).max()
    assert err <= 1e-4 * vol.std(), f"max |auto - whole| = {err:.3g}"


@pytest.mark.slow
def test_tiled_equals_whole_volume_pass_fp32():
    # The default model ships in models/: load_model raises (the test fails) when it is missing.
    rng = np.random.default_rng(7)
    vol = gaussian_filter(rng.normal(size=(96, 160, 160)), 2) * 10 + rng.normal(size=(96, 160, 160))
    vol = vol.astype(np.float32)
    model = load_model(DEFAULT_MODEL)
    # one tile over the whole volume (reflect-padded by the default overlap) ...
    whole = denoise(vol, model, tile=(96, 160, 160), device="cpu", precision="fp32")
    # ... against 64^3 tiles, each read with the same overlap of context
    tiled = denoise(vol, model, tile=64, device="cpu", precision="fp32")
    err = np.abs(tiled - whole).max()
    assert err <= 1e-3 * vol.std(), f"max |tiled - whole| = {err:.3g}, std = {vol.std():.3g}"
