"""load_stored_dataset / imaging.read_dicom: a stored DICOM source's data set read back as the ingest read it."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from imaging import UnsupportedFormatError, load_image, read_dicom
from indexer.storage.stored import SourceUri, StoredSourceGoneError, load_stored_dataset
from tests.helpers import dicom_testfile


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("CT_small.dcm", "1.2.840.10008.1.2.1"),
        ("ExplVR_LitEndNoMeta.dcm", "1.2.840.10008.1.2.1"),  # no preamble, no File Meta
        ("meta_missing_tsyntax.dcm", "1.2.840.10008.1.2"),  # File Meta without a transfer syntax
        ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
        ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
    ],
)
def test_read_dicom_reads_what_the_ingest_reads(name: str, syntax: str, tmp_path: Path) -> None:
    source = tmp_path / name
    shutil.copyfile(dicom_testfile(name), source)
    ds = load_stored_dataset(str(SourceUri.of_file(source)))
    assert str(ds.file_meta.TransferSyntaxUID) == syntax
    assert [e.tag for e in read_dicom(source.read_bytes())] == [e.tag for e in ds]


def test_archive_member_and_gone_source(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(dicom_testfile("CT_small.dcm"), "study/ct.dcm")
    ds = load_stored_dataset(SourceUri.of_member(archive, "study/ct.dcm"))
    assert ds.Modality == "CT" and "PixelData" in ds
    with pytest.raises(StoredSourceGoneError):
        load_stored_dataset(SourceUri.of_file(tmp_path / "gone.dcm"))


def test_read_dicom_refuses_other_formats(tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "a.png"
    Image.new("L", (8, 8)).save(png)
    assert load_image(png).pixels.shape[:2] == (8, 8)
    with pytest.raises(UnsupportedFormatError, match="not DICOM"):
        read_dicom(png.read_bytes())
