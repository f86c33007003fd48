"""Exit 2 means nothing was written: every output and input is checked before the first write.

``cryoden sample same.mrc --clean same.mrc`` used to exit 2 after writing ``same.mrc`` (and with
``--overwrite`` report two files of which one survived). ``cryoden train --resume`` on a
checkpoint whose ``seconds`` was ``"nan"`` saved the model, then exited 2. Tampered checkpoints
(missing fields, wrong types, impossible step counts, tensors of the wrong shape, NaN best
weights) were "internal errors" (exit 1) or were trained on and saved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.cli import main

SHAPE = (40, 32, 32)


def _one_error(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryoden: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


@pytest.mark.parametrize("spelling", ["same", "dot-slash", "link"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_sample_with_one_path_twice_writes_nothing(spelling, overwrite, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clean = {"same": "same.mrc", "dot-slash": "./same.mrc", "link": "alias.mrc"}[spelling]
    if spelling == "link":
        os.symlink("same.mrc", "alias.mrc")  # dangling until same.mrc is written
        Path("same.mrc").write_bytes(b"old")
    rc = main(["sample", "same.mrc", "--clean", clean, *(["--overwrite"] if overwrite else [])])
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_error(err)
    if spelling == "link":
        assert Path("same.mrc").read_bytes() == b"old"
    else:
        assert not Path("same.mrc").exists()


def test_sample_writes_both_files(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "n.mrc"), "--clean", str(tmp_path / "c.mrc")]) == 0
    assert sorted(os.listdir(tmp_path)) == ["c.mrc", "n.mrc"]


# --------------------------------------------------------------------------------------------
# Tampered checkpoints


def _write(path: Path, data) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(data, np.float32))
        mrc.voxel_size = 10.0
    return path


@pytest.fixture
def checkpointed(tmp_path, monkeypatch):
    """A finished tiny n2n run with its checkpoint kept in ``work``; the command to resume it."""
    rng = np.random.default_rng(0)
    clean = rng.normal(size=SHAPE)
    even = _write(tmp_path / "even.mrc", clean + rng.normal(size=SHAPE))
    odd = _write(tmp_path / "odd.mrc", clean + rng.normal(size=SHAPE))
    monkeypatch.setenv("CRYODEN_USER_MODELS", str(tmp_path / "models"))
    argv = ["train", "--mode", "n2n", "--even", str(even), "--odd", str(odd), "--architecture", "UpsampleUnet48",
            "--arch-kwargs", '{"ch": 4}', "--patch", "16", "--batch", "2", "--val-every", "2", "--device", "cpu",
            "--precision", "fp32", "--workdir", str(tmp_path / "work"), "-q"]
    assert main([*argv, "--name", "first", "--steps", "2"]) == 0
    return tmp_path, argv


def _tamper(work: Path, state_edit=None, tensor_edit=None) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = work / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    state = json.loads(meta["state"])
    if state_edit:
        state_edit(state)
    if tensor_edit:
        tensor_edit(tensors)
    meta["state"] = json.dumps(state)
    save_file(tensors, str(path), metadata=meta)


def _set(key, value):
    def edit(state):
        state[key] = value
    return edit


def _drop(key):
    def edit(state):
        del state[key]
    return edit


def _first_best(tensors):
    return next(k for k in sorted(tensors) if k.startswith("best.") and tensors[k].is_floating_point()
                and tensors[k].ndim > 1)


def _nan_best(tensors):
    tensors[_first_best(tensors)][...] = float("nan")


def _wrong_shape(tensors):
    k = _first_best(tensors)
    tensors[k] = tensors[k][:1].clone()


TAMPERING = {
    "seconds-nan-string": (_set("seconds", "nan"), None, "seconds"),
    "seconds-nan": (_set("seconds", float("nan")), None, "seconds"),
    "missing-best_val": (_drop("best_val"), None, "best_val"),
    "string-best_val": (_set("best_val", "low"), None, "best_val"),
    "step-1e12": (_set("step", 10**12), None, "step"),
    "negative-step": (_set("step", -1), None, "step"),
    "history-not-a-list": (_set("history", "x"), None, "history"),
    "wrong-tensor-shape": (None, _wrong_shape, "best weights do not fit"),
    "nan-best-weights": (None, _nan_best, "NaN"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_checkpoint_is_refused_before_training(case, checkpointed, capsys):
    tmp_path, argv = checkpointed
    state_edit, tensor_edit, what = TAMPERING[case]
    _tamper(tmp_path / "work", state_edit, tensor_edit)
    capsys.readouterr()
    rc = main([*argv, "--name", "second", "--steps", "4", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_error(err, "checkpoint unreadable", what)
    assert sorted(os.listdir(tmp_path / "models")) == ["first.json", "first.safetensors"]


def test_nan_weights_are_never_saved_as_a_model(tmp_path):
    import torch

    from napari_cryoden.models import UpsampleUnet48
    from napari_cryoden.training.export import save_finetuned
    from napari_cryoden.training.finetune import FineTuneResult

    net = UpsampleUnet48(ch=4)
    with torch.no_grad():
        next(net.parameters())[...] = float("nan")
    result = FineTuneResult(module=net, ndim=3, architecture="UpsampleUnet48", arch_kwargs={"ch": 4}, parent=None,
                            steps_done=1, seconds=1.0, cancelled=False, best_val=1.0, history=[], checkpoint=None,
                            config=None, initial_val=1.0, final_val=1.0, best_step=1, data_shape=SHAPE)
    with pytest.raises(ValueError, match="NaN or Inf"):
        save_finetuned(result, "nan-model", folder=tmp_path)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Training batches that cannot fit


def test_huge_training_batch_is_refused_before_training(checkpointed, capsys):
    tmp_path, argv = checkpointed
    capsys.readouterr()
    rc = main([*argv, "--name", "huge", "--steps", "2", "--batch", "1000000000", "--overwrite"])
    assert rc == 2
    _one_error(capsys.readouterr().err, "batch 1000000000 x patch 16^3 needs", "lower batch or patch")
    assert not (tmp_path / "models" / "huge.json").exists()


def test_out_of_memory_during_a_step_is_exit_1_in_one_line(checkpointed, capsys, monkeypatch):
    from napari_cryoden.training import supervised

    def oom(self, batch):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes.\nError code 12")

    monkeypatch.setattr(supervised.SupervisedStep, "__call__", oom)
    tmp_path, argv = checkpointed
    capsys.readouterr()
    rc = main([*argv, "--name", "oom", "--steps", "2", "--overwrite"])
    assert rc == 1
    _one_error(capsys.readouterr().err, "out of memory at training step 1 (batch 2, patch 16)")
    assert not (tmp_path / "models" / "oom.json").exists()


# --------------------------------------------------------------------------------------------
# Training inputs and work folder


def _train_argv(tmp_path: Path, even: Path, odd: Path) -> list[str]:
    return ["train", "--mode", "n2n", "--even", str(even), "--odd", str(odd), "--name", "m",
            "--architecture", "UpsampleUnet48", "--arch-kwargs", '{"ch": 4}', "--patch", "16", "--batch", "2",
            "--steps", "2", "--val-every", "2", "--device", "cpu", "--precision", "fp32",
            "--workdir", str(tmp_path / "work"), "-q"]


@pytest.mark.parametrize("how", ["same-file", "same-data"])
def test_training_on_one_volume_twice_is_refused(how, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CRYODEN_USER_MODELS", str(tmp_path / "models"))
    data = np.random.default_rng(0).normal(size=SHAPE)
    even = _write(tmp_path / "even.mrc", data)
    odd = even if how == "same-file" else _write(tmp_path / "copy.mrc", data)
    assert main(_train_argv(tmp_path, even, odd)) == 2
    _one_error(capsys.readouterr().err, "same file" if how == "same-file" else "hold the same data",
               "Noise2Noise needs two independent halves")
    assert not (tmp_path / "models").exists() and not (tmp_path / "work").exists()


def test_config_that_is_a_folder_or_nested_too_deeply_is_exit_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path)]) == 2
    _one_error(capsys.readouterr().err, "is a folder")
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert main(["train", "--config", str(deep)]) == 2
    _one_error(capsys.readouterr().err, "not valid TOML")


def test_a_users_checkpoint_json_in_the_workdir_is_not_replaced(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CRYODEN_USER_MODELS", str(tmp_path / "models"))
    rng = np.random.default_rng(0)
    even = _write(tmp_path / "even.mrc", rng.normal(size=SHAPE))
    odd = _write(tmp_path / "odd.mrc", rng.normal(size=SHAPE))
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "checkpoint.json").write_text('{"mine": true}')
    assert main(_train_argv(tmp_path, even, odd)) == 2
    _one_error(capsys.readouterr().err, "checkpoint.json", "--overwrite")
    assert (tmp_path / "work" / "checkpoint.json").read_text() == '{"mine": true}'
    assert main([*_train_argv(tmp_path, even, odd), "--overwrite"]) == 0
