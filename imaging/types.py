"""The decoded-image value types and the imaging error hierarchy shared by every decoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

ImageFormat = Literal["dicom", "png", "jpeg"]


class ImagingError(ValueError):
    """Base class: the bytes could not be turned into an image; the message says what to do."""


class UnsupportedFormatError(ImagingError):
    """The bytes are not DICOM, PNG or JPEG."""


class CorruptImageError(ImagingError):
    """The bytes claim a known format but cannot be decoded (truncated, malformed, no pixel data)."""


class ImageTooLargeError(ImagingError):
    """The image declares more pixels than the configured limit (decompression-bomb guard)."""


class MissingCodecError(ImagingError):
    """A compressed DICOM transfer syntax needs a codec that is not installed; names the extra."""


@dataclass(frozen=True)
class ImageMetadata:
    """What the file truly says about itself; every field is optional except the format."""

    format: ImageFormat
    rows: int
    columns: int
    frames: int = 1
    frame_index: int = 0
    modality: str | None = None
    body_part: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    patient_id: str | None = None  # raw, only for pseudonymisation downstream; never logged or shown
    photometric_interpretation: str | None = None
    transfer_syntax_uid: str | None = None
    window_center: float | None = None
    window_width: float | None = None
    window_source: str | None = (
        None  # "header", "preset:<name>", "request", "percentile"; None: colour/non-DICOM
    )
    bits_stored: int | None = None
    view_position: str | None = None
    laterality: str | None = None
    pixel_spacing: tuple[float, float] | None = None  # (row, column) spacing in mm
    study_date: str | None = None  # DICOM DA text, YYYYMMDD
    sop_class_uid: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DecodedImage:
    """Display-ready pixels (float32, H x W x 3, values in [0, 1]) and the file's metadata."""

    pixels: npt.NDArray[np.float32]
    metadata: ImageMetadata
