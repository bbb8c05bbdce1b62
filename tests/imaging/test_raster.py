"""PNG and JPEG decoding with Pillow: modes, bit depth, orientation, bombs, truncation."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from imaging import CorruptImageError, ImageTooLargeError, load_image


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height 8-bit RGB, with almost no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_rgb_png_is_lossless(encode, retina) -> None:
    image = load_image(encode(retina, "PNG"))
    assert image.metadata.format == "png"
    assert image.pixels.dtype == np.float32 and image.pixels.shape == retina.shape
    np.testing.assert_array_equal(np.rint(image.pixels * 255).astype(np.uint8), retina)
    assert (image.metadata.rows, image.metadata.columns) == retina.shape[:2]


def test_jpeg_is_close_to_the_original(encode, ihc) -> None:
    image = load_image(encode(ihc, "JPEG", quality=95))
    assert image.metadata.format == "jpeg"
    assert image.pixels.shape == ihc.shape
    assert float(np.abs(image.pixels - ihc / 255.0).mean()) < 0.02


def test_8bit_grey_png(encode, ihc) -> None:
    grey = ihc[..., 1]
    image = load_image(encode(grey, "PNG"))
    assert image.pixels.shape == (*grey.shape, 3)
    assert (image.pixels[..., 0] == image.pixels[..., 2]).all()
    np.testing.assert_array_equal(np.rint(image.pixels[..., 0] * 255).astype(np.uint8), grey)


def test_16bit_png_keeps_its_precision(encode) -> None:
    ramp = np.linspace(0, 65535, 256 * 300).astype(np.uint16).reshape(256, 300)
    data = encode(ramp, "PNG")
    assert Image.open(BytesIO(data)).mode.startswith("I")
    image = load_image(data)
    assert image.metadata.bits_stored == 16
    np.testing.assert_array_equal(np.rint(image.pixels[..., 0].astype(np.float64) * 65535), ramp)
    assert np.unique(image.pixels[..., 0]).size > 256  # more levels than 8 bits could hold


def test_alpha_is_composited_on_black(encode) -> None:
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    image = load_image(encode(rgba, "PNG"))
    np.testing.assert_allclose(image.pixels[..., 0], 128 / 255, atol=1e-6)
    assert float(image.pixels[..., 1:].max()) == 0.0
    la = Image.fromarray(np.full((4, 4), 200, dtype=np.uint8)).convert("LA")
    la.putalpha(0)
    buffer = BytesIO()
    la.save(buffer, format="PNG")
    assert float(load_image(buffer.getvalue()).pixels.max()) == 0.0


def test_palette_and_cmyk_become_rgb(ihc) -> None:
    palette = Image.fromarray(ihc).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    buffer = BytesIO()
    palette.save(buffer, format="PNG")
    image = load_image(buffer.getvalue())
    assert image.pixels.shape == ihc.shape
    assert float(np.abs(image.pixels - ihc / 255.0).mean()) < 0.05

    cmyk = Image.fromarray(ihc).convert("CMYK")
    buffer = BytesIO()
    cmyk.save(buffer, format="JPEG", quality=95)
    image = load_image(buffer.getvalue())
    assert image.pixels.shape == ihc.shape
    assert float(np.abs(image.pixels - ihc / 255.0).mean()) < 0.05


def test_exif_orientation_is_applied(ihc) -> None:
    tall = ihc[:, :200]  # 512 rows x 200 columns
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = BytesIO()
    Image.fromarray(tall).save(buffer, format="JPEG", quality=95, exif=exif)
    image = load_image(buffer.getvalue())
    assert image.pixels.shape == (200, 512, 3)
    expected = np.rot90(tall, k=-1) / 255.0
    assert float(np.abs(image.pixels - expected).mean()) < 0.03


def test_png_bomb_is_refused_before_allocating() -> None:
    bomb = _png_header_only(30_000, 30_000)  # 900 Mpx declared in a ~100 byte file
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match="MEDCBIR_IMAGING_MAX_PIXELS"):
            load_image(bomb)
        with pytest.raises(ImageTooLargeError):
            load_image(_png_header_only(4000, 4000), max_pixels=1_000_000)  # under Pillow's own limit
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_header_with_no_pixels_is_corrupt() -> None:
    with pytest.raises(CorruptImageError):
        load_image(_png_header_only(64, 64))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_raster_is_corrupt(encode, ihc, fmt: str) -> None:
    data = encode(ihc, fmt)
    with pytest.raises(CorruptImageError):
        load_image(data[: len(data) // 2])
    with pytest.raises(CorruptImageError):
        load_image(data[:40])
