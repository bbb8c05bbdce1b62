"""DICOM decoding against real files from pydicom and pydicom-data."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLSLossless

from imaging import (
    CorruptImageError,
    DecodedImage,
    ImageTooLargeError,
    ImagingError,
    MissingCodecError,
    load_image,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _resave(path: Path, **changes: object) -> bytes:
    ds = dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _assert_display_ready(image: DecodedImage) -> None:
    pixels = image.pixels
    assert pixels.dtype == np.float32
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.shape[:2] == (image.metadata.rows, image.metadata.columns)
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    assert pixels.flags.c_contiguous


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPGExtended.dcm",
        "JPEGLSNearLossless_16.dcm",
        "693_J2KI.dcm",
        "image_dfl.dcm",
        "vlut_04.dcm",
        "mlut_18.dcm",
        "SC_rgb_16bit.dcm",
        "SC_rgb_32bit.dcm",
        "gdcm-US-ALOKA-16.dcm",
        "color3d_jpeg_baseline.dcm",
    ],
)
def test_real_files_decode_to_display_ready_pixels(dcm, name: str) -> None:
    image = load_image(dcm(name))
    _assert_display_ready(image)
    assert image.metadata.format == "dicom"
    assert float(image.pixels.std()) > 0.01, "a decoded medical image should not be flat"


def test_ct_metadata_is_clean_text(dcm) -> None:
    meta = load_image(dcm("CT_small.dcm")).metadata
    ds = dcmread(dcm("CT_small.dcm"))
    assert meta.modality == "CT"
    assert meta.sop_instance_uid == str(ds.SOPInstanceUID)
    assert meta.study_instance_uid == str(ds.StudyInstanceUID)
    assert meta.series_instance_uid == str(ds.SeriesInstanceUID)
    assert meta.patient_id == str(ds.PatientID)
    assert meta.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert meta.photometric_interpretation == "MONOCHROME2"
    assert (meta.rows, meta.columns, meta.frames, meta.frame_index) == (128, 128, 1, 0)
    assert meta.bits_stored == 16
    for value in (meta.modality, meta.study_description, meta.series_description, meta.body_part):
        assert value is None or type(value) is str


def test_header_window_is_used_and_recorded(dcm) -> None:
    ds = dcmread(dcm("MR_small.dcm"))
    image = load_image(dcm("MR_small.dcm"))
    meta = image.metadata
    assert meta.window_source == "header"
    assert meta.window_center == float(ds.WindowCenter)
    assert meta.window_width == float(ds.WindowWidth)
    # PS3.3 C.11.2.1.2.1 linear window, by hand
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    raw = ds.pixel_array.astype(np.float64) * slope + intercept
    c, w = meta.window_center, meta.window_width
    expected = np.clip((raw - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(image.pixels[..., 0], expected, atol=1e-6)


def test_auto_window_is_a_robust_percentile_window(dcm) -> None:
    ds = dcmread(dcm("CT_small.dcm"))
    assert "WindowCenter" not in ds
    image = load_image(dcm("CT_small.dcm"), window="auto")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    lo, hi = np.percentile(hu, [0.5, 99.5])
    assert image.metadata.window_source == "percentile"
    assert image.metadata.window_center == pytest.approx((lo + hi) / 2)
    assert image.metadata.window_width == pytest.approx(hi - lo)
    assert np.mean(image.pixels == 0.0) < 0.02 and np.mean(image.pixels == 1.0) < 0.02


def test_multivalued_window_uses_first_and_bad_window_falls_back(dcm) -> None:
    multi = load_image(_resave(dcm("CT_small.dcm"), WindowCenter=[40, 400], WindowWidth=[80, 1500]))
    assert (multi.metadata.window_center, multi.metadata.window_width) == (40.0, 80.0)
    zero_width = load_image(_resave(dcm("MR_small.dcm"), WindowCenter=40, WindowWidth=0))
    assert zero_width.metadata.window_source == "percentile"


def test_sigmoid_voi_function_is_honoured(dcm) -> None:
    linear = load_image(_resave(dcm("CT_small.dcm"), WindowCenter=40, WindowWidth=400))
    sigmoid = load_image(
        _resave(dcm("CT_small.dcm"), WindowCenter=40, WindowWidth=400, VOILUTFunction="SIGMOID")
    )
    assert sigmoid.metadata.extra["voi"] == "sigmoid"
    assert not np.allclose(linear.pixels, sigmoid.pixels)
    # the sigmoid never saturates exactly
    assert float(sigmoid.pixels.min()) > 0.0 and float(sigmoid.pixels.max()) < 1.0


def test_monochrome1_is_inverted_after_windowing(dcm) -> None:
    path = dcm("RG1_UNCI.dcm")
    ds = dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image = load_image(path)
    stored = ds.pixel_array[::8, ::8].astype(np.float64).ravel()
    shown = image.pixels[::8, ::8, 0].astype(np.float64).ravel()
    # MONOCHROME1: high stored values are dark, so display brightness falls as stored values rise
    assert np.corrcoef(stored, shown)[0, 1] < -0.9


def test_monochrome1_equals_inverted_monochrome2_twin(dcm) -> None:
    path = dcm("6154")  # a 16x16 MONOCHROME1 CR from pydicom's DICOMDIR test set
    assert dcmread(path).PhotometricInterpretation == "MONOCHROME1"
    as_mono1 = load_image(path)
    as_mono2 = load_image(_resave(path, PhotometricInterpretation="MONOCHROME2"))
    np.testing.assert_allclose(as_mono1.pixels, 1.0 - as_mono2.pixels, atol=1e-6)
    assert as_mono1.metadata.window_center == as_mono2.metadata.window_center


@pytest.mark.parametrize(
    ("lossy", "reference", "tolerance"),
    [
        ("RG1_J2KI.dcm", "RG1_UNCI.dcm", 0.01),
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm", 1e-6),
        ("MR2_J2KI.dcm", "MR2_UNCI.dcm", 0.01),
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm", 1e-6),
        ("US1_J2KI.dcm", "US1_UNCI.dcm", 0.01),
        ("US1_J2KR.dcm", "US1_UNCR.dcm", 1e-6),
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm", 1e-6),
        ("emri_small_RLE.dcm", "emri_small.dcm", 1e-6),
    ],
)
def test_compressed_twins_decode_like_the_uncompressed_file(
    dcm, lossy: str, reference: str, tolerance: float
) -> None:
    compressed = load_image(dcm(lossy))
    plain = load_image(dcm(reference))
    assert compressed.pixels.shape == plain.pixels.shape
    assert float(np.abs(compressed.pixels - plain.pixels).mean()) <= tolerance


@pytest.mark.parametrize(
    ("name", "max_mean_diff"),
    [
        ("SC_ybr_full_uncompressed.dcm", 0.01),
        ("SC_ybr_full_422_uncompressed.dcm", 0.01),
        ("SC_rgb_dcmtk_+eb+cy+n1.dcm", 0.02),  # JPEG baseline stored as YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", 0.02),  # JPEG baseline stored as YBR_FULL_422
        ("SC_rgb_rle.dcm", 0.0),
        ("SC_rgb_expb.dcm", 0.0),
    ],
)
def test_colour_twins_match_the_rgb_original(dcm, name: str, max_mean_diff: float) -> None:
    rgb = load_image(dcm("SC_rgb.dcm")).pixels
    other = load_image(dcm(name))
    assert other.pixels.shape == rgb.shape
    assert float(np.abs(other.pixels - rgb).mean()) <= max_mean_diff + 1e-7
    # SC_rgb is made of saturated bands: the converted file must be colourful, not grey
    assert float(np.abs(other.pixels[..., 0] - other.pixels[..., 1]).mean()) > 0.1


def test_palette_colour_becomes_rgb(dcm) -> None:
    image = load_image(dcm("OBXXXX1A.dcm"))
    _assert_display_ready(image)
    assert image.metadata.photometric_interpretation == "PALETTE COLOR"
    r, g, b = (image.pixels[..., i] for i in range(3))
    assert float(np.abs(r - g).mean()) > 0.005 or float(np.abs(g - b).mean()) > 0.005
    assert float(image.pixels.max()) > 0.9
    # the big-endian copy (whose 16-bit table holds 8-bit values) must look the same
    big_endian = load_image(dcm("OBXXXX1A_expb.dcm"))
    assert float(np.abs(big_endian.pixels - image.pixels).mean()) < 0.01


def test_multiframe_picks_middle_frame_by_default(dcm) -> None:
    path = dcm("emri_small.dcm")
    frames = dcmread(path).pixel_array
    assert frames.shape[0] == 10
    image = load_image(path)
    assert (image.metadata.frames, image.metadata.frame_index) == (10, 5)
    shown = image.pixels[..., 0].ravel()
    assert np.corrcoef(shown, frames[5].ravel())[0, 1] > 0.95

    first = load_image(path, frame=0)
    assert first.metadata.frame_index == 0
    assert np.corrcoef(first.pixels[..., 0].ravel(), frames[0].ravel())[0, 1] > 0.95
    assert not np.array_equal(first.pixels, image.pixels)


@pytest.mark.parametrize("frame", [10, -1])
def test_frame_out_of_range_is_an_imaging_error(dcm, frame: int) -> None:
    with pytest.raises(ImagingError, match="frame"):
        load_image(dcm("emri_small.dcm"), frame=frame)


def test_colour_multiframe_jpeg_decodes_only_one_frame(dcm) -> None:
    image = load_image(dcm("color3d_jpeg_baseline.dcm"))
    assert (image.metadata.frames, image.metadata.frame_index) == (120, 60)
    assert image.pixels.shape == (480, 640, 3)


def test_declared_giant_frame_is_refused_before_decoding(dcm) -> None:
    bomb = _resave(dcm("CT_small.dcm"), Rows=65535, Columns=65535, NumberOfFrames=1000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match="MEDCBIR_IMAGING_MAX_PIXELS"):
            load_image(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_max_pixels_argument_and_setting(dcm, monkeypatch) -> None:
    path = dcm("CT_small.dcm")  # 128 x 128
    with pytest.raises(ImageTooLargeError):
        load_image(path, max_pixels=128 * 128 - 1)
    assert load_image(path, max_pixels=128 * 128).metadata.rows == 128
    monkeypatch.setenv("MEDCBIR_IMAGING_MAX_PIXELS", "1000")
    with pytest.raises(ImageTooLargeError):
        load_image(path)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_dicom_is_corrupt(dcm, fraction: float) -> None:
    data = dcm("CT_small.dcm").read_bytes()
    with pytest.raises(CorruptImageError):
        load_image(data[: int(len(data) * fraction)])


def test_header_only_and_pixel_less_objects_are_corrupt(dcm) -> None:
    data = dcm("CT_small.dcm").read_bytes()
    with pytest.raises(CorruptImageError, match="no pixel data"):
        load_image(data[:300])
    with pytest.raises(CorruptImageError, match="no pixel data"):
        load_image(dcm("rtplan.dcm"))


def test_garbage_after_dicm_is_corrupt() -> None:
    rng = np.random.default_rng(0)
    junk = b"\x00" * 128 + b"DICM" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    with pytest.raises(CorruptImageError):
        load_image(junk)


def test_hostile_header_text_is_cleaned_and_bad_values_become_none(dcm) -> None:
    data = _resave(
        dcm("CT_small.dcm"),
        SpecificCharacterSet="ISO_IR 192",
        StudyDescription="Chest\x00\x1b[31m CT\u202e  ",
        BodyPartExamined="  ",
    )
    meta = load_image(data).metadata
    assert meta.study_description == "Chest[31m CT"
    assert meta.body_part is None

    ds = dcmread(dcm("CT_small.dcm"))
    # values that cannot be numbers, written with an explicit VR so pydicom keeps them as text
    ds.add_new(0x00281050, "LO", "not-a-number")  # WindowCenter
    ds.add_new(0x00281051, "LO", "wide")  # WindowWidth
    ds.add_new(0x00081030, "LO", "Study\x07 with bell")  # StudyDescription
    buffer = BytesIO()
    ds.save_as(buffer)
    image = load_image(buffer.getvalue())
    assert image.metadata.window_source == "preset:soft_tissue"  # CT in HU without a usable window
    assert image.metadata.study_description == "Study with bell"


def test_bad_number_of_frames_does_not_crash(dcm) -> None:
    image = load_image(dcm("badVR.dcm"))  # NumberOfFrames is the invalid IS '1A'
    _assert_display_ready(image)
    assert image.metadata.frames == 1


def test_every_jpeg_ls_and_j2k_codec_is_installed_here() -> None:
    assert get_decoder(JPEGLSLossless).is_available


def test_missing_codec_names_the_extra(dcm) -> None:
    """Run in a fresh interpreter where the pylibjpeg packages cannot be imported (as if not installed)."""
    script = (
        "import sys\n"
        "for name in ('pylibjpeg', 'libjpeg', 'openjpeg', 'rle', 'jpeg_ls'):  # jpeg_ls: pyjpegls (pacs extra)\n"
        "    sys.modules[name] = None\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "from imaging import load_image, MissingCodecError\n"
        "try:\n"
        f"    load_image({str(dcm('MR_small_jpeg_ls_lossless.dcm'))!r})\n"
        "except MissingCodecError as exc:\n"
        "    print('MISSING:', exc)\n"
        "else:\n"
        "    print('DECODED')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert "MISSING:" in result.stdout, result.stdout + result.stderr
    assert 'pip install "medcbir[codecs]"' in result.stdout
    assert "JPEG-LS" in result.stdout


def test_missing_codec_error_is_an_imaging_error() -> None:
    assert issubclass(MissingCodecError, ImagingError) and issubclass(MissingCodecError, ValueError)
