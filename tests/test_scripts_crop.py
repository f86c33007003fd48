"""scripts/micrograph_crop.py: bin, denoise with a 2D model and draw a before/after crop."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def crop_script():
    spec = importlib.util.spec_from_file_location("micrograph_crop", REPO / "scripts" / "micrograph_crop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def micrograph(tmp_path):
    """A 2D uint16 MRC of 100 x 90 pixels at 2.5 Å."""
    import mrcfile

    rng = np.random.default_rng(5)
    y, x = np.mgrid[:100, :90]
    img = 3000 + 200 * np.sin(y / 7.0) * np.cos(x / 5.0) + rng.poisson(50, size=y.shape)
    path = tmp_path / "micrograph.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(img.astype(np.uint16))
        mrc.voxel_size = 2.5
    return path


def test_bin_image_is_the_block_mean_without_partial_blocks(crop_script):
    img = np.arange(7 * 9, dtype=np.uint16).reshape(7, 9)
    out = crop_script.bin_image(img, 3)
    assert out.shape == (2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[1, 2], img[3:6, 6:9].mean())
    np.testing.assert_array_equal(crop_script.bin_image(img, 1), img.astype(np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        crop_script.bin_image(img, 8)
    assert crop_script.auto_bin(0.667, 5.0) == 7 and crop_script.auto_bin(2.5, 10.0) == 4
    assert crop_script.auto_bin(1.0, None) == 1


def test_crop_shows_the_models_output_and_the_png_is_side_by_side(crop_script, micrograph, tmp_path, tiny_2d_model):
    from matplotlib.image import imread

    from napari_cryoden.inference import denoise

    # the tiny model is at 10 Å/pixel: auto binning is 4 (2.5 Å -> 10 Å), 25 x 22 binned pixels
    parts = crop_script.prepare(micrograph, tiny_2d_model, crop=16, device="cpu", precision="fp32")
    assert parts["factor"] == 4 and parts["pixel_size"] == pytest.approx(10.0)
    assert parts["binned_shape"] == (25, 22) and parts["raw"].shape == parts["denoised"].shape == (16, 16)
    y0, x0 = parts["box"]
    binned = crop_script.bin_image(np.asarray(__import__("mrcfile").read(micrograph)), 4)
    np.testing.assert_array_equal(parts["raw"], binned[y0:y0 + 16, x0:x0 + 16])
    full = denoise(binned, tiny_2d_model, device="cpu", precision="fp32")
    np.testing.assert_allclose(parts["denoised"], full[y0:y0 + 16, x0:x0 + 16], rtol=0, atol=1e-5)

    out = tmp_path / "crop.png"
    assert crop_script.main([str(out), "--input", str(micrograph), "--model", tiny_2d_model, "--crop", "16",
                             "--device", "cpu", "--precision", "fp32"]) == 0
    png = imread(out)
    assert png.ndim == 3 and png.shape[1] > 1.5 * png.shape[0]  # two square panels side by side
    assert not list(tmp_path.glob(".crop.png*"))  # written atomically, no leftovers


@pytest.mark.parametrize("case", ["same_as_input", "not_png", "stack", "bad_bin"])
def test_bad_arguments_exit_2_with_one_line(crop_script, micrograph, tmp_path, tiny_2d_model, capsys, case):
    import mrcfile

    args = {"same_as_input": [str(micrograph.with_suffix(".png"))], "not_png": [str(tmp_path / "x.jpg")],
            "stack": [str(tmp_path / "s.png")], "bad_bin": [str(tmp_path / "b.png"), "--bin", "two"]}[case]
    src = micrograph
    if case == "same_as_input":
        src = micrograph.with_suffix(".png")
        src.write_bytes(micrograph.read_bytes())
    if case == "stack":
        src = tmp_path / "stack.mrc"
        with mrcfile.new(src) as mrc:
            mrc.set_data(np.zeros((3, 16, 16), np.float32))
    assert crop_script.main([*args, "--input", str(src), "--model", tiny_2d_model]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("micrograph_crop: error:") and "\n" not in err
    if case == "same_as_input":
        assert src.read_bytes() == micrograph.read_bytes()  # the input is never overwritten
