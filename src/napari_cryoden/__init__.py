"""napari-cryoden: neural-network denoising of cryo-ET tomograms and cryo-EM micrographs.

The core (``io``, ``models``, ``inference``, ``training``, ``simulate``, ``metrics``) never
imports Qt; the napari widgets and the ``cryoden`` CLI are thin layers over it. Heavy modules
(torch) load on first use, so plugin discovery and ``cryoden --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "denoise", "load_model", "available_models"]


def __getattr__(name):
    if name == "denoise":
        from .inference import denoise

        return denoise
    if name in ("load_model", "available_models"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'napari_cryoden' has no attribute {name!r}")
