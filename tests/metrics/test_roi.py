"""Regions of interest as tuples of slices: from points, from text, and as views."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoden.metrics import bounding_box_roi, crop, describe_roi, full_roi, parse_roi


def test_bounding_box_takes_the_voxels_whose_centres_are_inside():
    roi = bounding_box_roi([[2.0, 3.4, 0.5], [5.0, 9.6, 12.0]], (16, 32, 24))
    assert roi == (slice(2, 6), slice(4, 10), slice(1, 13))


def test_flat_axes_and_unrestricted_axes_span_the_array():
    # A rectangle drawn in plane z = 7 of a volume: its z extent is zero, so all of z is kept.
    rect = [[7.0, 4.0, 5.0], [7.0, 4.0, 20.0], [7.0, 11.0, 20.0], [7.0, 11.0, 5.0]]
    assert bounding_box_roi(rect, (16, 32, 24)) == (slice(0, 16), slice(4, 12), slice(5, 21))
    assert bounding_box_roi([[3, 4, 5], [9, 11, 20]], (16, 32, 24), axes=(-2, -1)) == (
        slice(0, 16), slice(4, 12), slice(5, 21)
    )


def test_bounding_box_is_clipped_to_the_array():
    assert bounding_box_roi([[-5.0, -3.0], [50.0, 10.0]], (20, 30)) == (slice(0, 20), slice(0, 11))
    with pytest.raises(ValueError, match="outside"):
        bounding_box_roi([[25.0, 1.0], [40.0, 10.0]], (20, 30))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        bounding_box_roi(np.zeros((0, 2)), (20, 30))


def test_parse_roi_reads_numpy_slices():
    assert parse_roi("2:10, :, -8:", (16, 32, 24)) == (slice(2, 10), slice(0, 32), slice(16, 24))
    assert parse_roi(":5,3:", (8, 8)) == (slice(0, 5), slice(3, 8))


@pytest.mark.parametrize(
    "text, match",
    [
        ("0:4,0:4", "3 for shape"),
        ("0:4,x:5,:", "integers"),
        ("0:4,5,:", "start:stop"),
        ("0:4,9:3,:", "empty along axis 1"),
    ],
)
def test_parse_roi_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_roi(text, (16, 32, 24))


def test_crop_is_a_view(aniso_volume):
    roi = (slice(1, 4), slice(0, 20), slice(5, 41))
    part = crop(aniso_volume, roi)
    assert part.shape == (3, 20, 36)
    assert np.shares_memory(part, aniso_volume)
    assert crop(aniso_volume, None) is aniso_volume
    assert crop(aniso_volume, full_roi(aniso_volume.shape)).shape == aniso_volume.shape
    with pytest.raises(ValueError, match="2 axes"):
        crop(aniso_volume, (slice(0, 2), slice(0, 2)))


def test_describe_roi():
    assert describe_roi(None) == "whole"
    assert describe_roi((slice(0, 16), slice(10, 74), slice(0, 96))) == "z 0:16, y 10:74, x 0:96"
    assert describe_roi((slice(10, 74), slice(0, 96))) == "y 10:74, x 0:96"
