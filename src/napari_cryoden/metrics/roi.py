"""Regions of interest: axis-aligned boxes of an array, as tuples of slices (no Qt).

A region of interest (ROI) is a tuple of one ``slice`` per array axis, with explicit, clipped,
non-empty bounds. ``array[roi]`` is then a view (basic slicing never copies), so metrics on a
region of a memory-mapped tomogram read only that region.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["Roi", "bounding_box_roi", "crop", "describe_roi", "full_roi", "parse_roi"]

#: One slice per array axis, with integer ``start < stop`` and step None.
Roi = tuple[slice, ...]


def full_roi(shape: Sequence[int]) -> Roi:
    """The whole array as a :data:`Roi`."""
    return tuple(slice(0, int(n)) for n in shape)


def _check(roi: Roi, shape: Sequence[int]) -> Roi:
    if len(roi) != len(shape):
        raise ValueError(f"region of interest has {len(roi)} axes, the array {len(shape)} (shape {tuple(shape)})")
    out = []
    for axis, (s, n) in enumerate(zip(roi, shape)):
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise ValueError(f"region of interest axis {axis} must be a slice with step 1, got {s!r}")
        start, stop, _ = s.indices(int(n))
        if stop <= start:
            raise ValueError(
                f"region of interest is empty along axis {axis} ({s.start}:{s.stop} of {n} voxels)"
            )
        out.append(slice(start, stop))
    return tuple(out)


def crop(array, roi: Roi | None):
    """``array[roi]`` (a view, not a copy); the whole array when `roi` is None.

    Parameters
    ----------
    array : ndarray
    roi : tuple of slice or None
        One slice per axis, as made by :func:`bounding_box_roi` or :func:`parse_roi`.

    Raises
    ------
    ValueError
        If `roi` does not have one non-empty slice per axis.
    """
    if roi is None:
        return array
    return array[_check(tuple(roi), np.shape(array))]


def bounding_box_roi(points, shape: Sequence[int], *, axes: Sequence[int] | None = None) -> Roi:
    """The voxels whose centres lie in the bounding box of `points`, clipped to the array.

    Parameters
    ----------
    points : (N, D) array_like of float
        Positions in array (data) coordinates, voxel centres at integers; ``D == len(shape)``.
    shape : tuple of int
        Shape of the array the region is for.
    axes : sequence of int, optional
        Axes the box restricts (default: all). Along the other axes, and along any axis where
        all points share one coordinate (a rectangle drawn in one Z plane of a volume), the
        region spans the whole array.

    Returns
    -------
    tuple of slice

    Raises
    ------
    ValueError
        If `points` is empty or has the wrong width, or the box lies outside the array.

    Examples
    --------
    >>> bounding_box_roi([[3.0, 2.2, 4.0], [3.0, 10.7, 30.0]], (16, 32, 24))
    (slice(0, 16, None), slice(3, 11, None), slice(4, 24, None))
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] != len(shape):
        raise ValueError(f"points must be an (N, {len(shape)}) array with N >= 1, got shape {pts.shape}")
    restricted = range(len(shape)) if axes is None else [a % len(shape) for a in axes]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    out = []
    for axis, n in enumerate(shape):
        if axis not in restricted or hi[axis] - lo[axis] < 1e-9:
            out.append(slice(0, int(n)))
            continue
        start = max(int(np.ceil(lo[axis] - 1e-9)), 0)
        stop = min(int(np.floor(hi[axis] + 1e-9)) + 1, int(n))
        if stop <= start:
            raise ValueError(
                f"the region of interest ({lo[axis]:g} to {hi[axis]:g} along axis {axis}) lies outside "
                f"the image (0 to {n - 1})"
            )
        out.append(slice(start, stop))
    return tuple(out)


def parse_roi(text: str, shape: Sequence[int]) -> Roi:
    """A region written as NumPy slices, one per axis, comma separated: ``"0:16,10:74,:"``.

    Parameters
    ----------
    text : str
        ``start:stop`` per axis (either may be left out; negative values count from the end).
    shape : tuple of int

    Returns
    -------
    tuple of slice

    Raises
    ------
    ValueError
        If the text does not have one ``start:stop`` per axis, or a slice is empty.

    Examples
    --------
    >>> parse_roi("4:12, :, -10:", (16, 32, 40))
    (slice(4, 12, None), slice(0, 32, None), slice(30, 40, None))
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != len(shape):
        raise ValueError(
            f"region of interest {text!r} has {len(parts)} parts; give one start:stop per axis "
            f"({len(shape)} for shape {tuple(shape)})"
        )
    slices = []
    for part in parts:
        bounds = part.split(":")
        if len(bounds) != 2:
            raise ValueError(f"region of interest part {part!r} is not of the form start:stop")
        try:
            start, stop = (int(v) if v.strip() else None for v in bounds)
        except ValueError:
            raise ValueError(f"region of interest part {part!r} is not of the form start:stop (integers)") from None
        slices.append(slice(start, stop))
    return _check(tuple(slices), shape)


def describe_roi(roi: Roi | None, axes: str = "ZYX") -> str:
    """``'z 0:16, y 10:74, x 0:96'`` (or ``'whole'`` for None), for tables and file headers."""
    if roi is None:
        return "whole"
    names = axes[-len(roi):] if len(roi) <= len(axes) else [f"axis{i}" for i in range(len(roi))]
    return ", ".join(f"{name.lower()} {s.start}:{s.stop}" for name, s in zip(names, roi))
