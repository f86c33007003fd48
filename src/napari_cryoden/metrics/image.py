"""SSIM, PSNR, MSE and NRMSE as reported by van Gijn (2019), section 4.1, via ``skimage.metrics``.

The data range is always taken from the reference (``reference.max() - reference.min()``), so the
scores of different methods on one volume are comparable. NRMSE is scikit-image's default
(Euclidean) normalisation, ``||image - reference|| / ||reference||``: the thesis text says "divided
by the range", but its tables (input NRMSE near 0.9 at PSNR near 24 dB) match the Euclidean form.
"""

from __future__ import annotations

import numpy as np

__all__ = ["image_metrics", "summarize"]


def image_metrics(image: np.ndarray, reference: np.ndarray, *, data_range: float | None = None) -> dict[str, float]:
    """SSIM, PSNR (dB), MSE and NRMSE of `image` against `reference`.

    Parameters
    ----------
    image, reference : (Z, Y, X) or (Y, X) ndarray of real dtype, same shape
    data_range : float, optional
        Defaults to the reference's range.

    Returns
    -------
    dict
        ``ssim``, ``psnr`` (``inf`` for identical volumes), ``mse``, ``nrmse``.

    Raises
    ------
    ValueError
        If the shapes differ or the reference is constant and no `data_range` is given.
    """
    from skimage.metrics import mean_squared_error, normalized_root_mse, peak_signal_noise_ratio, structural_similarity

    image = np.asarray(image, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if image.shape != reference.shape:
        raise ValueError(f"image shape {image.shape} differs from reference shape {reference.shape}")
    if data_range is None:
        data_range = float(reference.max() - reference.min())
    if not data_range > 0:
        raise ValueError("reference is constant: give data_range explicitly")
    mse = float(mean_squared_error(reference, image))
    psnr = float("inf") if mse == 0 else float(peak_signal_noise_ratio(reference, image, data_range=data_range))
    return {
        "ssim": float(structural_similarity(reference, image, data_range=data_range)),
        "psnr": psnr,
        "mse": mse,
        "nrmse": float(normalized_root_mse(reference, image)) if mse else 0.0,
    }


def summarize(rows: list[dict[str, float]], percentiles=(5, 50, 95)) -> dict[str, dict[int, float]]:
    """Percentiles of each metric over many volumes (the layout of thesis tables 2-5)."""
    keys = rows[0].keys() if rows else ()
    return {k: {p: float(np.percentile([r[k] for r in rows], p)) for p in percentiles} for k in keys}
