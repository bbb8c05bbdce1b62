"""The ingest pipeline on real files: manifest round trip, idempotence, bad files recorded, crash recovery."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.archive import Archive
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from indexer.vectors.index import VectorIndex
from tests.conftest import ARCHIVE_ROWS
from tests.helpers import ThumbnailEncoder, dicom_testfile


def _open(data_dir: Path) -> Archive:
    return Archive.open(IndexerSettings(data_dir=data_dir, batch_size=3), encoder=ThumbnailEncoder())


def test_manifest_round_trip_and_rerun_is_a_noop(small_archive: tuple[Path, Path], tmp_path: Path) -> None:
    folder, manifest = small_archive
    archive = _open(tmp_path / "data")
    report = ingest_path(archive, folder, load_manifest(manifest, ManifestColumns()), progress=False)
    assert report.indexed == len(ARCHIVE_ROWS)
    assert report.failed == 0
    assert report.not_images == 1  # the manifest CSV itself
    stats = archive.catalog.stats()
    assert stats.images == len(ARCHIVE_ROWS) and stats.cases == len(ARCHIVE_ROWS)
    assert len(archive.index) == len(ARCHIVE_ROWS)

    # every image carries exactly its manifest row's case, report and labels
    rows = archive.catalog.images_by_ids([int(i) for i in archive.index.ids()])
    by_file = {Path(r.source_uri).name: r for r in rows.values()}
    for rel, case_id, _patient, report_text, labels in ARCHIVE_ROWS:
        row = by_file[Path(rel).name]
        assert row.case.case_key == case_id
        assert row.case.report == report_text
        assert row.case.labels == [x.strip() for x in labels.split(";")]
        assert row.case.patient_ref is not None and row.case.patient_ref.startswith("P-")
        assert "PAT" not in row.case.patient_ref  # pseudonymous, not the raw id
    assert by_file["RG1_UNCI.dcm"].modality == "CR"
    assert by_file["retina.png"].format == "png"

    again = ingest_path(archive, folder, load_manifest(manifest, ManifestColumns()), progress=False)
    assert again.indexed == 0 and again.already_indexed == len(ARCHIVE_ROWS)
    assert archive.catalog.stats().images == len(ARCHIVE_ROWS)
    assert len(archive.index) == len(ARCHIVE_ROWS)
    archive.close()


def test_bad_files_are_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    good = dicom_testfile("CT_small.dcm")
    shutil.copyfile(good, folder / "good.dcm")
    shutil.copyfile(good, folder / "copy_same_bytes")  # same bytes, no extension: a no-op duplicate
    (folder / "junk.dcm").write_bytes(b"this is not an image at all" * 10)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.dcm").write_bytes(good.read_bytes()[:2000])
    (folder / "notes.txt").write_text("not an image, not expected to be one")
    archive = _open(tmp_path / "data")
    report = ingest_path(archive, folder, progress=False)
    assert report.indexed == 1
    assert report.already_indexed == 1
    assert report.failed == 3
    assert report.not_images == 1
    reasons = {Path(f.source_uri).name: f for f in archive.catalog.failures()}
    assert set(reasons) == {"junk.dcm", "empty.png", "truncated.dcm"}
    assert reasons["junk.dcm"].error_type == "UnsupportedFormatError"
    assert reasons["truncated.dcm"].error_type == "CorruptImageError"
    # DICOM without manifest: the case is the study, no invented report or diagnosis
    row = next(iter(archive.catalog.images_by_ids([int(i) for i in archive.index.ids()]).values()))
    assert row.case.case_key.startswith("study:")
    assert row.case.report is None and row.case.labels == []
    archive.close()


def test_catalog_ahead_of_index_after_a_crash_is_repaired_at_open(
    small_archive: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, manifest = small_archive
    archive = _open(tmp_path / "data")
    ingest_path(archive, folder, load_manifest(manifest, ManifestColumns()), progress=False)
    full = np.sort(archive.index.ids())
    # simulate a crash after the rows were committed but before the vectors were saved
    partial = VectorIndex(archive.encoder.dim, archive.encoder.name)
    vectors = {int(i): archive.catalog.image(int(i)).vector() for i in full[:2]}  # type: ignore[union-attr]
    partial.add(full[:2], np.stack(list(vectors.values())))
    partial.save(archive.index_path)
    archive.close()
    reopened = _open(tmp_path / "data")
    assert np.array_equal(np.sort(reopened.index.ids()), full)
    reopened.close()


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    archive = _open(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor an archive"):
        ingest_path(archive, tmp_path / "nope", progress=False)
    archive.close()


class _PickyEncoder(ThumbnailEncoder):
    """Refuses images whose top-left pixel is pure white, as a real encoder refuses bad input."""

    def embed(self, images):  # type: ignore[no-untyped-def]
        from embeddings import EmbeddingsError

        if any(float(img[0, 0].min()) >= 1.0 for img in images):
            raise EmbeddingsError("image rejected by the encoder")
        return super().embed(images)


def test_an_image_the_encoder_refuses_is_recorded_and_its_batch_mates_are_indexed(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        pixels = np.full((32, 32), 40 * (i + 1), dtype=np.uint8)
        pixels[5:9, 5:9] = 7 * i
        if i == 1:
            pixels[0, 0] = 255
        PILImage.fromarray(pixels).save(folder / f"img{i}.png")
    archive = Archive.open(IndexerSettings(data_dir=tmp_path / "data", batch_size=8), encoder=_PickyEncoder())
    report = ingest_path(archive, folder, progress=False)
    assert report.indexed == 2 and report.failed == 1
    assert [Path(f.source_uri).name for f in archive.catalog.failures()] == ["img1.png"]
    assert len(archive.index) == 2
    archive.close()


def test_dicom_header_metadata_reaches_the_catalog(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(dicom_testfile("CT_small.dcm"), folder / "ct")
    shutil.copyfile(dicom_testfile("RG1_UNCI.dcm"), folder / "cr")
    archive = _open(tmp_path / "data")
    ingest_path(archive, folder, progress=False)
    rows = {
        Path(r.source_uri).name: r
        for r in archive.catalog.images_by_ids([int(i) for i in archive.index.ids()]).values()
    }
    ct, cr = rows["ct"], rows["cr"]
    assert ct.modality == "CT" and ct.study_date == "20040119"
    assert ct.pixel_spacing_row == pytest.approx(0.661468) and ct.pixel_spacing_column == pytest.approx(
        0.661468
    )
    assert ct.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2" and ct.rows == 128 and ct.columns == 128
    assert ct.study_instance_uid and ct.series_instance_uid and ct.sop_instance_uid
    assert cr.view_position == "PA" and cr.modality == "CR"
    archive.close()


def test_same_sop_uid_same_pixels_is_a_duplicate_and_different_pixels_a_recorded_conflict(
    tmp_path: Path,
) -> None:
    import pydicom

    folder = tmp_path / "in"
    folder.mkdir()
    original = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    original.save_as(folder / "a.dcm")
    header_edit = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    header_edit.StudyDescription = "edited header, same pixels"
    header_edit.save_as(folder / "b.dcm")
    changed = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    pixels = changed.pixel_array.copy()
    pixels[:20, :20] = pixels.max()
    changed.PixelData = pixels.tobytes()
    changed.save_as(folder / "c.dcm")
    archive = _open(tmp_path / "data")
    report = ingest_path(archive, folder, progress=False, workers=1)
    assert report.indexed == 1 and report.already_indexed == 1 and report.failed == 1
    (failure,) = archive.catalog.failures()
    assert Path(failure.source_uri).name == "c.dcm"
    assert failure.error_type == "SopInstanceConflictError" and "different pixels" in failure.reason
    archive.close()


def test_frame_policies_for_a_multi_frame_object(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(dicom_testfile("emri_small.dcm"), folder / "emri.dcm")  # 10 frames
    one = _open(tmp_path / "one")
    assert ingest_path(one, folder, progress=False, workers=0).indexed == 1
    (row,) = one.catalog.images_by_ids([int(i) for i in one.index.ids()]).values()
    assert row.frame_index == 5 and row.frames == 10
    one.close()

    every = _open(tmp_path / "all")
    assert ingest_path(every, folder, progress=False, workers=1, frames="all").indexed == 10
    rows = every.catalog.images_by_ids([int(i) for i in every.index.ids()]).values()
    assert sorted(r.frame_index for r in rows) == list(range(10))
    assert len({r.thumbnail_path for r in rows}) == 10 and len({r.case_id for r in rows}) == 1
    for r in rows:
        assert (every.settings.thumbnail_dir / str(r.thumbnail_path)).is_file()
    assert ingest_path(every, folder, progress=False, workers=0, frames="all").indexed == 0
    every.close()


def test_hostile_header_text_is_stored_as_text_and_never_becomes_a_path(tmp_path: Path) -> None:
    import pydicom

    folder = tmp_path / "in"
    folder.mkdir()
    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    mode = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds.SOPInstanceUID = "../../x"
        ds.StudyInstanceUID = "../../../etc/passwd"
        ds.StudyDescription = "<script>alert(1)</script>"
        ds.save_as(folder / "evil.dcm")
    finally:
        pydicom.config.settings.writing_validation_mode = mode
    data = tmp_path / "data"
    archive = _open(data)
    assert ingest_path(archive, folder, progress=False, workers=0).indexed == 1
    (row,) = archive.catalog.images_by_ids([int(i) for i in archive.index.ids()]).values()
    assert row.sop_instance_uid == "../../x" and row.study_description == "<script>alert(1)</script>"
    assert row.case.case_key == "study:../../../etc/passwd"
    assert ".." not in str(row.thumbnail_path) and str(row.thumbnail_path).startswith(row.sha256[:2])
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")}
    assert written == {"in", "data"}  # nothing escaped the data folder
    archive.close()


def test_truncation_sweep_never_aborts_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    data = dicom_testfile("MR_small.dcm").read_bytes()
    for cut in range(0, len(data), len(data) // 40):
        (folder / f"cut_{cut:06d}.dcm").write_bytes(data[:cut])
    archive = _open(tmp_path / "data")
    report = ingest_path(archive, folder, progress=False, workers=1)
    assert report.seen == len(list(folder.iterdir()))
    assert report.indexed + report.failed + report.already_indexed == report.seen
    assert report.failed >= 35  # nearly every cut is refused with a recorded reason
    assert {f.error_type for f in archive.catalog.failures(1000)} <= {
        "CorruptImageError",
        "UnsupportedFormatError",
    }
    archive.close()
