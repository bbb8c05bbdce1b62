"""Property-based fuzz of the ingest decode + model preprocessing path: an image, or a documented ImagingError."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from embeddings.preprocessing import Preprocessing
from imaging import DecodedImage, ImagingError, load_image

# efficientnet_lite0's eval transform (the default encoder)
PREPROCESS = Preprocessing(
    (224, 224), 0.875, "center", "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
)
MAX_PIXELS = 4_000_000  # small, so that the budget check itself is fuzzed too
# bounded time in CI: each test runs at most this many examples, each under the deadline (ms)
FUZZ = settings(
    max_examples=40, deadline=3000, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

sides = st.one_of(st.integers(1, 64), st.integers(1, 3000), st.sampled_from([1, 2, 65_535, 100_000]))


def _decode_and_preprocess(data: bytes) -> DecodedImage | None:
    """The property: a decoded, preprocessable image, or an ImagingError (anything else fails the test)."""
    try:
        image = load_image(data, max_pixels=MAX_PIXELS)
    except ImagingError:
        return None
    pixels = image.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0
    tensor = PREPROCESS(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
    assert tuple(tensor.shape) == (3, 224, 224) and torch.isfinite(tensor).all()
    return image


def _mutate(data: bytes, cut: int | None, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[:cut] if cut is not None else data)
    for position, value in flips:
        if out:
            out[position % len(out)] = value
    return bytes(out)


mutations = st.tuples(
    st.one_of(st.none(), st.integers(0, 4096)),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
)


@FUZZ
@given(
    height=sides,
    width=sides,
    mode=st.sampled_from(["L", "RGB", "I;16", "LA", "P", "1"]),
    fmt=st.sampled_from(["PNG", "JPEG"]),
    mutation=mutations,
)
def test_png_and_jpeg_of_any_shape_decode_or_fail_cleanly(
    height: int, width: int, mode: str, fmt: str, mutation: tuple[int | None, list[tuple[int, int]]]
) -> None:
    if fmt == "JPEG" and (max(height, width) > 65_500 or mode not in ("L", "RGB")):
        return  # JPEG cannot hold these
    if height * width > 2_000_000:
        height = max(1, 2_000_000 // width)  # keep generation cheap; extreme sides stay extreme
    pixels = np.random.default_rng(height * 31 + width).integers(0, 255, (height, width), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).convert(mode).save(buffer, fmt)
    _decode_and_preprocess(_mutate(buffer.getvalue(), *mutation))


@FUZZ
@given(
    rows=st.one_of(st.integers(0, 64), st.sampled_from([1, 65_535])),
    columns=st.one_of(st.integers(0, 64), st.sampled_from([1, 65_535])),
    bits=st.sampled_from([1, 8, 12, 16, 32, 0, 7]),
    samples=st.sampled_from([1, 3, 0, 4]),
    photometric=st.sampled_from(["MONOCHROME2", "MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "BOGUS"]),
    signed=st.sampled_from([0, 1, 2]),
    frames=st.sampled_from([None, "1", "3", "0", "-1", "x"]),
    pixel_bytes=st.integers(0, 20_000),
    window=st.sampled_from([None, ("40", "400"), ("0", "0"), ("nan", "1e400")]),
)
def test_dicom_with_any_header_decodes_or_fails_cleanly(
    rows: int,
    columns: int,
    bits: int,
    samples: int,
    photometric: str,
    signed: int,
    frames: str | None,
    pixel_bytes: int,
    window: tuple[str, str] | None,
) -> None:
    try:
        data = _dicom(rows, columns, bits, samples, photometric, signed, frames, pixel_bytes, window)
    except (ValueError, TypeError, OverflowError):
        return  # pydicom will not build or write it; nothing to decode
    _decode_and_preprocess(data)


def _dicom(
    rows: int,
    columns: int,
    bits: int,
    samples: int,
    photometric: str,
    signed: int,
    frames: str | None,
    pixel_bytes: int,
    window: tuple[str, str] | None,
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, "1.2.3.4", "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, max(bits - 1, 0), signed
    if frames is not None:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.random.default_rng(pixel_bytes).bytes(pixel_bytes + pixel_bytes % 2)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@FUZZ
@given(
    prefix=st.sampled_from(
        [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\0" * 128 + b"DICM", b"\x08\x00\x05\x00CS"]
    ),
    body=st.binary(max_size=4096),
)
def test_arbitrary_bytes_behind_any_magic_fail_cleanly(prefix: bytes, body: bytes) -> None:
    _decode_and_preprocess(prefix + body)


def test_the_property_catches_an_undocumented_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: an error outside ImagingError escapes it, so the fuzz tests can fail."""
    import imaging.raster

    def broken(*args: object, **kwargs: object) -> DecodedImage:
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(imaging.raster, "decode_raster", broken)
    buffer = io.BytesIO()
    PILImage.new("L", (4, 4)).save(buffer, "PNG")
    with pytest.raises(MemoryError):
        _decode_and_preprocess(buffer.getvalue())
