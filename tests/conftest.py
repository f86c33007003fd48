"""Shared fixtures. Core tests never import napari; Qt tests live in tests/napari/."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test with a reason when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data file {path} not available")
    return path


def write_particle_maps(folder: Path, names: Sequence[str], voxel_size: float) -> Path:
    """Write one small procedural particle map (``<name>.mrc``, radius 3 voxels) per name into a new folder."""
    import mrcfile

    from napari_cryoden.simulate import blob_particle

    rng = np.random.default_rng(3)
    folder.mkdir()
    for name in names:
        with mrcfile.new(folder / f"{name}.mrc") as mrc:
            mrc.set_data(blob_particle(rng, radius=3))
            mrc.voxel_size = voxel_size
    return folder


def corr(a, b) -> float:
    """Pearson correlation of two arrays (flattened)."""
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def psnr(image, reference) -> float:
    """Peak signal-to-noise ratio in dB, the peak being the range of `reference`."""
    rng = float(reference.max() - reference.min())
    return 10 * math.log10(rng**2 / float(np.mean((image - reference) ** 2)))


def drain(gen):
    """Run a generator to its end; its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


@pytest.fixture
def fussy_net():
    """A class wrapping a network that raises CUDA's out-of-memory error for inputs above `limit`
    voxels: ``fussy_net(net, limit)``; its ``sizes`` lists the input sizes it was given."""
    import torch

    class Fussy(torch.nn.Module):
        stride = 8

        def __init__(self, net, limit):
            super().__init__()
            self.net, self.limit, self.sizes = net, limit, []

        def forward(self, x):
            self.sizes.append(x.numel())
            if x.numel() > self.limit:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.numel() * 4} bytes")
            return self.net(x)

    return Fussy


def cli_imports(argvs: Sequence[Sequence[str]], modules: Sequence[str], expect: str) -> list[str]:
    """Which of `modules` ``cryoden ARGV`` imports, for each ARGV in turn, in a fresh interpreter.

    Each command must exit 0 and print `expect` on stdout.
    """
    code = textwrap.dedent(f"""
        import contextlib, io, sys
        from napari_cryoden.cli import main
        for argv in {[list(a) for a in argvs]!r}:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                assert main(argv) == 0, argv
            assert {expect!r} in out.getvalue(), argv
        heavy = sorted(m for m in {tuple(modules)!r} if m in sys.modules)
        print("HEAVY=" + ",".join(heavy))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("HEAVY=")]
    assert len(lines) == 1, proc.stdout
    return [m for m in lines[0][len("HEAVY="):].split(",") if m]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def aniso_volume(rng):
    """Non-constant, anisotropic (Z, Y, X) float32 volume."""
    z, y, x = np.meshgrid(np.arange(5), np.arange(37), np.arange(41), indexing="ij")
    return (np.sin(z / 2.0) + np.cos(y / 5.0) * x / 41.0 + 0.1 * rng.normal(size=z.shape)).astype(np.float32)


@pytest.fixture
def mrc_file(tmp_path, aniso_volume):
    """An MRC file with voxel size (z, y, x) = (3.0, 2.0, 2.0) Å."""
    import mrcfile

    path = tmp_path / "tomo.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(aniso_volume)
        mrc.voxel_size = (2.0, 2.0, 3.0)  # mrcfile order: x, y, z
    return path


@pytest.fixture
def identity_model():
    """A torch module that returns its input: separates stitching bugs from model quality."""
    import torch

    class Identity(torch.nn.Module):
        stride = 8

        def forward(self, x):
            return x.clone()

    return Identity()


@pytest.fixture
def tiny_model_dir(tmp_path, monkeypatch):
    """A user model folder holding 'tiny-test', an untrained 4-channel UpsampleUnet48."""
    import torch

    from napari_cryoden.models import UpsampleUnet48, save_model

    torch.manual_seed(0)
    net = UpsampleUnet48(ch=4, final_activation="identity")
    folder = tmp_path / "user_models"
    save_model(
        net, folder, "tiny-test",
        {"architecture": "UpsampleUnet48", "arch_kwargs": {"ch": 4, "final_activation": "identity"},
         "description": "untrained test network", "voxel_size_A": 10.0},
    )
    monkeypatch.setenv("CRYODEN_USER_MODELS", str(folder))
    return folder


@pytest.fixture
def tiny_2d_model(tiny_model_dir):
    """'tiny-2d': an untrained 4-channel N2NUNet2D next to 'tiny-test' (3D); its name."""
    import torch

    from napari_cryoden.models import N2NUNet2D, save_model

    torch.manual_seed(0)
    save_model(N2NUNet2D(ch=4), tiny_model_dir, "tiny-2d",
               {"architecture": "N2NUNet2D", "arch_kwargs": {"ch": 4}, "description": "untrained 2D test network",
                "voxel_size_A": 10.0})
    return "tiny-2d"


try:  # CI runs the property tests with a fixed seed, so a pass is reproducible
    import os

    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")
except ImportError:  # hypothesis is in the testing extra
    pass


@pytest.fixture
def viewer_model(qapp):
    """A napari viewer without a window.

    Real windows (``make_napari_viewer``) are kept for the few end-to-end tests: with PySide6
    6.12 on Python 3.11 every closed Qt viewer drops about 4,400 references to ``None`` it never
    took, and a session that makes a dozen of them aborts with "Fatal Python error: none_dealloc".
    """
    from napari.components import ViewerModel

    return ViewerModel()


def _notifications(severity: str):
    """Notifications of `severity` ("ERROR", "INFO", ...) dispatched by napari while the
    generator is suspended, as strings."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen: list[str] = []
    wanted = NotificationSeverity[severity]

    def record(notification):
        if notification.severity == wanted:
            seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def error_notifications():
    """Error notifications dispatched by napari during the test, as strings."""
    yield from _notifications("ERROR")


@pytest.fixture
def info_notifications():
    """Info notifications dispatched by napari during the test, as strings."""
    yield from _notifications("INFO")
