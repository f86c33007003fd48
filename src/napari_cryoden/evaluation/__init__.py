"""Evaluation of denoisers on simulated test sets with ground truth (no Qt).

:mod:`.experiments` builds the fixed test sets (the experiments of van Gijn 2019, section 4,
plus realistic tomograms and micrographs), :mod:`.baselines` the classical baselines (oracle
best-σ Gaussian, BM4D, BM3D) and :mod:`.benchmark` runs them with every shipped model and writes
the report of ``cryoden benchmark``.
"""

from .baselines import GAUSSIAN_SIGMAS, best_gaussian, block_matching
from .benchmark import DEFAULT_2D_MODEL, THESIS_BEST, report_markdown, run_benchmark, targets, write_panels
from .experiments import (
    EXPERIMENTS, HELD_OUT, Experiment, TestItem, half_sum_noise_std, micrograph_held_out_set, realistic_held_out_set,
)

__all__ = [
    "DEFAULT_2D_MODEL", "EXPERIMENTS", "GAUSSIAN_SIGMAS", "HELD_OUT", "THESIS_BEST", "Experiment", "TestItem",
    "best_gaussian", "block_matching", "half_sum_noise_std", "micrograph_held_out_set", "realistic_held_out_set",
    "report_markdown", "run_benchmark", "targets", "write_panels",
]
