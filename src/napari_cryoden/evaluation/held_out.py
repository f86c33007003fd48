"""Scores of a model on the fixed held-out sets, for model cards and recipes.

The sets themselves (:func:`held_out_set` here; the realistic tomograms and the micrographs in
:mod:`~napari_cryoden.evaluation.experiments`) are made only from the :data:`HELD_OUT` proteins,
which no shipped model was trained on. Scores are SSIM, PSNR, MSE and NRMSE against the clean
target (:func:`~napari_cryoden.metrics.image_metrics`, van Gijn 2019, section 4.1) as 5th, 50th
and 95th percentiles (:func:`~napari_cryoden.metrics.summarize`).
"""

from __future__ import annotations

import time

import numpy as np

from ..metrics import image_metrics, summarize
from ..models import LoadedModel
from ..simulate import thesis_pair
from .baselines import GAUSSIAN_SIGMAS
from .experiments import HELD_OUT, half_sum_noise_std

__all__ = ["evaluate_held_out", "evaluate_micrographs", "held_out_set"]


def held_out_set(maps: dict[str, np.ndarray], *, n: int = 40, seed: int = 12345, box: int = 64):
    """The fixed held-out test set: half single centred particles, half 10-40 particles.

    Made only from :data:`HELD_OUT` proteins, SNR 0.5 and a ±60° missing wedge.
    """
    parts = [maps[k] for k in HELD_OUT if k in maps]
    if not parts:
        raise ValueError(f"none of the held-out particles {HELD_OUT} is in the maps folder")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 1 if i < n // 2 else int(rng.integers(10, 41))
        out.append(thesis_pair(parts, rng, box=box, n_particles=k, snr=0.5, tilt_max_deg=60.0))
    return out


def evaluate_held_out(model: LoadedModel, pairs, *, precision: str = "fp32") -> dict:
    """Median (5th, 50th, 95th percentiles) of SSIM/PSNR/MSE/NRMSE for input and output."""
    from ..inference import denoise

    noisy_rows, out_rows = [], []
    for noisy, clean in pairs:
        den = denoise(noisy, model, device="cpu", precision=precision)
        noisy_rows.append(image_metrics(noisy, clean))
        out_rows.append(image_metrics(den, clean))
    return {"input": summarize(noisy_rows), "denoised": summarize(out_rows), "n_volumes": len(pairs)}


def evaluate_micrographs(model: LoadedModel, sims, *, precision: str = "fp32", bm3d: bool | None = None,
                         sigmas=GAUSSIAN_SIGMAS) -> dict:
    """Median (5th, 50th, 95th percentiles) SSIM/PSNR/MSE/NRMSE on micrographs, against baselines.

    Every method denoises the full frame sum (``noisy``) and is scored against ``clean`` with
    :func:`~napari_cryoden.metrics.image_metrics` (data range of the clean image):

    - ``input``: the frame sum itself;
    - ``gaussian``: a Gaussian filter with, per image, the width of `sigmas` (pixels) that gives
      the highest PSNR against the clean image, an oracle no real data allows
      (``gaussian_sigma`` lists the widths chosen);
    - ``bm3d``: BM3D (Dabov et al. 2007; the ``bm3d`` package, profile "np") with ``sigma_psd``
      the full sum's noise standard deviation estimated from the even/odd halves
      (:func:`half_sum_noise_std`), not from the clean image; None when `bm3d` is False or the
      package is missing (``bm3d_note`` says which);
    - ``denoised``: `model` through :func:`~napari_cryoden.inference.denoise`.

    ``median_psnr_gain_db`` gives the model's median PSNR minus that of each baseline.

    Parameters
    ----------
    model : LoadedModel
        A 2D model.
    sims : list of SimulatedMicrograph
        E.g. :func:`micrograph_held_out_set`.
    precision : str, default="fp32"
    bm3d : bool, optional
        Run BM3D; default: when the ``bm3d`` package is installed. True with the package missing
        raises ValueError.
    sigmas : sequence of float
    """
    from .baselines import best_gaussian, block_matching
    from ..inference import denoise

    run_bm3d = None
    if bm3d is None or bm3d:
        try:
            run_bm3d = block_matching(2)[1]
        except ValueError:
            if bm3d:
                raise
    rows: dict[str, list] = {"input": [], "gaussian": [], "bm3d": [], "denoised": []}
    chosen, noise_std, seconds = [], [], {"denoised": 0.0, "bm3d": 0.0}
    for sim in sims:
        noisy, clean = sim.noisy, sim.clean
        rows["input"].append(image_metrics(noisy, clean))
        _, sigma, best = best_gaussian(noisy, clean, sigmas)
        rows["gaussian"].append(best)
        chosen.append(sigma)
        if run_bm3d is not None:
            sd = half_sum_noise_std(sim.even, sim.odd, sim.params["n_even_frames"], sim.params["n_odd_frames"])
            noise_std.append(sd)
            t = time.perf_counter()
            out = run_bm3d(noisy, sd)
            seconds["bm3d"] += time.perf_counter() - t
            rows["bm3d"].append(image_metrics(out, clean))
        t = time.perf_counter()
        den = denoise(noisy, model, device="cpu", precision=precision)
        seconds["denoised"] += time.perf_counter() - t
        rows["denoised"].append(image_metrics(den, clean))
    scores = {k: summarize(v) if v else None for k, v in rows.items()}
    med = {k: (float(np.median([r["psnr"] for r in v])) if v else None) for k, v in rows.items()}
    return {
        **scores,
        "gaussian_sigma": chosen,
        "bm3d_sigma_psd": noise_std or None,
        "bm3d_note": ("sigma_psd = noise std of the frame sum estimated from its even/odd halves, "
                      "std(even - odd) sqrt(n_even n_odd) / n_frames; profile 'np'") if run_bm3d is not None
        else ("not run" if bm3d is False else "not run: the bm3d package is not installed"),
        "median_psnr_gain_db": {f"vs_{k}": (med["denoised"] - med[k]) if med[k] is not None else None
                                for k in ("input", "gaussian", "bm3d")},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "precision": precision,
        "n_images": len(sims),
    }
