"""The wheel holds every module of src/ and every shipped model file of models/.

CI installs the package in editable mode, which cannot see what a wheel leaves out; this test
builds the wheel the way ``pip install .`` does (offline: no build isolation, no index) from a copy
of the files the build reads, and compares its contents with the source tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
MODELS = REPO / "models"
#: src/napari_cryoden/zoo only anchors package discovery; the wheel's zoo is models/ (pyproject.toml).
ZOO_ANCHOR = SRC / "napari_cryoden" / "zoo"
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built from a copy of pyproject.toml, README.md, src/ and models/."""
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    for name in ("src", "models"):
        shutil.copytree(REPO / name, tree / name, ignore=_JUNK)
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "-q", "-w", str(out), str(tree)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (
        f"pip wheel failed (the 'testing' extra installs its setuptools and wheel):\n{run.stderr[-3000:]}")
    wheels = sorted(out.glob("napari_cryoden-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        yield zf


def _names(zf: zipfile.ZipFile) -> set[str]:
    return {n for n in zf.namelist() if not n.endswith("/")}


def test_every_module_under_src_is_in_the_wheel(wheel):
    modules = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
               if "__pycache__" not in p.parts and ZOO_ANCHOR not in p.parents}
    assert "napari_cryoden/evaluation/benchmark.py" in modules and "napari_cryoden/cli/__init__.py" in modules
    missing = sorted(modules - _names(wheel))
    assert missing == [], f"modules missing from the wheel: {missing}"
    assert "napari_cryoden/napari.yaml" in _names(wheel)


def test_every_shipped_model_file_is_in_the_zoo(wheel):
    shipped = {p.name for p in MODELS.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert any(n.endswith(".safetensors") for n in shipped) and any(n.endswith(".json") for n in shipped)
    zoo = {n.removeprefix("napari_cryoden/zoo/") for n in _names(wheel) if n.startswith("napari_cryoden/zoo/")}
    assert shipped - zoo == set(), f"model files missing from the wheel: {sorted(shipped - zoo)}"
    assert zoo - shipped == set(), f"files in the wheel's zoo that models/ lacks: {sorted(zoo - shipped)}"


def test_the_wheel_ships_nothing_else(wheel):
    """Only napari_cryoden and its metadata: no tests, no byte code, no anchor file."""
    tops = {n.split("/", 1)[0] for n in _names(wheel)}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"napari_cryoden"}
    assert [n for n in _names(wheel) if n.endswith((".pyc", ".pyo"))] == []
    for path in SRC.rglob("*"):
        if path.is_file() and ZOO_ANCHOR in path.parents:
            assert path.relative_to(SRC).as_posix() not in _names(wheel)


def test_the_wheel_declares_the_command_and_the_napari_manifest(wheel):
    entry = next(n for n in _names(wheel) if n.endswith(".dist-info/entry_points.txt"))
    text = wheel.read(entry).decode()
    assert "cryoden = napari_cryoden.cli:main" in text
    assert "napari-cryoden = napari_cryoden:napari.yaml" in text
