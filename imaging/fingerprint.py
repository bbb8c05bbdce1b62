"""Pixel fingerprints: an exact digest for identical images and a tiny signature for near-duplicates."""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt
from PIL import Image

from imaging.render import to_uint8


def pixel_digest(pixels: npt.NDArray[np.float32]) -> str:
    """sha256 hex of the 8-bit-quantised pixels and their shape.

    Equal for images that are identical after quantisation, whatever file format carried them.
    """
    quantised = to_uint8(pixels)
    height, width, channels = quantised.shape
    digest = hashlib.sha256(f"{height}x{width}x{channels}:".encode("ascii"))
    digest.update(quantised.tobytes())
    return digest.hexdigest()


def thumbnail_signature(pixels: npt.NDArray[np.float32], side: int = 32) -> npt.NDArray[np.float32]:
    """A side x side float32 grey downsample (area average, aspect not kept), values in [0, 1].

    Near-duplicates (re-encoded, resized, lightly compressed copies) give signatures whose mean
    absolute difference is small; compare them with `np.abs(a - b).mean()`.
    """
    if side < 1:
        raise ValueError(f"side must be >= 1, got {side}")
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim == 3:
        if arr.shape[2] != 3:
            raise ValueError(f"Expected pixels shaped H x W x 3 (or H x W), got {arr.shape}")
        grey = arr @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    elif arr.ndim == 2:
        grey = arr
    else:
        raise ValueError(f"Expected pixels shaped H x W x 3 (or H x W), got {arr.shape}")
    if grey.size == 0:
        raise ValueError("Cannot sign an empty image")
    grey = np.clip(np.nan_to_num(grey, nan=0.0), 0.0, 1.0).astype(np.float32)
    small = Image.fromarray(np.ascontiguousarray(grey), mode="F").resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).copy()
