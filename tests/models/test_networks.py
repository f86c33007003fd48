import json

import pytest
import torch

from napari_cryoden.models import (
    ModelError, Pix2PixDiscriminator, SimpleAutoEncoder, SimpleDiscriminator, Unet48, UpsampleUnet48,
    available_models, load_model, save_model,
)


@pytest.mark.parametrize("cls", [UpsampleUnet48, Unet48, SimpleAutoEncoder])
def test_generators_keep_shape(cls):
    net = cls().eval()
    x = torch.randn(1, 1, 32, 32, 48)
    with torch.no_grad():
        assert net(x).shape == x.shape


@pytest.mark.parametrize("cls, role", [(UpsampleUnet48, "narrow"), (UpsampleUnet48, "convolve"), (Unet48, "d0")])
def test_shared_weights_are_reused_across_levels(cls, role):
    shared, separate = cls(ch=8), cls(ch=8, shared_weights=False)
    assert len(getattr(shared, role)) == 1 and len(getattr(separate, role)) == 3
    per_level = sum(p.numel() for p in getattr(shared, role).parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    n_sep = sum(p.numel() for p in separate.parameters())
    assert n_sep - n_shared >= 2 * per_level


def test_discriminators_shapes():
    x = torch.randn(2, 1, 32, 32, 32)
    assert SimpleDiscriminator(32)(x, x).shape == (2, 1)
    assert Pix2PixDiscriminator()(x, x).shape == (2, 1, 2, 2, 2)
    assert Pix2PixDiscriminator(norm=None)(x, x).shape == (2, 1, 2, 2, 2)
    with pytest.raises(ValueError, match="patch"):
        SimpleDiscriminator(40)


def test_final_activation_option():
    with torch.no_grad():
        out = UpsampleUnet48(ch=4).eval()(torch.randn(1, 1, 16, 16, 16))
    assert (out >= 0).all()  # softplus, as in the listing
    with pytest.raises(ValueError, match="final_activation"):
        UpsampleUnet48(final_activation="tanh!")


def test_save_load_round_trip(tmp_path):
    net = UpsampleUnet48(ch=4, final_activation="identity")
    card = save_model(net, tmp_path, "m", {"architecture": "UpsampleUnet48",
                                           "arch_kwargs": {"ch": 4, "final_activation": "identity"}})
    lm = load_model(card)
    assert lm.stride == 8 and lm.ndim == 3
    for a, b in zip(net.state_dict().values(), lm.module.state_dict().values()):
        torch.testing.assert_close(a, b)


def _card(tmp_path):
    net = UpsampleUnet48(ch=4, final_activation="identity")
    return save_model(net, tmp_path, "m", {"architecture": "UpsampleUnet48",
                                           "arch_kwargs": {"ch": 4, "final_activation": "identity"}})


def test_refuses_checksum_mismatch(tmp_path):
    card = _card(tmp_path)
    w = card.with_suffix(".safetensors")
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model(card)


def test_refuses_unknown_architecture_and_code_kwargs(tmp_path):
    card = _card(tmp_path)
    meta = json.loads(card.read_text())
    card.write_text(json.dumps({**meta, "architecture": "os.system"}))
    with pytest.raises(ModelError, match="unknown architecture"):
        load_model(card)
    card.write_text(json.dumps({**meta, "arch_kwargs": {"ch": {"__import__": "os"}}}))
    with pytest.raises(ModelError, match="not allowed"):
        load_model(card)
    card.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(card)


def test_refuses_tensors_that_do_not_fit(tmp_path):
    card = _card(tmp_path)
    meta = json.loads(card.read_text())
    card.write_text(json.dumps({**meta, "arch_kwargs": {"ch": 8, "final_activation": "identity"}}))
    with pytest.raises(ModelError, match="do not fit"):
        load_model(card)


def test_unknown_name_lists_available(tiny_model_dir):
    assert "tiny-test" in available_models()
    with pytest.raises(ModelError, match="tiny-test"):
        load_model("no-such-model")
