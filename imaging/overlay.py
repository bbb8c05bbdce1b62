"""Heat-map overlays for explanations: upsample a coarse map, colour it and blend it over the image."""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO

import numpy as np
import numpy.typing as npt
from PIL import Image

from imaging.render import to_uint8

Box = tuple[float, float, float, float]
FULL_BOX: Box = (0.0, 0.0, 1.0, 1.0)


def jet(values: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """The jet colour map (blue -> cyan -> yellow -> red) of values in [0, 1], as (..., 3) float32 RGB."""
    x = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peaks at 3/4, 1/2, 1/4
    return np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0).astype(np.float32)


def _resize_to_fit(pixels: npt.NDArray[np.float32], max_side: int) -> npt.NDArray[np.uint8]:
    img = Image.fromarray(to_uint8(pixels), mode="RGB")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def upsample_map(
    heat: npt.NDArray[np.floating], height: int, width: int, box: Box = FULL_BOX
) -> npt.NDArray[np.float32]:
    """A (h, w) map stretched bilinearly over `box` (top, left, bottom, right as fractions) of an
    height x width canvas; zero outside the box (the part of the image the model never saw)."""
    values = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"expected a non-empty 2-D map, got shape {values.shape}")
    top, left, bottom, right = box
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ValueError(f"box {box} is not (top, left, bottom, right) fractions inside [0, 1]")
    y0, x0 = round(top * height), round(left * width)
    y1, x1 = max(round(bottom * height), y0 + 1), max(round(right * width), x0 + 1)
    stretched = Image.fromarray(values, mode="F").resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
    canvas = np.zeros((height, width), dtype=np.float32)
    canvas[y0:y1, x0:x1] = np.asarray(stretched, dtype=np.float32)
    return np.clip(canvas, 0.0, 1.0)


def overlay_heatmap(
    pixels: npt.NDArray[np.float32],
    heat: npt.NDArray[np.floating],
    box: Box = FULL_BOX,
    max_side: int = 384,
    alpha: float = 0.6,
) -> npt.NDArray[np.uint8]:
    """The image (downscaled to `max_side`) with the [0, 1] map blended over it in jet colours, as
    uint8 H x W x 3; each pixel's opacity grows with its value, so cold regions show the image."""
    if max_side < 16:
        raise ValueError(f"max_side must be at least 16, got {max_side}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = _resize_to_fit(pixels, max_side).astype(np.float32) / 255.0
    height, width = base.shape[:2]
    values = upsample_map(heat, height, width, box)
    opacity = (alpha * values)[..., None]
    blended = base * (1.0 - opacity) + jet(values) * opacity
    return to_uint8(blended)


def side_by_side(panels: Sequence[npt.NDArray[np.uint8]], gap: int = 6) -> npt.NDArray[np.uint8]:
    """Panels next to each other, top-aligned on a black background with `gap` pixels between."""
    if not panels:
        raise ValueError("pass at least one panel")
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    x = 0
    for panel in panels:
        canvas[: panel.shape[0], x : x + panel.shape[1]] = panel
        x += panel.shape[1] + gap
    return canvas


def encode_png(rgb: npt.NDArray[np.uint8]) -> bytes:
    """uint8 H x W x 3 as PNG bytes."""
    buffer = BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
