"""The public front door: paths vs bytes, settings, rendering and fingerprints."""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imaging
from imaging import (
    ImagingSettings,
    load_image,
    pixel_digest,
    render_png,
    thumbnail_signature,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_public_names() -> None:
    for name in (
        "load_image",
        "sniff_format",
        "render_png",
        "pixel_digest",
        "thumbnail_signature",
        "DecodedImage",
        "ImageMetadata",
        "ImageFormat",
        "ImagingError",
        "UnsupportedFormatError",
        "CorruptImageError",
        "ImageTooLargeError",
        "MissingCodecError",
        "ImagingSettings",
    ):
        assert hasattr(imaging, name), name


def test_import_is_light_and_never_pulls_forbidden_packages() -> None:
    script = (
        "import sys, imaging\n"
        "bad = [m for m in ('torch', 'timm', 'faiss', 'sqlalchemy', 'pydicom') if m in sys.modules]\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_path_str_and_bytes_give_the_same_image(dcm, tmp_path, encode, ihc) -> None:
    path = dcm("MR_small.dcm")
    from_path = load_image(path)
    from_str = load_image(str(path))
    from_bytes = load_image(path.read_bytes())
    np.testing.assert_array_equal(from_path.pixels, from_bytes.pixels)
    np.testing.assert_array_equal(from_str.pixels, from_bytes.pixels)
    assert from_path.metadata == from_bytes.metadata

    png = tmp_path / "ihc.png"
    png.write_bytes(encode(ihc, "PNG"))
    np.testing.assert_array_equal(load_image(png).pixels, load_image(png.read_bytes()).pixels)


def test_missing_path_raises_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.dcm")


def test_settings_read_env_at_call_time(monkeypatch) -> None:
    assert ImagingSettings().max_pixels == 100_000_000
    monkeypatch.setenv("MEDCBIR_IMAGING_MAX_PIXELS", "1234")
    assert ImagingSettings().max_pixels == 1234


def test_render_png_downscales_keeping_aspect(retina, ihc) -> None:
    pixels = (retina[:, :700] / 255.0).astype(np.float32)  # 1411 x 700
    png = render_png(pixels)
    thumb = Image.open(BytesIO(png))
    assert thumb.format == "PNG" and thumb.mode == "RGB"
    assert thumb.size == (127, 256)  # width, height: longest side 256, aspect kept

    small = (ihc[:100, :50] / 255.0).astype(np.float32)
    same = Image.open(BytesIO(render_png(small, max_side=None)))
    assert same.size == (50, 100)
    np.testing.assert_array_equal(np.asarray(same), ihc[:100, :50])
    assert Image.open(BytesIO(render_png(small, max_side=512))).size == (50, 100)  # never upscaled


def test_render_png_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="H x W x 3"):
        render_png(np.zeros((4, 4, 5), dtype=np.float32))


def test_pixel_digest_identifies_pixel_identical_images(dcm, encode, ihc) -> None:
    via_png = load_image(encode(ihc, "PNG")).pixels
    direct = (ihc / 255.0).astype(np.float32)
    assert pixel_digest(via_png) == pixel_digest(direct)
    assert len(pixel_digest(direct)) == 64

    changed = direct.copy()
    changed[0, 0, 0] = 1.0 - changed[0, 0, 0]
    assert pixel_digest(changed) != pixel_digest(direct)
    # same bytes, different shape
    assert pixel_digest(direct.reshape(256, 1024, 3)) != pixel_digest(direct)
    # the J2K-reversible twin is pixel-identical to the uncompressed file
    assert pixel_digest(load_image(dcm("MR2_J2KR.dcm")).pixels) == pixel_digest(
        load_image(dcm("MR2_UNCR.dcm")).pixels
    )


def test_thumbnail_signature_finds_near_duplicates(encode, ihc, retina) -> None:
    original = load_image(encode(ihc, "PNG")).pixels
    recompressed = load_image(encode(ihc, "JPEG", quality=60)).pixels
    resized = load_image(encode(np.asarray(Image.fromarray(ihc).resize((300, 300))), "PNG")).pixels
    other = load_image(encode(retina, "PNG")).pixels

    sig = thumbnail_signature(original)
    assert sig.shape == (32, 32) and sig.dtype == np.float32
    assert float(sig.min()) >= 0.0 and float(sig.max()) <= 1.0
    assert thumbnail_signature(original, side=16).shape == (16, 16)

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(thumbnail_signature(a) - thumbnail_signature(b)).mean())

    assert distance(original, recompressed) < 0.01
    assert distance(original, resized) < 0.01
    assert distance(original, other) > 0.05
