"""The core never imports Qt or napari; the CLI help never imports torch."""

import subprocess
import sys

CORE = ["device", "io", "models", "inference", "training", "simulate", "metrics", "evaluation", "recipes",
        # The widgets' settings: Qt-free, tested without it.
        "_widgets.train_settings", "_widgets.denoise_settings", "_widgets.metrics_settings"]


def test_core_imports_without_qt():
    code = (
        "import sys\n"
        + "".join(f"import napari_cryoden.{m}\n" for m in CORE)
        + "bad = [m for m in ('qtpy', 'PyQt5', 'PySide2', 'PySide6', 'napari', 'magicgui') if m in sys.modules]\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_import_is_light():
    code = "import sys, napari_cryoden; assert 'torch' not in sys.modules and 'napari' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_device_is_the_ground_floor():
    """napari_cryoden.device imports no other module of the package: every layer may use it."""
    code = (
        "import sys, napari_cryoden.device\n"
        "mods = sorted(m for m in sys.modules if m.startswith('napari_cryoden.') and m != 'napari_cryoden.device')\n"
        "assert not mods, mods\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_training_never_imports_evaluation_or_recipes():
    """The layers: recipes sit above training and evaluation; training scores nothing itself."""
    code = (
        "import sys, napari_cryoden.training, napari_cryoden.training.loop, napari_cryoden.training.data\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('napari_cryoden.evaluation', 'napari_cryoden.recipes')))\n"
        "assert not bad, bad\n"
        "import napari_cryoden.evaluation\n"
        "assert 'napari_cryoden.recipes' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
