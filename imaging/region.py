"""A region of an image: the box a query names (x0,y0,x1,y1 in pixels), validated, and the crop of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# A box narrower or shorter than this is refused: the encoder would only see interpolated blur.
MIN_BOX_SIDE = 8


class InvalidBoxError(ValueError):
    """A query box that cannot be used: malformed, outside the image, or too small; the message says why."""


@dataclass(frozen=True)
class Box:
    """A pixel box: columns x0 <= x < x1, rows y0 <= y < y1 (the usual image convention, end exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    def __str__(self) -> str:
        return f"{self.x0},{self.y0},{self.x1},{self.y1}"


def parse_box(text: str) -> Box:
    """A box from 'x0,y0,x1,y1' (whole pixels); InvalidBoxError when malformed or not x0 < x1, y0 < y1."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 4:
            raise ValueError
        x0, y0, x1, y1 = (int(p) for p in parts)
    except ValueError:
        raise InvalidBoxError(
            f"box={text[:40]!r}: write four whole pixel numbers x0,y0,x1,y1 (left, top, right, bottom)"
        ) from None
    if x1 <= x0 or y1 <= y0:
        raise InvalidBoxError(
            f"box={text[:40]!r}: the right edge must exceed the left and the bottom the top"
        )
    return Box(x0, y0, x1, y1)


def check_box(box: Box, rows: int, columns: int, min_side: int = MIN_BOX_SIDE) -> Box:
    """The box, when it lies inside a rows x columns image and is at least `min_side` pixels each way.

    Raises
    ------
    InvalidBoxError: outside the image, or smaller than `min_side`.
    """
    if box.x0 < 0 or box.y0 < 0 or box.x1 > columns or box.y1 > rows:
        raise InvalidBoxError(
            f"box {box} lies outside the {columns} x {rows} image (x in 0..{columns}, y in 0..{rows}); "
            "draw it on the query image"
        )
    if box.width < min_side or box.height < min_side:
        raise InvalidBoxError(
            f"box {box} is {box.width} x {box.height} pixels: make it at least {min_side} x {min_side}"
        )
    return box


def crop(pixels: npt.NDArray[np.float32], box: Box) -> npt.NDArray[np.float32]:
    """The display-ready pixels inside the box (a copy, so the window and colour are those of the image)."""
    return np.ascontiguousarray(pixels[box.y0 : box.y1, box.x0 : box.x1])
