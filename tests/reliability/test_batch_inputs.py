"""A batch run never writes over any of its inputs, whatever the names and ``--overwrite``.

``cryoden denoise 'batch/*.mrc' --output-dir batch --overwrite`` with ``a.mrc`` and an existing
``a_denoised.mrc`` in ``batch/`` used to replace ``a_denoised.mrc`` (an input) by the result of
``a.mrc``. Every input's sha256 is checked after every run.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cryoden.cli import main

#: Hypothesis examples of the property.
BATCH_EXAMPLES = 25
FAST = ["--model", "tiny-test", "--tile", "32", "--overlap", "4", "--device", "cpu", "--precision", "fp32"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write(path: Path, seed: int = 0, shape=(4, 16, 16)) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.random.default_rng(seed).normal(size=shape).astype(np.float32))
        mrc.voxel_size = 10.0
    return path


def test_batch_output_that_is_another_input_is_refused(tmp_path, tiny_model_dir, capsys):
    batch = tmp_path / "batch"
    batch.mkdir()
    a, a_den = write(batch / "a.mrc"), write(batch / "a_denoised.mrc", seed=1)
    before = {p: sha256(p) for p in (a, a_den)}
    rc = main(["denoise", str(batch / "*.mrc"), "--output-dir", str(batch), "--overwrite", *FAST, "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert {p: sha256(p) for p in before} == before
    errors = [line for line in err.splitlines() if line.startswith("cryoden: error: ")]
    assert len(errors) == 1 and "a_denoised.mrc is another input of this run" in errors[0], err
    # a_denoised.mrc itself was denoised from its own, untouched data
    assert sorted(os.listdir(batch)) == ["a.mrc", "a_denoised.mrc", "a_denoised_denoised.mrc"]
    assert "cryoden: denoised 1 of 2, 1 failed" in err

    # without --overwrite the existing output is skipped, as any existing output
    rc = main(["denoise", str(a), str(a_den), "--output-dir", str(batch), *FAST, "-q"])
    assert rc == 0
    assert {p: sha256(p) for p in before} == before


def test_batch_output_that_is_a_link_to_another_input_is_refused(tmp_path, tiny_model_dir, capsys):
    src = write(tmp_path / "t.mrc")
    other = write(tmp_path / "keep.mrc", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    os.link(other, out / "t_denoised.mrc")  # the output's name is a hard link to another input
    digest = sha256(other)
    rc = main(["denoise", str(src), str(other), "-o", str(out), "--overwrite", *FAST, "-q"])
    assert rc == 2, capsys.readouterr().err
    assert sha256(other) == digest and sha256(out / "t_denoised.mrc") == digest


NAMES = ["a", "a_denoised", "a_denoised_denoised", "b", "b_denoised"]


@settings(max_examples=BATCH_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    present=st.sets(st.sampled_from(NAMES), min_size=1),
    runs=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=3),
)
def test_inputs_unchanged_by_any_sequence_of_batch_runs(present, runs, tiny_model_dir, capsys):
    """Random batch runs with ``--output-dir`` equal to the input folder, names that collide with
    ``_denoised`` outputs, with and without ``--overwrite``: no input ever changes."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, name in enumerate(sorted(present)):
            write(folder / f"{name}.mrc", seed=i)
        for overwrite, glob_all in runs:
            inputs = [str(folder / "*.mrc")] if glob_all else [str(p) for p in sorted(folder.glob("*.mrc"))]
            digests = {p: sha256(p) for p in folder.glob("*.mrc")}
            rc = main(["denoise", *inputs, "--output-dir", str(folder), *FAST, "-q",
                       *(["--overwrite"] if overwrite else [])])
            err = capsys.readouterr().err
            assert rc in (0, 2), err
            assert "Traceback" not in err
            assert {p: sha256(p) for p in digests} == digests, err
            assert not [n for n in os.listdir(folder) if ".part" in n]
