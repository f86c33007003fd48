"""Training of denoising networks (no Qt)."""

from .data import ThesisStream, normalize_pair
from .finetune import (
    FineTuneConfig, FineTuneResult, TrainEvent, check_model_name, check_settings, fine_tune, save_finetuned,
)
from .supervised import SupervisedStep, TrainConfig, TrainResult, train

__all__ = [
    "FineTuneConfig", "FineTuneResult", "SupervisedStep", "ThesisStream", "TrainConfig", "TrainEvent",
    "TrainResult", "check_model_name", "check_settings", "fine_tune", "normalize_pair", "save_finetuned", "train",
]
