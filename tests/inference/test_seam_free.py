"""The tiled output equals one pass over the whole volume (issue: seam-free tiling)."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_cryoden.inference import denoise
from napari_cryoden.models import DEFAULT_MODEL, available_models, load_model


@pytest.mark.slow
@pytest.mark.skipif(DEFAULT_MODEL not in available_models(), reason="default model not built")
def test_tiled_equals_whole_volume_pass_fp32():
    rng = np.random.default_rng(7)
    vol = gaussian_filter(rng.normal(size=(96, 160, 160)), 2) * 10 + rng.normal(size=(96, 160, 160))
    vol = vol.astype(np.float32)
    model = load_model(DEFAULT_MODEL)
    overlap = int(model.card["overlap"])
    # one tile over everything (reflect-padded by `overlap`, rounded up to the stride) ...
    whole_tile = tuple(-(-(n + 2 * overlap) // model.stride) * model.stride for n in vol.shape)
    whole = denoise(vol, model, tile=whole_tile, overlap=overlap, device="cpu", precision="fp32")
    # ... against 64^3 tiles
    tiled = denoise(vol, model, tile=64, overlap=overlap, device="cpu", precision="fp32")
    err = np.abs(tiled - whole).max()
    assert err <= 1e-3 * vol.std(), f"max |tiled - whole| = {err:.3g}, std = {vol.std():.3g}"
