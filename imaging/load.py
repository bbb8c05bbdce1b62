"""The front door: `load_image` sniffs the bytes and hands them to the DICOM or raster decoder."""

from __future__ import annotations

import os
from pathlib import Path

from imaging.settings import ImagingSettings
from imaging.sniff import sniff_format
from imaging.types import DecodedImage


def load_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int | None = None,
    frame: int | None = None,
) -> DecodedImage:
    """Decode a DICOM, PNG or JPEG image from a path or from bytes.

    The format comes from the bytes, never from the file name. `max_pixels` defaults to
    `ImagingSettings().max_pixels` (env MEDCBIR_IMAGING_MAX_PIXELS); `frame` selects a frame of a
    multi-frame DICOM (default: the middle one) and is ignored for PNG/JPEG.

    Raises UnsupportedFormatError, CorruptImageError, ImageTooLargeError or MissingCodecError (all
    ImagingError, a ValueError); a missing path raises FileNotFoundError.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    limit = ImagingSettings().max_pixels if max_pixels is None else max_pixels
    if limit <= 0:
        raise ValueError(f"max_pixels must be positive, got {limit}")
    fmt = sniff_format(data)
    if fmt == "dicom":
        from imaging.dicom import decode_dicom  # pydicom is imported only when a DICOM arrives

        return decode_dicom(data, max_pixels=limit, frame=frame)
    from imaging.raster import decode_raster

    return decode_raster(data, fmt, max_pixels=limit)
