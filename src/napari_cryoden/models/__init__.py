"""Networks of van Gijn (2019) and the model registry (no Qt)."""

from .fast import FastUNet3D
from .networks import Critic2D, N2NUNet2D, Pix2PixDiscriminator, SimpleAutoEncoder, SimpleDiscriminator, Unet48, UpsampleUnet48
from .registry import (
    ARCHITECTURES, DEFAULT_MODEL, DEFAULT_MODEL_2D, NORMALIZATION, LoadedModel, ModelError, available_models, build,
    builtin_model_dir, default_model_for, load_model, model_card, save_model, user_model_dir,
)

__all__ = [
    "ARCHITECTURES", "Critic2D", "DEFAULT_MODEL", "DEFAULT_MODEL_2D", "NORMALIZATION", "FastUNet3D", "LoadedModel", "ModelError", "N2NUNet2D",
    "Pix2PixDiscriminator",
    "SimpleAutoEncoder", "SimpleDiscriminator", "Unet48", "UpsampleUnet48", "available_models", "build",
    "builtin_model_dir", "default_model_for", "load_model", "model_card", "save_model", "user_model_dir",
]
