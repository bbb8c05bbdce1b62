"""Query boxes: parsed, checked against the image, cropped from the display-ready pixels."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.region import MIN_BOX_SIDE, Box, InvalidBoxError, check_box, crop, parse_box


def test_parse_box_reads_four_pixels_and_refuses_the_rest() -> None:
    assert parse_box(" 1, 2,30 ,40") == Box(1, 2, 30, 40)
    for bad in ("1,2,3", "a,b,c,d", "1.5,2,30,40", "10,2,5,40", "1,40,30,40"):
        with pytest.raises(InvalidBoxError, match="box="):
            parse_box(bad)


def test_check_box_refuses_outside_and_tiny_boxes() -> None:
    assert check_box(Box(0, 0, 64, 32), rows=32, columns=64) == Box(0, 0, 64, 32)
    with pytest.raises(InvalidBoxError, match="outside the 64 x 32 image"):
        check_box(Box(0, 0, 65, 32), rows=32, columns=64)
    with pytest.raises(InvalidBoxError, match="outside"):
        check_box(Box(-1, 0, 10, 10), rows=32, columns=64)
    with pytest.raises(InvalidBoxError, match=f"at least {MIN_BOX_SIDE} x {MIN_BOX_SIDE}"):
        check_box(Box(5, 5, 6, 6), rows=32, columns=64)


def test_crop_keeps_the_displayed_values() -> None:
    pixels = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    region = crop(pixels, Box(3, 4, 13, 19))
    assert region.shape == (15, 10, 3) and region.flags.c_contiguous
    np.testing.assert_array_equal(region, pixels[4:19, 3:13])
