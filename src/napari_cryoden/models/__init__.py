"""Networks of van Gijn (2019) and the model registry (no Qt)."""

from .networks import Pix2PixDiscriminator, SimpleAutoEncoder, SimpleDiscriminator, Unet48, UpsampleUnet48
from .registry import (
    ARCHITECTURES, DEFAULT_MODEL, NORMALIZATION, LoadedModel, ModelError, available_models, build,
    builtin_model_dir, load_model, save_model, user_model_dir,
)

__all__ = [
    "ARCHITECTURES", "DEFAULT_MODEL", "NORMALIZATION", "LoadedModel", "ModelError", "Pix2PixDiscriminator",
    "SimpleAutoEncoder", "SimpleDiscriminator", "Unet48", "UpsampleUnet48", "available_models", "build",
    "builtin_model_dir", "load_model", "save_model", "user_model_dir",
]
