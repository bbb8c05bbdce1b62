"""Format sniffing looks at bytes only."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from imaging import UnsupportedFormatError, load_image, sniff_format


def test_part10_dicom_png_and_jpeg(dcm, encode, ihc) -> None:
    assert sniff_format(dcm("CT_small.dcm").read_bytes()) == "dicom"
    assert sniff_format(encode(ihc, "PNG")) == "png"
    assert sniff_format(encode(ihc, "JPEG")) == "jpeg"


@pytest.mark.parametrize("implicit", [True, False])
def test_bare_dataset_without_preamble_is_dicom(dcm, implicit: bool) -> None:
    ds = dcmread(dcm("MR_small.dcm"))
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    bare = fp.getvalue()
    assert bare[:2] == b"\x08\x00" and bare[128:132] != b"DICM"

    assert sniff_format(bare) == "dicom"
    image = load_image(bare)
    reference = load_image(dcm("MR_small.dcm"))
    assert image.pixels.shape == (64, 64, 3)
    assert (image.pixels == reference.pixels).all()
    assert image.metadata.transfer_syntax_uid == ("1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 200,
        b"hello, this is plain text and certainly not an image" * 4,
        b"GIF89a" + b"\x00" * 100,
        b"II*\x00" + b"\x00" * 100,  # TIFF
        b"\x89PNG\r\n",  # a cut signature
        b"\xff\xd8",  # a cut SOI
        struct.pack("<HH", 0x0008, 0x0005) + b"\xff\xff\xff\x7f" + b"\x00" * 64,  # absurd implicit length
    ],
)
def test_junk_is_unsupported_and_names_the_formats(data: bytes) -> None:
    with pytest.raises(UnsupportedFormatError, match=r"DICOM.*PNG.*JPEG"):
        sniff_format(data)
    with pytest.raises(UnsupportedFormatError):
        load_image(data)


def test_extension_is_ignored(dcm, tmp_path, encode, ihc) -> None:
    png_named_dcm = tmp_path / "scan.dcm"
    png_named_dcm.write_bytes(encode(ihc, "PNG"))
    dicom_without_extension = tmp_path / "IM0001"
    dicom_without_extension.write_bytes(dcm("CT_small.dcm").read_bytes())
    jpeg_named_png = tmp_path / "photo.png"
    jpeg_named_png.write_bytes(encode(ihc, "JPEG"))

    assert load_image(png_named_dcm).metadata.format == "png"
    assert load_image(dicom_without_extension).metadata.format == "dicom"
    assert load_image(jpeg_named_png).metadata.format == "jpeg"


def test_dicom_read_from_file_object_matches(dcm) -> None:
    data = dcm("CT_small.dcm").read_bytes()
    assert dcmread(BytesIO(data)).Rows == load_image(data).metadata.rows
