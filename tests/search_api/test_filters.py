"""Searcher filters inside the FAISS search, grouping, own-patient exclusion, archived-image queries, cases."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from indexer.archive import Archive
from indexer.governance.pseudonym import patient_reference
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from search_api.schemas import SearchFilters
from search_api.searcher import NotFoundError, Searcher
from tests.helpers import ThumbnailEncoder, dicom_testfile

# (file, study, series, patient, body part, case, diagnosis); pixels differ by a roll so vectors differ.
FILES = [
    ("s1_a.dcm", "1.2.3.1", "1.2.3.1.1", "PAT-1", "CHEST", "CASE-S1", "nodule"),
    ("s1_b.dcm", "1.2.3.1", "1.2.3.1.1", "PAT-1", "CHEST", "CASE-S1", "nodule"),
    ("s1_c.dcm", "1.2.3.1", "1.2.3.1.2", "PAT-1", "CHEST", "CASE-S1", "nodule"),
    ("s2.dcm", "1.2.3.2", "1.2.3.2.1", "PAT-2", "CHEST", "CASE-S2", "normal"),
    ("s3.dcm", "1.2.3.3", "1.2.3.3.1", "PAT-3", "CHEST", "CASE-S3", "normal"),
    ("s4.dcm", "1.2.3.4", "1.2.3.4.1", "PAT-4", "CHEST", "CASE-S4", "Rare-Label"),
    ("s5.dcm", "1.2.3.5", "1.2.3.5.1", "PAT-5", "CHEST", "CASE-S5", "normal"),
    ("s6.dcm", "1.2.3.6", "1.2.3.6.1", "PAT-6", "CHEST", "CASE-S6", "normal"),
    ("knee.dcm", "1.2.3.7", "1.2.3.7.1", "PAT-7", "KNEE", "CASE-S7", "normal"),
]
STUDIES = len({f[1] for f in FILES})


def _write_variants(root: Path) -> None:
    for i, (name, study, series, patient, body_part, _case, _label) in enumerate(FILES):
        ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
        arr = ds.pixel_array
        arr = np.flipud(arr.T) if body_part == "KNEE" else np.roll(arr, 6 * i, axis=0)
        ds.PixelData = np.ascontiguousarray(arr).astype(arr.dtype).tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = f"{series}.{i}"
        ds.PatientID, ds.BodyPartExamined = patient, body_part
        ds.save_as(root / name)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("filters")
    _write_variants(root)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "report", "diagnosis"])  # no patient column: DICOM ids
        writer.writerows([(f[0], f[5], f"Report of {f[5]}.", f[6]) for f in FILES])
    opened = Archive.open(
        IndexerSettings(data_dir=tmp_path_factory.mktemp("data")), encoder=ThumbnailEncoder()
    )
    report = ingest_path(opened, root, load_manifest(manifest, ManifestColumns()), progress=False, workers=0)
    assert report.indexed == len(FILES), report
    return opened


@pytest.fixture(scope="module")
def searcher(archive: Archive) -> Searcher:
    return Searcher(archive)


@pytest.fixture(scope="module")
def query(archive: Archive) -> bytes:
    root = Path(archive.catalog.images_by_ids([1])[1].source_uri.removeprefix("file://")).parent
    return (root / "s1_a.dcm").read_bytes()


def _names(hits: list) -> list[str]:  # type: ignore[type-arg]
    return [Path(h.source_uri).name for h in hits]


def test_unfiltered_search_finds_the_query_first(searcher: Searcher, query: bytes) -> None:
    response = searcher.search(query, k=5)
    assert _names(response.hits)[0] == "s1_a.dcm" and response.hits[0].similarity > 0.999
    assert len(response.hits) == 5 and response.candidates is None
    assert response.hits[0].study_instance_uid == "1.2.3.1"
    assert response.hits[0].series_instance_uid == "1.2.3.1.1"


def test_rare_body_part_filter_is_applied_inside_the_index(searcher: Searcher, query: bytes) -> None:
    unfiltered = _names(searcher.search(query, k=3).hits)
    assert "knee.dcm" not in unfiltered  # the only KNEE image is far from the query...
    response = searcher.search(query, filters=SearchFilters(k=1, body_part="knee"))
    assert _names(response.hits) == ["knee.dcm"]  # ...and still found with k=1: not a top-k post-filter
    assert response.candidates == 1 and response.filters.body_part == "knee"
    assert searcher.search(query, filters=SearchFilters(k=10, body_part="KNEE")).hits[0].body_part == "KNEE"


def test_rare_label_filter_matches_one_case_case_insensitively(searcher: Searcher, query: bytes) -> None:
    response = searcher.search(query, filters=SearchFilters(k=10, label="rare-label"))
    assert _names(response.hits) == ["s4.dcm"] and response.candidates == 1
    assert response.prediction.label == "Rare-Label" and response.prediction.confidence == 1.0


def test_filters_combine_and_can_match_nothing(searcher: Searcher, query: bytes) -> None:
    response = searcher.search(query, filters=SearchFilters(k=5, modality="MR", body_part="CHEST"))
    assert response.hits == [] and response.candidates == 0 and response.prediction.label is None
    both = searcher.search(query, filters=SearchFilters(k=10, modality="ct", label="nodule"))
    assert sorted(_names(both.hits)) == ["s1_a.dcm", "s1_b.dcm", "s1_c.dcm"]


def test_group_by_study_keeps_the_best_hit_per_study(searcher: Searcher, query: bytes) -> None:
    response = searcher.search(query, filters=SearchFilters(k=50, group_by="study"))
    studies = [h.study_instance_uid for h in response.hits]
    assert len(studies) == len(set(studies)) == STUDIES
    assert _names(response.hits)[0] == "s1_a.dcm"  # the study's best image represents it
    assert [h.rank for h in response.hits] == list(range(1, STUDIES + 1))
    assert len(searcher.search(query, filters=SearchFilters(k=2, group_by="study")).hits) == 2


def test_group_by_series_keeps_one_hit_per_series(searcher: Searcher, query: bytes) -> None:
    response = searcher.search(query, filters=SearchFilters(k=50, group_by="series"))
    names = _names(response.hits)
    assert len(names) == len(FILES) - 1  # s1_a and s1_b share a series
    assert "s1_a.dcm" in names and "s1_b.dcm" not in names and "s1_c.dcm" in names


def test_exclude_patient_drops_the_query_patients_images(
    archive: Archive, searcher: Searcher, query: bytes
) -> None:
    response = searcher.search(query, filters=SearchFilters(k=50, exclude_patient=True))
    own = patient_reference(archive.pseudonym_key, "PAT-1")
    assert response.query.patient_ref == own
    assert not {"s1_a.dcm", "s1_b.dcm", "s1_c.dcm"} & set(_names(response.hits))
    assert len(response.hits) == len(FILES) - 3 == response.candidates
    assert all(h.patient_ref != own for h in response.hits)
    kept = searcher.search(query, filters=SearchFilters(k=50))
    assert sum(h.patient_ref == own for h in kept.hits) == 3


def test_min_similarity_cuts_the_tail(searcher: Searcher, query: bytes) -> None:
    everything = searcher.search(query, k=50).hits
    threshold = everything[2].similarity
    response = searcher.search(query, filters=SearchFilters(k=50, min_similarity=threshold))
    assert len(response.hits) >= 3 and all(h.similarity >= threshold for h in response.hits)
    assert len(response.hits) < len(everything)


def test_search_by_image_uses_the_stored_vector_and_leaves_the_image_out(
    archive: Archive, searcher: Searcher, query: bytes
) -> None:
    image_id = next(
        i for i, row in archive.catalog.images_by_ids(range(1, 20)).items() if "s1_a" in row.source_uri
    )
    response = searcher.search_by_image(image_id, SearchFilters(k=3))
    assert image_id not in [h.image_id for h in response.hits] and len(response.hits) == 3
    assert response.query.image_id == image_id and response.query.modality == "CT"
    by_upload = searcher.search(query, k=4).hits[1:]
    assert [h.image_id for h in response.hits] == [h.image_id for h in by_upload]
    grouped = searcher.search_by_image(image_id, SearchFilters(k=50, exclude_patient=True))
    assert not {"s1_b.dcm", "s1_c.dcm"} & set(_names(grouped.hits))
    with pytest.raises(NotFoundError):
        searcher.search_by_image(99999)


def test_cases_are_paged_with_a_representative_image(searcher: Searcher) -> None:
    first = searcher.cases(limit=2, offset=0)
    assert first.total == STUDIES and len(first.cases) == 2
    rest = searcher.cases(limit=50, offset=2)
    assert len(rest.cases) == STUDIES - 2
    assert {c.case_id for c in first.cases}.isdisjoint(c.case_id for c in rest.cases)
    s1 = next(c for c in first.cases + rest.cases if c.case_key == "CASE-S1")
    assert len(s1.image_ids) == 3 and s1.thumbnail_url == f"/images/{s1.image_ids[0]}/thumbnail"
    assert s1.modalities == ["CT"] and s1.body_parts == ["CHEST"] and s1.diagnosis == ["nodule"]
    assert s1.report_excerpt == "Report of CASE-S1."


def test_filter_options_list_what_the_archive_holds(searcher: Searcher) -> None:
    options = searcher.filter_options()
    assert options.modalities == ["CT"] and options.body_parts == ["CHEST", "KNEE"]
    assert {lc.label: lc.cases for lc in options.labels} == {"normal": 5, "nodule": 1, "Rare-Label": 1}
    assert options.window_presets["lung"] == (-600.0, 1500.0)
