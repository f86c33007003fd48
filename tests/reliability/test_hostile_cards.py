"""Hostile model cards and paths: one bad card never breaks the others, and errors stay one line.

A card of 100,000 nested arrays made every ``cryoden models`` and ``cryoden denoise --model X``
fail with "maximum recursion depth exceeded"; a FIFO or ``/dev/zero`` named ``*.json`` could
hang the listing or exhaust memory; ``"ch": 0`` printed a torch warning before the error, and
``-1``, ``true`` or 10^30 were "internal errors"; ``"shared_weights": "no"`` was read as true; a
card could borrow a shipped model's name; an ANSI escape in a description reached the terminal;
an OS error naming a path with a newline took two lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.cli import main
from napari_cryoden.models import DEFAULT_MODEL, ModelError, available_models, load_model
from napari_cryoden.models.registry import MAX_CARD_BYTES

FAST = ["--tile", "32", "--overlap", "4", "--device", "cpu", "--precision", "fp32", "-q"]


def _card(folder: Path) -> dict:
    return json.loads((folder / "tiny-test.json").read_text())


def _variant(folder: Path, stem: str, text: str | None = None, **changes) -> Path:
    """A copy of tiny-test under `stem` (same weights), its card changed by `changes` or replaced by `text`."""
    shutil.copy(folder / "tiny-test.safetensors", folder / f"{stem}.safetensors")
    card = _card(folder)
    for key, value in changes.items():
        if key == "arch_kwargs":
            card["arch_kwargs"] = {**card["arch_kwargs"], **value}
        else:
            card[key] = value
    path = folder / f"{stem}.json"
    path.write_text(text if text is not None else json.dumps(card))
    return path


def _input(tmp_path: Path) -> Path:
    path = tmp_path / "tomo.mrc"
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=(8, 24, 24)).astype(np.float32))
        mrc.voxel_size = 10.0
    return path


def _one_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryoden: error: "), err
    for needle in needles:
        assert needle in lines[0], err


def test_deeply_nested_card_is_skipped_with_a_note(tiny_model_dir, tmp_path, capsys):
    _variant(tiny_model_dir, "deep", text="[" * 100_000 + "]" * 100_000)
    assert main(["models"]) == 0
    captured = capsys.readouterr()
    assert "tiny-test" in captured.out and "deep" not in captured.out
    assert captured.err.count("\n") == 1 and "cryoden: note: skipped a malformed model card: " in captured.err
    assert "deep.json: model card is nested too deeply" in captured.err
    src = _input(tmp_path)
    assert main(["denoise", str(src), str(tmp_path / "out.mrc"), "--model", "tiny-test", *FAST]) == 0
    assert main(["denoise", str(src), str(tmp_path / "out2.mrc"), "--model", "anything", *FAST]) == 2
    _one_error(capsys.readouterr().err, "no model named 'anything'")


def test_oversized_card_is_refused_unread(tiny_model_dir):
    path = _variant(tiny_model_dir, "huge", description="x" * (MAX_CARD_BYTES + 10))
    skipped: list[str] = []
    assert "huge" not in available_models(skipped)
    assert skipped == [f"{path}: model card is {path.stat().st_size} bytes, more than the {MAX_CARD_BYTES} accepted"]
    with pytest.raises(ModelError, match="more than"):
        load_model("huge")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_fifo_and_device_cards_neither_hang_nor_exhaust_memory(tiny_model_dir):
    shutil.copy(tiny_model_dir / "tiny-test.safetensors", tiny_model_dir / "fifo.safetensors")
    os.mkfifo(tiny_model_dir / "fifo.json")  # no writer: a blocking open would wait for ever
    shutil.copy(tiny_model_dir / "tiny-test.safetensors", tiny_model_dir / "zero.safetensors")
    os.symlink("/dev/zero", tiny_model_dir / "zero.json")
    code = "import sys; from napari_cryoden.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "models"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "tiny-test" in proc.stdout
    notes = proc.stderr.strip().splitlines()
    assert len(notes) == 2 and all("model card is not a regular file" in n for n in notes), proc.stderr


BAD_KWARGS = {
    "ch-0": ({"ch": 0}, "ch of UpsampleUnet48 must be an integer from 1 to 256, got 0"),
    "ch-negative": ({"ch": -1}, "got -1"),
    "ch-true": ({"ch": True}, "got True"),
    "ch-1e30": ({"ch": 1e30}, "got 1e+30"),
    "ch-10^30": ({"ch": 10**30}, f"got {10**30}"),
    "shared_weights-no": ({"shared_weights": "no"}, "shared_weights of UpsampleUnet48 must be true or false"),
    "final_activation-unknown": ({"final_activation": "exp"}, "final_activation of UpsampleUnet48 must be one of"),
}


@pytest.mark.parametrize("case", list(BAD_KWARGS))
def test_bad_arch_kwargs_are_exit_2_naming_the_card(case, tiny_model_dir, tmp_path, capsys):
    kwargs, message = BAD_KWARGS[case]
    card = _variant(tiny_model_dir, "bad", arch_kwargs=kwargs)
    rc = main(["denoise", str(_input(tmp_path)), str(tmp_path / "out.mrc"), "--model", "bad", *FAST])
    assert rc == 2
    _one_error(capsys.readouterr().err, str(card), message)  # no torch warning line before it
    assert not (tmp_path / "out.mrc").exists()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "0", "-3", "true", '"10"'])
def test_card_voxel_size_must_be_a_positive_number(value, tiny_model_dir, tmp_path, capsys):
    text = json.dumps(_card(tiny_model_dir)).replace('"voxel_size_A": 10.0', f'"voxel_size_A": {value}')
    _variant(tiny_model_dir, "vs", text=text)
    with pytest.raises(ModelError, match="voxel_size_A must be a positive number"):
        load_model("vs")
    rc = main(["denoise", str(_input(tmp_path)), str(tmp_path / "out.mrc"), "--model", "vs", *FAST])
    assert rc == 2
    _one_error(capsys.readouterr().err, "vs.json", "voxel_size_A")


def test_a_card_never_borrows_another_models_name(tiny_model_dir, capsys):
    _variant(tiny_model_dir, "evil", name=DEFAULT_MODEL)
    assert load_model("evil").name == "evil"
    assert available_models()["evil"]["name"] == "evil"
    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("evil "))
    assert "default" not in line


def test_control_characters_in_a_description_are_escaped(tiny_model_dir, capsys):
    _variant(tiny_model_dir, "ansi", description="\x1b[2J\x1b[31mred\x07 text")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x1b[31mred\\x07 text" in out


def test_paths_with_newlines_give_one_line_errors(tmp_path, tiny_model_dir, capsys):
    src = _input(tmp_path)
    missing = tmp_path / "no\nsuch.mrc"
    assert main(["denoise", str(missing), str(tmp_path / "out.mrc"), "--model", "tiny-test", *FAST]) == 2
    _one_error(capsys.readouterr().err, "no\\nsuch.mrc: no such file")  # the newline shown as \n
    blocker = tmp_path / "a\nfile"
    blocker.write_text("")
    # an OSError naming the path: the output folder's parent is a file
    assert main(["denoise", str(src), "-o", str(blocker / "sub"), "--model", "tiny-test", *FAST]) == 2
    _one_error(capsys.readouterr().err, "a\\nfile")
    # an OSError raised while writing, naming the path
    weird = tmp_path / "we\nird"
    weird.mkdir()
    os.chmod(weird, 0o500)
    try:
        if os.access(weird, os.W_OK):  # root writes anyway: make the failure an OSError of our own
            import napari_cryoden.io.atomic as atomic

            def fail(*args, **kwargs):
                raise PermissionError(13, "Permission denied", str(weird / "out.mrc"))

            original, atomic.tempfile.mkstemp = atomic.tempfile.mkstemp, fail
        else:
            original = None
        rc = main(["denoise", str(src), str(weird / "out.mrc"), "--model", "tiny-test", *FAST])
    finally:
        if original is not None:
            atomic.tempfile.mkstemp = original
        os.chmod(weird, 0o700)
    assert rc == 1
    _one_error(capsys.readouterr().err, "we\\nird", "Permission denied")
