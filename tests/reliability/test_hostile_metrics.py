"""``cryoden metrics`` on NaN/Inf data: refused in one line, never an invented score or resolution.

One NaN voxel (or an all-NaN image) used to exit 0 with every score NaN, an FSC of 0 in every
shell with made-up 0.5/0.143 resolutions, and the false note "the data are identical". Inf in
the reference printed 8 lines of numpy/skimage warnings, and ``--json`` died with "Out of range
float values are not JSON compliant".
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoden.cli import main
from napari_cryoden.metrics import compare
from napari_cryoden.metrics.fsc import FSCCurve

SHAPE = (16, 24, 24)


def _write(path: Path, data) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's header statistics of Inf
        mrc.set_data(np.asarray(data, np.float32))
        mrc.voxel_size = 10.0
    return path


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    clean = rng.normal(size=SHAPE).astype(np.float32)
    return tmp_path, clean, clean + 0.5 * rng.normal(size=SHAPE).astype(np.float32)


def _poison(data, case):
    data = data.copy()
    if case == "one-nan":
        data[3, 4, 5] = np.nan
    elif case == "all-nan":
        data[...] = np.nan
    elif case == "inf":
        data[0, 0, 0] = np.inf
    elif case == "minus-inf":
        data[-1, -1, -1] = -np.inf
    return data


CASES = {"one-nan": "1 NaN/Inf voxel (", "all-nan": f"{np.prod(SHAPE)} NaN/Inf voxels", "inf": "1 NaN/Inf voxel (",
         "minus-inf": "1 NaN/Inf voxel ("}


@pytest.mark.parametrize("json_out", [False, True])
@pytest.mark.parametrize("which", ["image", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_nonfinite_voxels_are_refused_in_one_line(case, which, json_out, pair, capsys):
    folder, clean, noisy = pair
    image = _write(folder / "image.mrc", _poison(noisy, case) if which == "image" else noisy)
    reference = _write(folder / "ref.mrc", _poison(clean, case) if which == "reference" else clean)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy or skimage warning on the way
        rc = main(["metrics", str(image), str(reference), *(["--json"] if json_out else [])])
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"cryoden: error: the {which} has {CASES[case]}") and "identical" not in lines[0]


def test_nonfinite_voxels_outside_the_region_compared_are_ignored(pair, capsys):
    folder, clean, noisy = pair
    image = _write(folder / "image.mrc", _poison(noisy, "one-nan"))  # NaN at z = 3
    reference = _write(folder / "ref.mrc", clean)
    assert main(["metrics", str(image), str(reference), "--json", "--roi", "8:16,:,:"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert all(np.isfinite(data[k]) for k in ("ssim", "psnr", "mse", "nrmse"))


def test_identical_data_note_only_when_identical(pair, capsys):
    folder, clean, noisy = pair
    ref = _write(folder / "ref.mrc", clean)
    assert main(["metrics", str(ref), str(ref), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["psnr"] is None and "identical" in captured.err
    assert main(["metrics", str(_write(folder / "image.mrc", noisy)), str(ref)]) == 0
    assert "identical" not in capsys.readouterr().err


def test_core_compare_refuses_nonfinite(pair):
    _, clean, noisy = pair
    with pytest.raises(ValueError, match=r"the image has 1 NaN/Inf voxel \(of 9216 compared\)"):
        compare(_poison(noisy, "one-nan"), clean)
    with pytest.raises(ValueError, match="the reference has 1 NaN/Inf voxel"):
        compare(noisy, _poison(clean, "inf"), half_maps=True)


def test_fsc_pairs_are_json_safe():
    curve = FSCCurve(frequency=np.array([0.0, 0.1, 0.2]), fsc=np.array([1.0, np.nan, 0.3]),
                     n_voxels=np.array([1, 6, 12]), voxel_size=(5.0, 5.0, 5.0))
    assert json.loads(json.dumps(curve.pairs(), allow_nan=False)) == [[10.0, None], [5.0, 0.3]]


@pytest.mark.parametrize("which", ["image", "reference"])
def test_a_constant_array_gives_no_invented_resolution(which, pair, capsys):
    """A constant array has empty Fourier shells: its FSC (0 by convention) would give made-up
    0.5/0.143 resolutions interpolated from shell 0. Refused, table or JSON, half maps or not."""
    folder, clean, noisy = pair
    zeros = np.zeros(SHAPE, np.float32)
    image = _write(folder / "image.mrc", zeros if which == "image" else noisy)
    reference = _write(folder / "ref.mrc", zeros if which == "reference" else clean)
    for extra in ([], ["--json"], ["--half-maps"]):
        assert main(["metrics", str(image), str(reference), *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"cryoden: error: the {which} is constant (0)"), captured.err
