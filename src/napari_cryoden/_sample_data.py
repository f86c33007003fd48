"""napari sample data contribution: a simulated crowded tomogram, noisy and clean.

Made on the fly by :func:`napari_cryoden.simulate.sample_tomogram`; no data file is needed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_sample_tomogram"]


def make_sample_tomogram(seed: int = 0, shape: tuple[int, int, int] = (48, 96, 96)) -> list[tuple[Any, dict, str]]:
    """Two image layers: a noisy simulated tomogram and its clean ground truth.

    Parameters
    ----------
    seed : int, default=0
    shape : tuple of 3 int, default=(48, 96, 96)
        (Z, Y, X) in voxels.

    Returns
    -------
    list of (data, kwargs, "image")
        ``"noisy sample tomogram"`` and ``"clean sample tomogram"``, (Z, Y, X) float32, with the
        voxel size in Å as scale.
    """
    from .simulate import sample_tomogram

    noisy, clean, voxel_size = sample_tomogram(seed=seed, shape=shape)
    scale = (float(voxel_size),) * 3
    return [
        (noisy, {"name": "noisy sample tomogram", "scale": scale}, "image"),
        (clean, {"name": "clean sample tomogram", "scale": scale}, "image"),
    ]
