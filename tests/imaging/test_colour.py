"""Colour DICOM: RGB interleaved and planar, YBR_FULL(_422), palette; 8/16/32-bit; signed grey."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread

from imaging import load_image


def test_planar_and_interleaved_rgb_are_the_same_image(dcm) -> None:
    planar, interleaved = dcm("color-pl.dcm"), dcm("color-px.dcm")
    assert dcmread(planar).PlanarConfiguration == 1 and dcmread(interleaved).PlanarConfiguration == 0
    a, b = load_image(planar).pixels, load_image(interleaved).pixels
    np.testing.assert_array_equal(a, b)
    assert float(np.abs(a[..., 0] - a[..., 2]).mean()) > 0.01  # really colour


def test_rgb_is_scaled_by_its_depth_only(dcm) -> None:
    ds = dcmread(dcm("SC_rgb.dcm"))
    np.testing.assert_allclose(load_image(dcm("SC_rgb.dcm")).pixels, ds.pixel_array / 255.0, atol=1e-6)
    # the 16- and 32-bit versions hold the same picture at other depths
    for name in ("SC_rgb_16bit.dcm", "SC_rgb_32bit.dcm", "SC_rgb_expb_16bit.dcm", "SC_rgb_rle_32bit.dcm"):
        assert float(np.abs(load_image(dcm(name)).pixels - ds.pixel_array / 255.0).max()) < 0.01, name


@pytest.mark.parametrize("photometric", ["YBR_FULL", "YBR_FULL_422"])
def test_ybr_files_become_rgb(dcm, photometric: str) -> None:
    name = "SC_ybr_full_uncompressed.dcm" if photometric == "YBR_FULL" else "SC_ybr_full_422_uncompressed.dcm"
    assert dcmread(dcm(name)).PhotometricInterpretation == photometric
    image = load_image(dcm(name))
    rgb = dcmread(dcm("SC_rgb.dcm")).pixel_array / 255.0
    assert float(np.abs(image.pixels - rgb).mean()) < 0.01
    top_band = image.pixels[5, 50]  # SC_rgb's first band is pure red
    assert top_band[0] > 0.95 and top_band[1] < 0.05 and top_band[2] < 0.05


def test_palette_colour_16bit_table_and_rle(dcm) -> None:
    base = load_image(dcm("OBXXXX1A.dcm")).pixels
    for name in ("OBXXXX1A_rle.dcm", "OBXXXX1A_expb.dcm"):
        assert float(np.abs(load_image(dcm(name)).pixels - base).mean()) < 0.01
    aloka = load_image(dcm("gdcm-US-ALOKA-16.dcm"))  # 16-bit palette entries, implicit VR
    assert aloka.metadata.photometric_interpretation == "PALETTE COLOR"
    assert 0.05 < float(aloka.pixels.mean()) < 0.9 and float(aloka.pixels.std()) > 0.05


def test_signed_colour_is_shifted_not_clipped(dcm) -> None:
    ds = dcmread(dcm("SC_rgb_16bit.dcm"))
    unsigned = ds.pixel_array.astype(np.int32)
    ds.PixelRepresentation = 1
    ds.PixelData = (unsigned - 32768).astype("<i2").tobytes()
    buffer = BytesIO()
    ds.save_as(buffer)
    np.testing.assert_allclose(load_image(buffer.getvalue()).pixels, unsigned / 65535.0, atol=1e-6)


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "693_UNCI.dcm", "JPEG2000.dcm", "emri_small_RLE.dcm"]
)
def test_signed_and_big_endian_grey_match_pydicoms_values(dcm, name: str) -> None:
    ds = dcmread(dcm(name))
    stored = ds.pixel_array
    stored = stored[len(stored) // 2] if stored.ndim == 3 else stored
    image = load_image(dcm(name), window="auto")
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    values = stored.astype(np.float64) * slope + intercept
    lo, hi = np.percentile(values, [0.5, 99.5])
    expected = np.clip((values - (lo + hi) / 2) / (hi - lo) + 0.5, 0, 1)
    np.testing.assert_allclose(image.pixels[..., 0], expected, atol=1e-5)
