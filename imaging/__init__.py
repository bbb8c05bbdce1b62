"""Image decoding for medcbir: bytes (DICOM, PNG, JPEG) in, display-ready float32 RGB pixels out."""

from imaging.fingerprint import pixel_digest, thumbnail_signature
from imaging.load import count_frames, iter_frames, load_image, read_dicom
from imaging.render import render_png
from imaging.settings import ImagingSettings
from imaging.sniff import sniff_format
from imaging.types import (
    CorruptImageError,
    DecodedImage,
    ImageFormat,
    ImageMetadata,
    ImageTooLargeError,
    ImagingError,
    MissingCodecError,
    UnsupportedFormatError,
)
from imaging.windows import WindowSpec, list_window_presets

__all__ = [
    "CorruptImageError",
    "DecodedImage",
    "ImageFormat",
    "ImageMetadata",
    "ImageTooLargeError",
    "ImagingError",
    "ImagingSettings",
    "MissingCodecError",
    "UnsupportedFormatError",
    "WindowSpec",
    "count_frames",
    "iter_frames",
    "list_window_presets",
    "load_image",
    "pixel_digest",
    "read_dicom",
    "render_png",
    "sniff_format",
    "thumbnail_signature",
]
