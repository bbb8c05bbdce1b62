"""Label-free shortcut removal: burned-in text / marker masks, the border band, and the body-region crop.

Radiographs carry burned-in annotations ("R"/"L" markers, "PORTABLE", dates) and padded borders that a
model can learn instead of anatomy. These pure transforms find them without labels:

- **Burned-in text and markers** (`burned_in_text_mask`): pixels that are near saturation
  (grey >= `bright`, default 0.9) *and* stand out from their surroundings by a thin bright stroke: the
  white top-hat (grey minus its greyscale opening with a square of side ~`stroke_fraction` of the short
  side, default 2.5%) is >= `contrast` (default 0.25). Letters and markers are drawn at full intensity
  with strokes far thinner than bones, so the opening erases them and keeps the clavicles, spine and
  ribs. The mask is grown by a few pixels to cover antialiased edges. Known limits: thin bright
  devices (wires, ECG leads, clips) match the rule as well; dark text on a light background does not.
- **Border band** (`border_mask`): the outer `fraction` (default 6%) of each side, for measurement.
- **Body region** (`body_box`): rows and columns in which at least `min_fill` (25%) of the pixels are
  neither padding black (<= 0.04) nor flat white (>= 0.97), after masking text; the box from the first
  to the last such row / column. Where that box would keep under 30% of the image it is not trusted
  and the whole image is returned.

Every function takes display-ready float32 pixels (H x W or H x W x 3 in [0, 1], as `load_image`
gives) and never changes its input.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from imaging.region import MIN_BOX_SIDE, Box, crop

BRIGHT = 0.9
CONTRAST = 0.25
STROKE_FRACTION = 0.025
BORDER_FRACTION = 0.06
PADDING_DARK = 0.04
PADDING_WHITE = 0.97
MIN_FILL = 0.25
MIN_BODY_AREA = 0.3


def _grey(pixels: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[..., :3].mean(axis=2) if array.shape[2] != 1 else array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"pass an H x W or H x W x 3 image, got shape {np.shape(pixels)}")
    return np.clip(np.nan_to_num(array), 0.0, 1.0).astype(np.float32)


def _odd(size: float, low: int = 3, high: int = 61) -> int:
    value = round(size) | 1
    return max(low, min(high, value))


def _rank(grey: npt.NDArray[np.float32], size: int, maximum: bool) -> npt.NDArray[np.float32]:
    # A square min/max filter is separable: rows, then columns (O(size) per pixel, edges replicated).
    pad = size // 2
    reduce = np.max if maximum else np.min
    out = np.asarray(grey, dtype=np.float32)
    for axis in (0, 1):
        widths = [(0, 0), (0, 0)]
        widths[axis] = (pad, pad)
        windows = sliding_window_view(np.pad(out, widths, mode="edge"), size, axis=axis)
        out = reduce(windows, axis=-1).astype(np.float32)
    return out


def _opening(grey: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    return _rank(_rank(grey, size, maximum=False), size, maximum=True)


def burned_in_text_mask(
    pixels: npt.NDArray[np.floating],
    bright: float = BRIGHT,
    contrast: float = CONTRAST,
    stroke_fraction: float = STROKE_FRACTION,
) -> npt.NDArray[np.bool_]:
    """Where burned-in text and markers are (H x W bool), by the rule in the module docstring.

    Parameters: `bright` the grey level a stroke reaches; `contrast` how far above the local opening it
    stands; `stroke_fraction` the widest stroke, as a fraction of the image's short side.
    """
    grey = _grey(pixels)
    size = _odd(stroke_fraction * min(grey.shape))
    top_hat = grey - _opening(grey, size)
    core = (grey >= bright) & (top_hat >= contrast)
    if not core.any():
        return core
    grow = _odd(size / 3)
    grown = _rank(core.astype(np.float32), grow, maximum=True) > 0.5
    return np.asarray(grown, dtype=np.bool_)


def border_mask(shape: tuple[int, ...], fraction: float = BORDER_FRACTION) -> npt.NDArray[np.bool_]:
    """The outer `fraction` of each side of an image of `shape` (H x W bool)."""
    rows, columns = int(shape[0]), int(shape[1])
    band_rows, band_columns = max(1, round(rows * fraction)), max(1, round(columns * fraction))
    mask = np.ones((rows, columns), dtype=np.bool_)
    mask[band_rows : rows - band_rows, band_columns : columns - band_columns] = False
    return mask


def mask_burned_in_text(
    pixels: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.float32]:
    """A copy of the image with the text / marker pixels replaced by their local background.

    The background is the greyscale opening with a square twice the stroke size (what the image would
    look like without thin bright strokes), so filled letters take the grey of what lies around them.
    `mask` defaults to `burned_in_text_mask(pixels)`.
    """
    array = np.asarray(pixels, dtype=np.float32)
    grey = _grey(array)
    where = burned_in_text_mask(array) if mask is None else np.asarray(mask, dtype=np.bool_)
    if where.shape != grey.shape:
        raise ValueError(f"the mask is {where.shape} but the image is {grey.shape}")
    out = array.copy()
    if not where.any():
        return out
    background = _opening(grey, _odd(2 * STROKE_FRACTION * min(grey.shape), high=121))
    if out.ndim == 3:
        out[where] = background[where][:, None]
    else:
        out[where] = background[where]
    return out


def _span(filled: npt.NDArray[np.floating], min_fill: float) -> tuple[int, int] | None:
    keep = np.flatnonzero(filled >= min_fill)
    if keep.size == 0:
        return None
    return int(keep[0]), int(keep[-1]) + 1


def body_box(pixels: npt.NDArray[np.floating], min_fill: float = MIN_FILL) -> Box:
    """The box around the body (see the module docstring); the whole image where it cannot be trusted."""
    grey = _grey(pixels)
    rows, columns = grey.shape
    whole = Box(0, 0, columns, rows)
    foreground = (grey > PADDING_DARK) & (grey < PADDING_WHITE) & ~burned_in_text_mask(grey)
    row_span = _span(foreground.mean(axis=1), min_fill)
    column_span = _span(foreground.mean(axis=0), min_fill)
    if row_span is None or column_span is None:
        return whole
    box = Box(column_span[0], row_span[0], column_span[1], row_span[1])
    if (
        box.width < MIN_BOX_SIDE
        or box.height < MIN_BOX_SIDE
        or box.width * box.height < MIN_BODY_AREA * grey.size
    ):
        return whole
    return box


def crop_to_body(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The pixels inside `body_box` (a copy)."""
    return crop(np.asarray(pixels, dtype=np.float32), body_box(pixels))
