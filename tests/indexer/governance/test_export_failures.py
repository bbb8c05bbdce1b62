"""Export failures: a vanished, damaged or burned-in source is a counted failure of that file, never the end of the run;
a DICOM file without preamble / File Meta and an archive member are exported like any other."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from indexer.cli import app
from indexer.governance.export import GONE, NOT_READABLE_DICOM, export_deidentified, write_part10
from tests.dicom_validation import dciodvfy_path, new_errors, validate_dicom
from tests.helpers import ThumbnailEncoder, dicom_testfile

PATIENT = "Quokka^Xylophone"


def _bare_dataset(source: Path, target: Path) -> Path:
    """A DICOM data set without preamble and File Meta (as some archives and old modalities write them)."""
    ds = pydicom.dcmread(source)
    ds.PatientName = PATIENT
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(target, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    assert target.read_bytes()[128:132] != b"DICM"
    return target


@pytest.fixture()
def archive_folder(tmp_path: Path) -> tuple[Path, Path]:
    """(folder, data dir): five DICOM files and a zip member indexed with the fake encoder."""
    from indexer.archive import Archive
    from indexer.ingest.local import ingest_path
    from indexer.settings import IndexerSettings

    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm", "US1_UNCI.dcm"):
        (folder / name).write_bytes(dicom_testfile(name).read_bytes())
    _bare_dataset(dicom_testfile("SC_rgb.dcm"), folder / "bare.dcm")
    with zipfile.ZipFile(tmp_path / "upload.zip", "w") as handle:
        handle.write(dicom_testfile("JPEG2000.dcm"), "study/j2k.dcm")
    data = tmp_path / "data"
    archive = Archive.open(IndexerSettings(data_dir=data), encoder=ThumbnailEncoder())
    try:
        assert ingest_path(archive, folder, progress=False, workers=0).indexed == 5
        assert ingest_path(archive, tmp_path / "upload.zip", progress=False, workers=0).indexed == 1
    finally:
        archive.close()
    return folder, data


def test_bad_sources_are_counted_failures_and_the_run_goes_on(
    archive_folder: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, data = archive_folder
    (folder / "MR_small.dcm").unlink()  # vanished since the ingest
    (folder / "US1_UNCI.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 64)  # damaged since the ingest
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(
            app, ["export", "--deidentify", "--out", str(out), "--data-dir", str(data)]
        )
    assert result.exit_code == 1, result.output  # not every file was exported: scripts can tell
    assert "exported 4 of 6 DICOM files; 2 failed (" in result.output
    assert f"1 {GONE} (image ids " in result.output and "put the file back" in result.output
    assert f"1 {NOT_READABLE_DICOM} (image ids " in result.output
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 4  # the bare data set and the zip member among them
    assert not list(out.rglob("*.partial"))
    for path in written:
        ds = pydicom.dcmread(path)  # a Part 10 file: preamble, File Meta
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert PATIENT not in str(ds)
    assert PATIENT not in caplog.text and "MR_small" not in caplog.text  # logs: image ids only


def test_the_bare_dataset_and_the_member_export_valid(
    archive_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    from indexer.catalog import Catalog, Image
    from indexer.settings import IndexerSettings
    from indexer.storage.stored import read_stored

    _, data = archive_folder
    catalog = Catalog(IndexerSettings(data_dir=data).resolved_database_url)
    try:
        report = export_deidentified(catalog, b"k" * 32, tmp_path / "out")
        with catalog.session() as session:
            uris = dict(session.query(Image.id, Image.source_uri).all())
    finally:
        catalog.dispose()
    assert report.complete and report.exported == 6, report.summary()
    dciodvfy_path()
    for image_id, path in report.written.items():
        source = tmp_path / f"source-{image_id}.dcm"  # a copy: the zip member has no path of its own
        source.write_bytes(read_stored(uris[image_id]))
        assert not new_errors(path, source=source), uris[image_id]


def test_write_part10_refuses_a_data_set_without_identity(tmp_path: Path) -> None:
    from indexer.governance.export import MissingSopIdentityError

    with pytest.raises(MissingSopIdentityError, match="SOP Instance UID"):
        write_part10(Dataset(), tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())


def test_a_part10_file_made_from_scratch_validates(tmp_path: Path) -> None:
    """The writer's File Meta on a data set made in code: no dciodvfy error about the meta (the IOD is a stub)."""
    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    del ds.file_meta
    path = write_part10(ds, tmp_path / "ct.dcm", transfer_syntax="1.2.840.10008.1.2.1")
    dciodvfy_path()
    assert validate_dicom(path).errors == validate_dicom(dicom_testfile("CT_small.dcm")).errors
