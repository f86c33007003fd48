"""Every shipped model loads (sha256 checked) and its card states data, cost, hardware and held-out scores."""

from __future__ import annotations

import json

import pytest

from napari_cryoden.models import ARCHITECTURES, DEFAULT_MODEL, builtin_model_dir, load_model
from napari_cryoden.recipes import RECIPES

CARDS = sorted(builtin_model_dir().glob("*.json"))


def test_the_defaults_and_the_thesis_family_ship():
    names = {p.stem for p in CARDS}
    assert {DEFAULT_MODEL, "n2n-unet-2d", "upsampleunet48-ae", "unet48-ae", "upsampleunet48-wgangp"} <= names


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.stem)
def test_shipped_card_is_complete_and_its_recipe_rebuilds_it(card_path):
    card = json.loads(card_path.read_text())
    model = load_model(card_path.stem)  # raises on a sha256 mismatch
    t = card["training"]
    assert model.ndim == card.get("ndim", 3) and card["voxel_size_A"] > 0
    assert t["seconds"] > 0 and t["hardware"] and t["torch"] and isinstance(t["seed"], int)
    assert t["command"].startswith(f"python -m napari_cryoden.recipes {card_path.stem} --maps ")
    recipe = RECIPES[card_path.stem]
    assert card["architecture"] == recipe["architecture"] and card["arch_kwargs"] == recipe["arch_kwargs"]
    assert t["steps"] == recipe["steps"], "the card must come from the committed recipe"
    assert t["data"] and t["losses"] and card["licence"]
    held = card["held_out"]
    assert held["particles"] == ["1u6g", "3h84"]
    scores = held["metrics"]
    assert scores["denoised"]["psnr"]["50"] > scores["input"]["psnr"]["50"]


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_arch_spec_stride_and_default_overlap_fit_the_network(architecture):
    """ArchSpec's stride is the network's, and its default overlap covers the measured receptive
    field (the margin that makes tiles seam-free) of a network of the default size."""
    from napari_cryoden.inference.measure import receptive_margin
    from napari_cryoden.models import LoadedModel, build

    spec = ARCHITECTURES[architecture]
    net = build(architecture)
    assert spec.cls is type(net) and spec.stride == int(getattr(net, "stride", 1))
    if spec.default_overlap is not None:
        margin = receptive_margin(LoadedModel.from_module(net, name=architecture, ndim=spec.ndim))
        assert max(margin) <= spec.default_overlap
