"""Turning decoded pixels back into an 8-bit PNG preview for reports, the API and the UI."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import numpy.typing as npt
from PIL import Image


def to_uint8(pixels: npt.NDArray[np.floating] | npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Quantise float pixels in [0, 1] (H x W x 3 or H x W) to uint8 H x W x 3 by rounding."""
    arr = np.asarray(pixels)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"Expected pixels shaped H x W x 3 (or H x W), got {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    scaled = np.rint(np.clip(np.nan_to_num(arr.astype(np.float32), nan=0.0), 0.0, 1.0) * 255.0)
    return np.ascontiguousarray(scaled, dtype=np.uint8)


def render_png(pixels: npt.NDArray[np.float32], max_side: int | None = 256) -> bytes:
    """Encode float [0, 1] H x W x 3 pixels as an 8-bit RGB PNG.

    When `max_side` is set and the image is larger, it is downscaled (Lanczos, aspect kept) so that
    its longest side equals `max_side`; smaller images are never upscaled.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}")
    img = Image.fromarray(to_uint8(pixels), mode="RGB")
    if max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = BytesIO()
    img.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()
