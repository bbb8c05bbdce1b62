"""POST /search/series over a live API: the search filters, min_similarity and exclude_patient apply to series."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.uid import generate_uid

from imaging import iter_frames
from indexer.archive import Archive
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from search_api.app import create_app
from search_api.exclusion import NO_PATIENT_REASON
from tests.helpers import ThumbnailEncoder, dicom_testfile, serve_app
from tests.pacs.conftest import orthanc, orthanc_server  # noqa: F401 - the live Orthanc fixtures
from tests.pacs.orthanc import OrthancServer
from tests.pacs.test_pacs_sync import connect

PASSWORD = "a long series filter password 5"
MR, US = "emri_small.dcm", "examples_ybr_color.dcm"
MR_PATIENT = "SERIES-FILTER-MR-1"  # written into the stored MR copy; the US file's own PatientID is 204


@dataclass
class SeriesApi:
    url: str
    archive: Archive
    headers: dict[str, str]


def _mr(patient_id: str = MR_PATIENT, scratch: bool = False) -> bytes:
    """The MR multi-frame file with this PatientID; `scratch` marks every frame (other bytes, other pixels)."""
    dataset = pydicom.dcmread(dicom_testfile(MR))
    dataset.PatientID = patient_id
    if scratch:
        pixels = dataset.pixel_array.copy()
        pixels[:, :8, :8] = pixels.max()
        dataset.PixelData = pixels.tobytes()
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeriesApi]:
    root = tmp_path_factory.mktemp("series_filters")
    source = root / "source"
    source.mkdir()
    (source / MR).write_bytes(_mr())
    (source / US).write_bytes(dicom_testfile(US).read_bytes())
    manifest = root / "manifest.csv"
    manifest.write_text(f"filename,diagnosis\n{MR},tumour\n{US},normal\n")
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=ThumbnailEncoder())
    columns = ManifestColumns(diagnosis="diagnosis")
    report = ingest_path(
        archive, source, load_manifest(manifest, columns), progress=False, workers=0, frames="all"
    )
    assert report.indexed == 40, report  # 10 MR frames, 30 ultrasound frames
    create_user(archive.catalog, "sam", PASSWORD, "radiologist")
    try:
        with serve_app(create_app(archive=archive)) as url:
            token = httpx.post(f"{url}/token", data={"username": "sam", "password": PASSWORD}).json()
            yield SeriesApi(url, archive, {"Authorization": f"Bearer {token['access_token']}"})
    finally:
        archive.close()


def _post(api: SeriesApi, files: list[tuple[str, bytes]], **form: str) -> httpx.Response:
    return httpx.post(
        f"{api.url}/search/series",
        files=[("files", f) for f in files],
        data=form,
        headers=api.headers,
        timeout=120,
    )


def _search(api: SeriesApi, files: list[tuple[str, bytes]], **form: str) -> dict[str, Any]:
    response = _post(api, files, **form)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _diagnoses(body: dict[str, Any]) -> list[list[str]]:
    return [hit["diagnosis"] for hit in body["hits"]]


def _pngs(data: bytes) -> list[tuple[str, bytes]]:
    """Each frame of a DICOM file as an 8-bit PNG (no header: no PatientID)."""
    out = []
    for i, frame in enumerate(iter_frames(data)):
        buffer = io.BytesIO()
        PILImage.fromarray(np.rint(frame.pixels[..., 0] * 255).astype(np.uint8)).save(buffer, format="PNG")
        out.append((f"slice{i}.png", buffer.getvalue()))
    return out


def test_without_filters_the_mr_series_is_first_and_both_series_come_back(api: SeriesApi) -> None:
    body = _search(api, [("mr.dcm", _mr())], k="2")
    assert _diagnoses(body) == [["tumour"], ["normal"]]
    assert body["filters"]["modality"] is None and body["candidates"] is None
    assert body["exclusion"] == {
        "requested": False,
        "applied": False,
        "sources": [],
        "excluded_images": 0,
        "reason": None,
    }


def test_a_modality_filter_that_excludes_the_matching_series_removes_it(api: SeriesApi) -> None:
    unfiltered = _search(api, [("mr.dcm", _mr())], k="2")
    body = _search(api, [("mr.dcm", _mr())], k="2", modality="us")
    assert _diagnoses(body) == [["normal"]]  # the MR series is gone; the US series is all that is left
    assert body["filters"]["modality"] == "us" and body["candidates"] == 1
    assert all(api.archive.catalog.image(p["image_id"]).modality == "US" for p in body["hits"][0]["pairs"])  # type: ignore[union-attr]
    # the OOD check judges what the filter let through: the US hit, not the MR series filtered out
    assert body["prediction"]["top_similarity"] == pytest.approx(body["hits"][0]["score"])
    assert body["prediction"]["top_similarity"] < unfiltered["prediction"]["top_similarity"]
    assert body["prediction"]["label"] == "normal"


def test_label_and_body_part_filters_restrict_the_series(api: SeriesApi) -> None:
    assert _diagnoses(_search(api, [("mr.dcm", _mr())], k="2", label="NORMAL")) == [["normal"]]
    assert _diagnoses(_search(api, [("mr.dcm", _mr())], k="2", body_part="head")) == [["tumour"]]
    none_left = _search(api, [("mr.dcm", _mr())], k="2", body_part="knee")
    assert none_left["hits"] == [] and none_left["candidates"] == 0
    assert none_left["prediction"]["top_similarity"] is None and none_left["prediction"]["label"] is None


def test_exclude_patient_drops_the_query_patients_series_from_its_dicom_patient_id(api: SeriesApi) -> None:
    query = [("mr.dcm", _mr(scratch=True))]  # not a stored copy: only the header names the patient
    kept = _search(api, query, k="2")
    assert _diagnoses(kept)[0] == ["tumour"]
    body = _search(api, query, k="2", exclude_patient="true")
    assert _diagnoses(body) == [["normal"]]
    assert body["exclusion"] == {
        "requested": True,
        "applied": True,
        "sources": ["dicom_patient_id"],
        "excluded_images": 10,
        "reason": None,
    }
    assert body["prediction"]["top_similarity"] == pytest.approx(body["hits"][0]["score"])
    # another patient's header leaves the MR series in
    other = _search(api, [("mr.dcm", _mr("SOMEONE-ELSE", scratch=True))], k="2", exclude_patient="true")
    assert _diagnoses(other)[0] == ["tumour"] and other["exclusion"]["applied"] is True


def test_exclude_patient_recognises_a_stored_copy_of_the_series(api: SeriesApi) -> None:
    body = _search(api, [("mr.dcm", _mr(""))], k="2", exclude_patient="true")  # no PatientID, same pixels
    assert _diagnoses(body) == [["normal"]]
    assert body["exclusion"]["sources"] == ["content_match"] and body["exclusion"]["excluded_images"] == 10


def test_exclude_patient_takes_an_explicit_patient_ref_for_slices_without_headers(api: SeriesApi) -> None:
    pngs = _pngs(_mr(scratch=True))
    unknown = _search(api, pngs, k="2", exclude_patient="true")
    assert _diagnoses(unknown)[0] == ["tumour"]
    assert unknown["exclusion"] == {
        "requested": True,
        "applied": False,
        "sources": [],
        "excluded_images": 0,
        "reason": NO_PATIENT_REASON,
    }
    body = _search(api, pngs, k="2", exclude_patient="true", patient_ref=MR_PATIENT)
    assert _diagnoses(body) == [["normal"]]
    assert body["exclusion"]["sources"] == ["patient_ref"] and body["exclusion"]["applied"] is True


def test_min_similarity_drops_weak_series_and_the_top_similarity_stays_the_best(api: SeriesApi) -> None:
    both = _search(api, [("mr.dcm", _mr())], k="2")
    best, weaker = (hit["score"] for hit in both["hits"])
    assert best > weaker
    body = _search(api, [("mr.dcm", _mr())], k="2", min_similarity=str((best + weaker) / 2))
    assert _diagnoses(body) == [["tumour"]]
    assert body["filters"]["min_similarity"] == pytest.approx((best + weaker) / 2)
    assert body["prediction"]["top_similarity"] == pytest.approx(body["hits"][0]["score"]) == best
    assert body["prediction"]["labeled_neighbours"] == 1


def test_group_by_study_is_refused_and_k_is_capped_by_the_search_limit(api: SeriesApi) -> None:
    study = _post(api, [("mr.dcm", _mr())], group_by="study")
    assert study.status_code == 422 and "group_by=study" in study.json()["detail"]
    assert _post(api, [("mr.dcm", _mr())], group_by="series").status_code == 200
    assert _post(api, [("mr.dcm", _mr())], k="101").status_code == 422


@pytest.mark.pacs
def test_a_pacs_series_query_goes_through_the_filters_and_the_exclusion(
    api: SeriesApi,
    orthanc: OrthancServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDCBIR_PACS_TEST_PACS_USERNAME", orthanc.username)
    monkeypatch.setenv("MEDCBIR_PACS_TEST_PACS_PASSWORD", orthanc.password)
    connect(orthanc, api.archive)
    whole = pydicom.dcmread(io.BytesIO(_mr()))
    size = whole.Rows * whole.Columns * whole.BitsAllocated // 8
    paths = []
    for i in range(int(whole.NumberOfFrames)):  # the stored MR object as a PACS series of single frames
        part = pydicom.dcmread(io.BytesIO(_mr()))
        part.NumberOfFrames = 1
        part.PixelData = whole.PixelData[i * size : (i + 1) * size]
        part.SOPInstanceUID = part.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(tmp_path / f"s{i}.dcm")
        part.save_as(paths[-1], enforce_file_format=True)
    assert len(orthanc.upload(paths)) == 10
    ref = {
        "pacs": "test-pacs",
        "study_instance_uid": str(whole.StudyInstanceUID),
        "series_instance_uid": str(whole.SeriesInstanceUID),
        "k": "2",
    }

    def by_pacs(**form: str) -> dict[str, Any]:
        response = httpx.post(
            f"{api.url}/search/series/by-pacs", data={**ref, **form}, headers=api.headers, timeout=120
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    assert _diagnoses(by_pacs())[0] == ["tumour"]
    assert _diagnoses(by_pacs(modality="US")) == [["normal"]]
    excluded = by_pacs(exclude_patient="true")
    assert _diagnoses(excluded) == [["normal"]]
    assert excluded["exclusion"]["applied"] is True and "dicom_patient_id" in excluded["exclusion"]["sources"]
    assert excluded["prediction"]["top_similarity"] == pytest.approx(excluded["hits"][0]["score"])
