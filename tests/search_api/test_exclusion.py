"""exclude_patient for uploads without a DICOM PatientID: content match, a sent patient_ref, or a stated refusal."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from imaging import load_image
from imaging.render import to_uint8
from indexer.archive import Archive
from indexer.governance.pseudonym import patient_reference
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from search_api.exclusion import NO_PATIENT_REASON
from search_api.schemas import SearchFilters
from search_api.searcher import Searcher
from tests.helpers import ThumbnailEncoder, dicom_testfile

# (file, patient, case, diagnosis): PAT-1 owns three images, every other patient one.
FILES = [
    ("a1.dcm", "PAT-1", "CASE-1", "nodule"),
    ("a2.dcm", "PAT-1", "CASE-1", "nodule"),
    ("a3.dcm", "PAT-1", "CASE-1B", "nodule"),
    ("b.dcm", "PAT-2", "CASE-2", "normal"),
    ("c.dcm", "PAT-3", "CASE-3", "normal"),
    ("d.dcm", "PAT-4", "CASE-4", "normal"),
    ("e.dcm", "PAT-5", "CASE-5", "normal"),
]
OWN = {"a1.dcm", "a2.dcm", "a3.dcm"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("exclusion")
    for i, (name, patient, _case, _label) in enumerate(FILES):
        ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
        arr = np.roll(ds.pixel_array, 5 * i, axis=0)
        ds.PixelData = np.ascontiguousarray(arr).astype(arr.dtype).tobytes()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.99.{i}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.98.{i}"
        ds.PatientID = patient
        ds.save_as(root / name)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "report", "diagnosis"])
        writer.writerows([(f[0], f[2], f"Report of {f[2]}.", f[3]) for f in FILES])
    opened = Archive.open(
        IndexerSettings(data_dir=tmp_path_factory.mktemp("data")), encoder=ThumbnailEncoder()
    )
    report = ingest_path(opened, root, load_manifest(manifest, ManifestColumns()), progress=False, workers=0)
    assert report.indexed == len(FILES), report
    return opened


@pytest.fixture(scope="module")
def searcher(archive: Archive) -> Searcher:
    return Searcher(archive)


def _encoded(archive: Archive, fmt: str, **options: object) -> bytes:
    """The stored a1.dcm as the engine decoded it, re-encoded as a PNG or JPEG (no DICOM header)."""
    rows = archive.catalog.images_by_ids(list(range(1, len(FILES) + 1)))
    path = next(
        Path(r.source_uri.removeprefix("file://")) for r in rows.values() if r.source_uri.endswith("a1.dcm")
    )
    pixels = to_uint8(load_image(path.read_bytes()).pixels)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _names(hits: list) -> set[str]:  # type: ignore[type-arg]
    return {Path(h.source_uri).name for h in hits}


def test_lossless_png_of_a_stored_image_excludes_its_patient(archive: Archive, searcher: Searcher) -> None:
    png = _encoded(archive, "PNG")
    kept = searcher.search(png, filters=SearchFilters(k=10))
    assert kept.hits[0].similarity > 0.999 and _names(kept.hits) >= OWN  # the copy finds itself...
    assert kept.exclusion.requested is False and kept.exclusion.applied is False
    own = patient_reference(archive.pseudonym_key, "PAT-1")
    assert kept.query.patient_ref == own  # ...and its patient is known from its pixels alone

    response = searcher.search(png, filters=SearchFilters(k=10, exclude_patient=True))
    assert not OWN & _names(response.hits)
    assert all(h.patient_ref != own for h in response.hits) and len(response.hits) == len(FILES) - 3
    assert response.exclusion.applied is True and response.exclusion.sources == ["content_match"]
    assert response.exclusion.excluded_images == 3 and response.exclusion.reason is None


def test_the_same_file_matches_by_its_sha256(archive: Archive, searcher: Searcher) -> None:
    rows = archive.catalog.images_by_ids(list(range(1, len(FILES) + 1)))
    path = next(
        Path(r.source_uri.removeprefix("file://")) for r in rows.values() if r.source_uri.endswith("b.dcm")
    )
    response = searcher.search(path.read_bytes(), filters=SearchFilters(k=10, exclude_patient=True))
    assert "b.dcm" not in _names(response.hits)
    assert set(response.exclusion.sources) == {"dicom_patient_id", "content_match"}


def test_lossy_jpeg_without_patient_ref_says_the_exclusion_was_not_applied(
    archive: Archive, searcher: Searcher
) -> None:
    jpeg = _encoded(archive, "JPEG", quality=70)
    response = searcher.search(jpeg, filters=SearchFilters(k=10, exclude_patient=True))
    assert response.exclusion.requested is True and response.exclusion.applied is False
    assert response.exclusion.reason == NO_PATIENT_REASON and "patient_ref" in NO_PATIENT_REASON
    assert OWN & _names(response.hits)  # nothing was silently dropped or silently kept: it says so
    assert response.query.patient_ref is None


@pytest.mark.parametrize("sent", ["PAT-1", "pseudonym"])
def test_lossy_jpeg_with_patient_ref_excludes_that_patient(
    archive: Archive, searcher: Searcher, sent: str
) -> None:
    own = patient_reference(archive.pseudonym_key, "PAT-1")
    assert own is not None
    jpeg = _encoded(archive, "JPEG", quality=70)
    value = own if sent == "pseudonym" else sent
    response = searcher.search(jpeg, filters=SearchFilters(k=10, exclude_patient=True), patient_ref=value)
    assert not OWN & _names(response.hits) and len(response.hits) == len(FILES) - 3
    assert response.exclusion.applied is True and response.exclusion.sources == ["patient_ref"]
    assert response.query.patient_ref == own


def test_top_similarity_judges_the_filtered_hits_not_the_querys_own_copy(
    archive: Archive, searcher: Searcher
) -> None:
    png = _encoded(archive, "PNG")
    response = searcher.search(png, filters=SearchFilters(k=3, modality="CT", exclude_patient=True))
    assert response.hits and response.exclusion.applied is True
    top = response.prediction.top_similarity
    assert top is not None and top == pytest.approx(response.hits[0].similarity) and top < 0.999
    # a DICOM query (its patient excluded by PatientID) is judged the same way, never by its own copy
    rows = archive.catalog.images_by_ids(list(range(1, len(FILES) + 1)))
    path = next(
        Path(r.source_uri.removeprefix("file://")) for r in rows.values() if r.source_uri.endswith("a1.dcm")
    )
    dicom = searcher.search(
        path.read_bytes(), filters=SearchFilters(k=3, modality="CT", exclude_patient=True)
    )
    assert dicom.prediction.top_similarity == pytest.approx(dicom.hits[0].similarity) and not OWN & _names(
        dicom.hits
    )
    # a similarity floor above every allowed image empties the hits; the best allowed one is still reported
    floor = searcher.search(png, filters=SearchFilters(k=3, exclude_patient=True, min_similarity=0.9999))
    assert floor.hits == [] and floor.prediction.top_similarity == pytest.approx(top)


def test_search_by_image_reports_the_exclusion(archive: Archive, searcher: Searcher) -> None:
    rows = archive.catalog.images_by_ids(list(range(1, len(FILES) + 1)))
    image_id = next(r.id for r in rows.values() if r.source_uri.endswith("a2.dcm"))
    response = searcher.search_by_image(image_id, SearchFilters(k=10, exclude_patient=True))
    assert not OWN & _names(response.hits)
    assert response.exclusion.applied is True and response.exclusion.sources == ["archived_image"]
