"""Training of denoising networks (no Qt)."""

from .data import ThesisStream, normalize_pair
from .export import check_model_name, save_finetuned
from .finetune import (
    FineTuneConfig, FineTuneResult, PreviewWeights, TrainEvent, check_settings, fine_tune, iter_fine_tune,
)
from .loop import LoopConfig, iter_train
from .supervised import SupervisedStep, TrainConfig, TrainResult, train

__all__ = [
    "FineTuneConfig", "FineTuneResult", "LoopConfig", "PreviewWeights", "SupervisedStep", "ThesisStream", "TrainConfig",
    "TrainEvent", "TrainResult", "check_model_name", "check_settings", "fine_tune", "iter_fine_tune", "iter_train",
    "normalize_pair", "save_finetuned", "train",
]
