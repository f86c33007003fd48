"""Image-quality metrics against a reference (no Qt).

SSIM, PSNR, MSE and NRMSE (:func:`image_metrics`), the Fourier shell/ring correlation with its
0.5 and 0.143 resolutions in Å (:func:`fourier_shell_correlation`, :func:`frc_per_slice`), regions of interest
(:mod:`.roi`), and both together (:func:`compare`, :func:`compare_slices`), which the
``cryoden metrics`` command and the Metrics dock widget use.
"""

from .compare import (
    CSV_COLUMNS, FSC_CSV_COLUMNS, MetricsReport, compare, compare_slices, write_fsc_csv, write_metrics_csv,
)
from .fsc import FSC_THRESHOLDS, FSCCurve, fourier_shell_correlation, frc_per_slice, median_frc
from .image import image_metrics, summarize
from .roi import Roi, bounding_box_roi, crop, describe_roi, full_roi, parse_roi

__all__ = [
    "CSV_COLUMNS", "FSC_CSV_COLUMNS", "FSC_THRESHOLDS", "FSCCurve", "MetricsReport", "Roi",
    "bounding_box_roi", "compare", "compare_slices", "crop", "describe_roi", "fourier_shell_correlation",
    "frc_per_slice", "full_roi", "image_metrics", "median_frc", "parse_roi", "summarize", "write_fsc_csv", "write_metrics_csv",
]
