"""The front door: `load_image`, `iter_frames`, `count_frames` and `read_dicom` sniff the bytes and pick the decoder.

Multi-frame and volume policy: `load_image` returns one representative frame, the middle one
(frames // 2, a volume's central slice, a cine loop's mid-point), unless `frame=` names another;
`iter_frames` yields every frame in order, each a DecodedImage whose metadata.frame_index says which,
decoded one at a time so that a volume is never decoded whole; `count_frames` reads the header only.
PNG and JPEG are single-frame. Window requests (`window=`) are described in imaging.windows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from imaging.settings import ImagingSettings
from imaging.sniff import sniff_format
from imaging.types import DecodedImage, UnsupportedFormatError
from imaging.windows import WindowSpec, parse_window

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

_SNIFF_BYTES = 65536


def load_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int | None = None,
    frame: int | None = None,
    window: WindowSpec | str | None = None,
) -> DecodedImage:
    """Decode a DICOM, PNG or JPEG image from a path or from bytes.

    The format comes from the bytes, never from the file name. `max_pixels` defaults to
    `ImagingSettings().pixel_limit` (MEDCBIR_IMAGING_MAX_PIXELS, MEDCBIR_IMAGING_MAX_DECODE_MIB);
    `frame` selects a frame of a
    multi-frame DICOM (default: the middle one). `window` picks the grey VOI window: None (the
    default policy: header window, else the CT soft-tissue preset for Hounsfield units, else robust
    percentiles), "header", "header:N", "auto", a preset name from `list_window_presets()`, or a
    `WindowSpec`. `frame` and `window` are ignored for PNG/JPEG; `window` is ignored for colour DICOM.

    Raises UnsupportedFormatError, CorruptImageError, ImageTooLargeError or MissingCodecError (all
    ImagingError, a ValueError); an unknown window raises ImagingError naming the valid ones; a
    missing path raises FileNotFoundError.
    """
    request = parse_window(window)
    limit = _limit(max_pixels)
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    fmt = sniff_format(data)
    if fmt == "dicom":
        from imaging.dicom import decode_dicom  # pydicom is imported only when a DICOM arrives

        return decode_dicom(data, max_pixels=limit, frame=frame, window=request)
    from imaging.raster import decode_raster

    return decode_raster(data, fmt, max_pixels=limit)


def iter_frames(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int | None = None,
    window: WindowSpec | str | None = None,
) -> Iterator[DecodedImage]:
    """Every frame of an image, in order, each with its `metadata.frame_index` (PNG/JPEG: one frame).

    The header is read and checked when this is called (so a bad file raises here); each frame is
    decoded when the iterator reaches it, one at a time, and a frame that cannot be decoded raises
    its ImagingError from `next()` after the frames before it were yielded.
    """
    request = parse_window(window)
    limit = _limit(max_pixels)
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    fmt = sniff_format(data)
    if fmt == "dicom":
        from imaging.dicom import iter_dicom_frames

        return iter_dicom_frames(data, max_pixels=limit, window=request)
    from imaging.raster import decode_raster

    return iter([decode_raster(data, fmt, max_pixels=limit)])


def count_frames(source: str | os.PathLike[str] | bytes) -> int:
    """How many frames `iter_frames` yields for a decodable image, read from the header alone.

    A path is read only up to the DICOM pixel data. A file whose pixel data turns out broken is
    reported by the decode, not here. Raises UnsupportedFormatError or CorruptImageError.
    """
    if isinstance(source, bytes):
        head = source[:_SNIFF_BYTES]
    else:
        with Path(source).open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    if sniff_format(head) != "dicom":
        return 1
    from imaging.dicom import count_dicom_frames, read_dicom_header

    target = source if isinstance(source, bytes) else os.fspath(source)
    return count_dicom_frames(read_dicom_header(target, max_pixels=_limit(None)))


def read_dicom(source: str | os.PathLike[str] | bytes, *, max_pixels: int | None = None) -> Dataset:
    """A DICOM file's whole data set (pixel data not decoded), read the way `load_image` reads it:
    with or without preamble and File Meta, the Transfer Syntax UID always set. For callers that
    re-write the object (de-identified export). Raises UnsupportedFormatError for non-DICOM bytes,
    CorruptImageError or ImageTooLargeError."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    fmt = sniff_format(data)
    if fmt != "dicom":
        raise UnsupportedFormatError(
            f"The bytes are {fmt}, not DICOM: only a DICOM file has a data set to read."
        )
    from imaging.dicom import read_dicom_dataset

    return read_dicom_dataset(data, max_pixels=_limit(max_pixels))


def _limit(max_pixels: int | None) -> int:
    limit = ImagingSettings().pixel_limit if max_pixels is None else max_pixels
    if limit <= 0:
        raise ValueError(f"max_pixels must be positive, got {limit}")
    return limit
