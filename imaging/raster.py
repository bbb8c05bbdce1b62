"""PNG and JPEG decoding with Pillow: size limit before decode, EXIF orientation, every common mode."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from imaging.types import CorruptImageError, DecodedImage, ImageFormat, ImageMetadata, ImageTooLargeError

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def decode_raster(data: bytes, fmt: ImageFormat, *, max_pixels: int) -> DecodedImage:
    """Decode PNG/JPEG bytes to float32 H x W x 3 in [0, 1]; alpha is composited on black."""
    try:
        img = Image.open(BytesIO(data), formats=["PNG"] if fmt == "png" else ["JPEG"])
    except Image.DecompressionBombError as exc:
        raise _too_large(str(exc), max_pixels) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(
            f"The {fmt.upper()} header could not be read ({exc}); the file is damaged."
        ) from exc
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise CorruptImageError(f"The {fmt.upper()} declares an empty image ({width}x{height}).")
        if width * height > max_pixels:
            raise _too_large(f"{width}x{height} = {width * height:,} pixels", max_pixels)
        bits = 16 if img.mode in _SIXTEEN_BIT_MODES or img.mode == "I" else 8
        try:
            img.load()
            oriented = ImageOps.exif_transpose(img)
            pixels = _to_rgb_float(oriented)
        except Image.DecompressionBombError as exc:
            raise _too_large(str(exc), max_pixels) from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptImageError(
                f"The {fmt.upper()} pixel data could not be decoded ({exc}); the file may be truncated."
            ) from exc
        mode = img.mode
    rows, columns = pixels.shape[:2]
    return DecodedImage(
        pixels=pixels,
        metadata=ImageMetadata(
            format=fmt,
            rows=rows,
            columns=columns,
            bits_stored=bits,
            extra={"mode": mode},
        ),
    )


def _too_large(detail: str, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"The image is too large ({detail}); the limit is {max_pixels:,} pixels. "
        "Raise MEDCBIR_IMAGING_MAX_DECODE_MIB / MEDCBIR_IMAGING_MAX_PIXELS if the image is genuine."
    )


def _to_rgb_float(img: Image.Image) -> npt.NDArray[np.float32]:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        grey = np.asarray(img).astype(np.float64) / 65535.0
        return _grey_to_rgb(grey)
    if mode == "F":
        return _grey_to_rgb(np.asarray(img, dtype=np.float64))
    if mode == "1":
        img = img.convert("L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, RGBX, ...
        mode = "RGB"
    arr: np.ndarray[Any, Any] = np.asarray(img).astype(np.float32) / np.float32(255.0)
    if mode == "L":
        return _grey_to_rgb(arr)
    if mode == "LA":
        return _grey_to_rgb(arr[..., 0] * arr[..., 1])
    if mode == "RGBA":
        arr = arr[..., :3] * arr[..., 3:4]
    return np.ascontiguousarray(np.clip(arr[..., :3], 0.0, 1.0), dtype=np.float32)


def _grey_to_rgb(grey: np.ndarray[Any, Any]) -> npt.NDArray[np.float32]:
    grey32 = np.clip(grey, 0.0, 1.0).astype(np.float32)
    return np.repeat(grey32[..., None], 3, axis=2)
