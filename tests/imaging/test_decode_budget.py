"""One memory budget per decode: the pixel limit follows MEDCBIR_IMAGING_MAX_DECODE_MIB, checked before allocating."""

from __future__ import annotations

import struct
import zlib

import pytest

from imaging import ImageTooLargeError, ImagingSettings, load_image
from imaging.settings import DECODE_BYTES_PER_PIXEL


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def test_default_budget_caps_pixels_below_the_pixel_setting() -> None:
    settings = ImagingSettings()
    assert settings.max_decode_mib == 1024
    assert settings.pixel_limit == 1024 * 2**20 // DECODE_BYTES_PER_PIXEL < settings.max_pixels


def test_a_36_megapixel_png_is_refused_by_default_before_decoding() -> None:
    # 6000 x 6000 RGB once cost +1.75 GB in the server; now its header alone is enough to refuse it.
    with pytest.raises(ImageTooLargeError, match="MEDCBIR_IMAGING_MAX_DECODE_MIB"):
        load_image(_png_header_only(6000, 6000))


def test_the_budget_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCBIR_IMAGING_MAX_DECODE_MIB", "1")
    assert ImagingSettings().pixel_limit == 2**20 // DECODE_BYTES_PER_PIXEL
    with pytest.raises(ImageTooLargeError):
        load_image(_png_header_only(200, 200))
