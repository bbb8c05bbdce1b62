"""The matched region drawn on a neighbour's thumbnail, scaled from the full image's pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from search_api.schemas import RegionMatch
from ui.regions import BOX_COLOUR, draw_region


def test_the_box_lands_where_the_full_image_says_scaled_to_the_thumbnail() -> None:
    buffer = io.BytesIO()
    Image.new("L", (100, 50), 0).save(buffer, format="PNG")  # a thumbnail of a 400 x 200 image
    region = RegionMatch(box=[200, 40, 400, 120], rows=200, columns=400, score=0.7)
    drawn = np.asarray(Image.open(io.BytesIO(draw_region(buffer.getvalue(), region))).convert("RGB"))
    yellow = np.all(drawn == BOX_COLOUR, axis=2)
    rows, cols = np.nonzero(yellow)
    assert cols.min() == 50 and cols.max() == 99  # x 200..400 of 400 -> 50..99 of 100
    assert rows.min() == 10 and rows.max() == 29  # y 40..120 of 200 -> 10..29 of 50
    assert not yellow[20, 70]  # an outline, not a filled box
