"""Training of denoising networks (no Qt)."""

from .data import ThesisStream, normalize_pair
from .supervised import TrainConfig, TrainResult, train

__all__ = ["ThesisStream", "TrainConfig", "TrainResult", "normalize_pair", "train"]
