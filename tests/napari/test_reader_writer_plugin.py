"""The npe2 contributions: manifest, MRC reader, MRC writer and sample data."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_cryoden._reader import get_reader, layer_name, read_mrc_layers
from napari_cryoden._sample_data import make_sample_tomogram
from napari_cryoden._writer import write_single_image
from napari_cryoden.io import MrcError, read_mrc, write_mrc

from conftest import shared_file

pytestmark = pytest.mark.qt

PLUGIN = "napari-cryoden"


def test_manifest_declares_every_contribution():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    assert manifest.display_name == "cryoden"
    commands = {c.id for c in manifest.contributions.commands}
    assert {
        "napari-cryoden.read_mrc", "napari-cryoden.write_mrc",
        "napari-cryoden.sample_tomogram", "napari-cryoden.denoise_widget",
    } <= commands
    [reader] = manifest.contributions.readers
    assert reader.command == "napari-cryoden.read_mrc"
    assert {"*.mrc", "*.mrcs", "*.rec", "*.map", "*.st", "*.st.gz", "*.map.bz2"} <= set(reader.filename_patterns)
    assert reader.accepts_directories is False
    [writer] = manifest.contributions.writers
    assert set(writer.filename_extensions) == {".mrc", ".rec", ".map", ".mrcs"}
    widgets = {w.command: w.display_name for w in manifest.contributions.widgets}
    assert widgets["napari-cryoden.denoise_widget"] == "Denoise"
    samples = {s.key: s.display_name for s in manifest.contributions.sample_data}
    assert samples["sample_tomogram"] == "Simulated tomogram (noisy + clean)"


def test_reader_writer_and_sample_modules_import_neither_qt_nor_torch():
    code = (
        "import sys\n"
        "import napari_cryoden._reader, napari_cryoden._writer, napari_cryoden._sample_data\n"
        "bad = [m for m in ('torch', 'qtpy', 'PySide6', 'napari', 'magicgui') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------ reader
def test_reader_declines_other_files(tmp_path, mrc_file):
    text = tmp_path / "notes.txt"
    text.write_text("a text file, not a tomogram\n" * 100)
    garbage = tmp_path / "garbage.mrc"
    garbage.write_bytes(b"not an mrc file\n" * 200)
    tiny = tmp_path / "short.mrc"
    tiny.write_bytes(b"\x00" * 100)

    assert get_reader(str(text)) is None
    assert get_reader(str(garbage)) is None
    assert get_reader(str(tiny)) is None
    assert get_reader(str(tmp_path / "missing.mrc")) is None
    assert get_reader(str(tmp_path)) is None
    assert get_reader([str(mrc_file), str(text)]) is None
    assert get_reader([]) is None


def test_reader_gives_voxel_size_as_scale(mrc_file, aniso_volume):
    reader = get_reader(str(mrc_file))
    assert reader is not None
    [(data, kwargs, layer_type)] = reader(str(mrc_file))
    assert layer_type == "image"
    assert kwargs["name"] == "tomo"
    assert kwargs["scale"] == pytest.approx((3.0, 2.0, 2.0))
    assert kwargs["metadata"]["path"] == str(mrc_file.resolve())
    np.testing.assert_array_equal(data, aniso_volume)


def test_reader_reads_a_list_and_compressed_files(tmp_path, mrc_file, aniso_volume):
    gz = write_mrc(tmp_path / "other.rec.gz", aniso_volume[:, :20, :30] * 2, (4.0, 1.5, 1.5))
    reader = get_reader([str(mrc_file), str(gz)])
    assert reader is not None
    layers = reader([str(mrc_file), str(gz)])
    assert [kw["name"] for _, kw, _ in layers] == ["tomo", "other"]
    assert layers[1][1]["scale"] == pytest.approx((4.0, 1.5, 1.5))
    np.testing.assert_allclose(layers[1][0], aniso_volume[:, :20, :30] * 2)


@pytest.mark.parametrize(
    "path, name",
    [("/data/tomo.mrc", "tomo"), ("run1.rec.gz", "run1"), ("a.b.map.bz2", "a.b"), ("TS_01.st", "TS_01")],
)
def test_layer_name_strips_mrc_and_compression_suffixes(path, name):
    assert layer_name(path) == name


def test_reader_does_not_claim_a_truncated_file_and_reading_it_names_it(tmp_path, mrc_file):
    truncated = tmp_path / "cut.mrc"
    truncated.write_bytes(mrc_file.read_bytes()[:-500])
    # The header is intact, but the data is short: discovery checks what reading would (issue 21).
    assert get_reader(str(truncated)) is None
    assert get_reader([str(mrc_file), str(truncated)]) is None
    with pytest.raises(MrcError, match="cut.mrc"):
        read_mrc_layers(str(truncated))


def test_reader_keeps_large_files_memory_mapped(monkeypatch, mrc_file, aniso_volume):
    import napari_cryoden._reader as reader_mod

    monkeypatch.setattr(reader_mod, "read_mrc", lambda p: read_mrc(p, mmap_threshold=0))
    [(data, kwargs, _)] = read_mrc_layers(str(mrc_file))
    assert isinstance(data, np.memmap)
    assert kwargs["metadata"]["memory_mapped"] is True
    np.testing.assert_array_equal(data, aniso_volume)


@pytest.fixture
def viewer_model(npe2pm):
    """A viewer without a window, with only this plugin registered.

    Lighter than ``make_napari_viewer``; and with PySide6 6.12 on Python 3.11 every closed Qt
    viewer drops about 4,400 references to ``None`` it never took, so a session that makes a
    dozen of them aborts with "Fatal Python error: none_dealloc". Real windows are kept for
    the tests that need one.
    """
    from napari.components import ViewerModel

    with npe2pm.tmp_plugin(package=PLUGIN):
        yield ViewerModel()


def test_viewer_opens_mrc_with_plugin(viewer_model, mrc_file):
    viewer = viewer_model
    [layer] = viewer.open(str(mrc_file), plugin=PLUGIN)
    assert layer.name == "tomo"
    np.testing.assert_allclose(layer.scale, (3.0, 2.0, 2.0))


def test_real_micrograph_opens_with_its_pixel_size(make_napari_viewer):
    path = shared_file("real", "epu2.9_example.mrc")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert layer.name == "epu2.9_example"
    assert layer.data.shape == (4096, 4096)
    assert layer.data.dtype == np.uint16
    np.testing.assert_allclose(layer.scale, (0.667, 0.667), atol=1e-3)


# ------------------------------------------------------------------------------------------ writer
def test_writer_round_trip_keeps_voxel_size_as_float32(tmp_path, aniso_volume):
    data = (aniso_volume * 100).astype(np.float64)
    out = tmp_path / "saved.mrc"
    paths = write_single_image(str(out), data, {"name": "tomo", "scale": (3.0, 2.0, 2.0), "metadata": {}})
    assert paths == [str(out)]
    vol = read_mrc(out)
    assert vol.data.dtype == np.float32
    assert vol.voxel_size == pytest.approx((3.0, 2.0, 2.0))
    np.testing.assert_allclose(vol.data, data.astype(np.float32))


def test_writer_overwrites_other_files(tmp_path, aniso_volume):
    out = tmp_path / "again.map"
    out.write_bytes(b"old")
    write_single_image(str(out), aniso_volume, {"scale": (1.0, 1.0, 1.0)})
    np.testing.assert_allclose(read_mrc(out).data, aniso_volume)


def test_writer_refuses_to_overwrite_the_source_file(tmp_path, mrc_file, aniso_volume):
    before = mrc_file.read_bytes()
    link = tmp_path / "link.mrc"
    link.symlink_to(mrc_file)
    for meta in (
        {"scale": (3.0, 2.0, 2.0), "metadata": {"path": str(mrc_file)}},
        {"scale": (3.0, 2.0, 2.0), "metadata": {"source_path": str(mrc_file)}},  # a denoised layer
    ):
        for target in (mrc_file, link):
            with pytest.raises(PermissionError, match="never overwrites an input file"):
                write_single_image(str(target), aniso_volume * 0, meta)
    assert mrc_file.read_bytes() == before


def test_layer_save_uses_plugin_writer(viewer_model, tmp_path, mrc_file, aniso_volume):
    viewer = viewer_model
    [layer] = viewer.open(str(mrc_file), plugin=PLUGIN)
    out = tmp_path / "copy.rec"
    layer.save(str(out), plugin=PLUGIN)
    vol = read_mrc(out)
    assert vol.voxel_size == pytest.approx((3.0, 2.0, 2.0))
    np.testing.assert_allclose(vol.data, aniso_volume)
    with pytest.raises(PermissionError, match="tomo.mrc"):
        layer.save(str(mrc_file), plugin=PLUGIN)
    np.testing.assert_array_equal(read_mrc(mrc_file).data, aniso_volume)


def test_writer_allows_saving_a_read_layer_elsewhere(tmp_path, mrc_file):
    # Only the source itself is protected: another file, even an identical copy, may be replaced.
    copy = tmp_path / "copy.mrc"
    shutil.copy(mrc_file, copy)
    vol = read_mrc(mrc_file)
    write_single_image(str(copy), vol.data, {"scale": vol.voxel_size, "metadata": vol.metadata})
    assert read_mrc(copy).voxel_size == pytest.approx((3.0, 2.0, 2.0))


# ------------------------------------------------------------------------------------- sample data
def test_sample_data_function_gives_noisy_and_clean_layers():
    layers = make_sample_tomogram(seed=3, shape=(8, 24, 20))
    assert [kw["name"] for _, kw, _ in layers] == ["noisy sample tomogram", "clean sample tomogram"]
    (noisy, kw, kind), (clean, _, _) = layers
    assert kind == "image"
    assert noisy.shape == clean.shape == (8, 24, 20)
    assert kw["scale"] == (10.0, 10.0, 10.0)
    assert not np.allclose(noisy, clean)


def test_viewer_opens_sample_data(viewer_model):
    viewer = viewer_model
    viewer.open_sample(PLUGIN, "sample_tomogram")
    assert [layer.name for layer in viewer.layers] == ["noisy sample tomogram", "clean sample tomogram"]
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.scale, (10.0, 10.0, 10.0))
        assert layer.data.shape == (48, 96, 96)
