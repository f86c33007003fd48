"""Classical baselines of ``cryoden benchmark``: the oracle best-σ Gaussian filter, BM4D and BM3D.

References
----------
.. [1] Dabov, K., Foi, A., Katkovnik, V. & Egiazarian, K. (2007). Image denoising by sparse 3-D
   transform-domain collaborative filtering. IEEE Trans. Image Process. 16(8), 2080-2095 (BM3D).
.. [2] Maggioni, M., Katkovnik, V., Egiazarian, K. & Foi, A. (2013). Nonlocal transform-domain
   filter for volumetric data denoising and reconstruction. IEEE Trans. Image Process. 22(1),
   119-133 (BM4D).
.. [3] Mäkinen, Y., Azzari, L. & Foi, A. (2020). Collaborative filtering of correlated noise:
   exact transform-domain variance for improved shrinkage and patch matching. IEEE Trans.
   Image Process. 29, 8339-8354 (the ``bm3d`` and ``bm4d`` packages).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..metrics import image_metrics

__all__ = ["GAUSSIAN_SIGMAS", "best_gaussian", "block_matching"]

#: Widths (voxels or pixels) searched by :func:`best_gaussian`.
GAUSSIAN_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


def best_gaussian(noisy: np.ndarray, clean: np.ndarray, sigmas=GAUSSIAN_SIGMAS) -> tuple[np.ndarray, float, dict]:
    """The Gaussian filter of `noisy` whose width gives the highest PSNR against `clean`.

    An oracle: it needs the clean target, which real data never has, so it is an upper bound
    for any Gaussian filter a user could choose.

    Parameters
    ----------
    noisy, clean : (Z, Y, X) or (Y, X) ndarray of real dtype, same shape
    sigmas : sequence of float
        Widths to try, in voxels (pixels), isotropic; reflecting boundaries.

    Returns
    -------
    filtered : ndarray of float32
    sigma : float
        The chosen width.
    metrics : dict
        :func:`~napari_cryoden.metrics.image_metrics` of `filtered` against `clean`.
    """
    from scipy.ndimage import gaussian_filter

    x = np.asarray(noisy, np.float64)
    best = None
    for s in sigmas:
        out = gaussian_filter(x, s, mode="reflect")
        m = image_metrics(out, clean)
        if best is None or m["psnr"] > best[2]["psnr"]:
            best = (out.astype(np.float32), float(s), m)
    return best


def block_matching(ndim: int) -> tuple[str, Callable[[np.ndarray, float], np.ndarray]]:
    """BM4D for volumes (`ndim` 3) or BM3D for images (`ndim` 2), as ``(name, f(x, sigma))``.

    ``f`` denoises a float array assuming white noise of standard deviation `sigma`
    (``sigma_psd``; BM3D with the "np" profile, BM4D with its default profile).

    Raises
    ------
    ValueError
        If the ``bm4d`` / ``bm3d`` package is not installed (``pip install
        "napari-cryoden[benchmark]"``), or `ndim` is not 2 or 3.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    name = "BM4D" if ndim == 3 else "BM3D"
    try:
        if ndim == 3:
            import bm4d as mod

            def run(x: np.ndarray, sigma: float) -> np.ndarray:
                return np.asarray(mod.bm4d(np.asarray(x, np.float64), sigma_psd=float(sigma)), np.float32)
        else:
            import bm3d as mod

            def run(x: np.ndarray, sigma: float) -> np.ndarray:
                return np.asarray(mod.bm3d(np.asarray(x, np.float64), sigma_psd=float(sigma)), np.float32)
    except ImportError:
        raise ValueError(f"{name} needs the {name.lower()} package: pip install 'napari-cryoden[benchmark]'") from None
    return name, run
