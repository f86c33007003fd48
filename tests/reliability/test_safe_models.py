"""Safe models: a model file can never make the program run code.

The sha256, architecture, tensor-shape and malformed-card refusals are tested in
``tests/models/test_networks.py``; here a pickle payload that would run code is offered in every
place a model file can go, with a correct sha256 in its card, and must be refused without running.
No napari import here.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import pytest

from napari_cryoden.cli import main
from napari_cryoden.models import ModelError, load_model

SRC = Path(__file__).resolve().parents[2] / "src" / "napari_cryoden"


class _Payload:
    """Unpickling this creates a marker file: the proof that code from a model file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_model(folder: Path, name: str, marker: Path) -> Path:
    """A valid model whose weights are then replaced by a pickle, with the card's sha256 updated."""
    from napari_cryoden.models import UpsampleUnet48, save_model

    card = save_model(UpsampleUnet48(ch=4), folder, name,
                      {"architecture": "UpsampleUnet48", "arch_kwargs": {"ch": 4}, "voxel_size_A": 10.0})
    weights = card.with_suffix(".safetensors")
    weights.write_bytes(pickle.dumps(_Payload(marker)))
    meta = json.loads(card.read_text())
    card.write_text(json.dumps({**meta, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}))
    return card


def test_pickle_weights_with_matching_sha256_are_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    card = _pickle_model(tmp_path, "evil", marker)
    for handle in (card, card.with_suffix(".safetensors")):
        with pytest.raises(ModelError, match="not a readable safetensors file"):
            load_model(handle)
    assert not marker.exists()


def test_pickle_checkpoint_names_are_not_models(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "code-ran"
    for suffix in (".pt", ".pth", ".ckpt", ".pkl"):
        ckpt = tmp_path / f"evil{suffix}"
        ckpt.write_bytes(pickle.dumps(_Payload(marker)))
        with pytest.raises(ModelError, match="no model named"):
            load_model(ckpt)
    monkeypatch.setenv("CRYODEN_USER_MODELS", str(tmp_path))
    (tmp_path / "in.mrc").write_bytes(b"")  # the model is looked up only after the input is read
    assert main(["denoise", str(tmp_path / "in.mrc"), str(tmp_path / "out.mrc"), "--model", str(ckpt)]) == 2
    assert not marker.exists()
    assert capsys.readouterr().err.count("\n") == 1


def test_no_pickle_loading_anywhere_in_the_package():
    """A static check: no torch.load, pickle or dynamic import in the package source."""
    pattern = re.compile(r"torch\.load\(|\bimport pickle\b|pickle\.loads?\(|importlib|__import__\(|(?<![.\w])eval\(|(?<![.\w])exec\(")
    offenders = [
        f"{path.relative_to(SRC)}:{i}: {line.strip()}"
        for path in SRC.rglob("*.py")
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == []
