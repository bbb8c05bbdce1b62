"""Similar cases written back into a live Orthanc as a KOS: only with the flag, read back, valid, right references."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest

from indexer.archive import Archive
from indexer.catalog.pacs_rows import PacsConnectionRow
from indexer.governance.accounts import create_user
from indexer.ingest.pacs_sync import sync_pacs
from tests.dicom_validation import validate_dicom
from tests.helpers import dicom_testfile, serve_app
from tests.pacs.orthanc import OrthancServer
from tests.pacs.test_pacs_sync import connect, open_archive

PASSWORD = "write-back test password"
CT = {
    "study_instance_uid": "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
    "series_instance_uid": "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322",
    "sop_instance_uid": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
}
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture()
def api(
    orthanc: OrthancServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, str], Archive]]:
    from search_api.app import create_app

    monkeypatch.setenv("MEDCBIR_PACS_TEST_PACS_USERNAME", orthanc.username)
    monkeypatch.setenv("MEDCBIR_PACS_TEST_PACS_PASSWORD", orthanc.password)
    archive = open_archive(tmp_path / "data")
    create_user(archive.catalog, "rad", PASSWORD, "radiologist")
    orthanc.upload([dicom_testfile(name) for name in ("CT_small.dcm", "MR_small.dcm", "MR2_UNCI.dcm")])
    assert sync_pacs(archive, connect(orthanc, archive), progress=False, workers=0).ingest.indexed == 3
    archive.save_index()
    with serve_app(create_app(archive=archive)) as url:
        token = httpx.post(f"{url}/token", data={"username": "rad", "password": PASSWORD}).json()[
            "access_token"
        ]
        yield url, {"Authorization": f"Bearer {token}"}, archive


def kos_in_study(orthanc: OrthancServer) -> list[dict[str, object]]:
    with orthanc.client() as client:
        return client.get(
            f"/dicom-web/studies/{CT['study_instance_uid']}/instances",
            params={"SOPClassUID": KOS_CLASS},
            headers={"Accept": "application/dicom+json"},
        ).json()


def test_never_written_without_the_flag(
    orthanc: OrthancServer, api: tuple[str, dict[str, str], Archive]
) -> None:
    url, auth, _ = api
    answer = httpx.post(
        f"{url}/search/by-instance",
        data={"pacs": "test-pacs", "write_back": "true", **CT},
        headers=auth,
        timeout=60,
    )
    assert answer.status_code == 409 and "--write-back" in answer.text
    plain = httpx.post(
        f"{url}/search/by-instance", data={"pacs": "test-pacs", **CT}, headers=auth, timeout=60
    )
    assert plain.status_code == 200 and "X-Medcbir-Written-Back" not in plain.headers
    assert kos_in_study(orthanc) == []


def test_kos_written_back_is_read_back_valid_and_references_the_cases(
    orthanc: OrthancServer, api: tuple[str, dict[str, str], Archive], tmp_path: Path
) -> None:
    url, auth, archive = api
    archive.catalog.add_pacs_connection(
        PacsConnectionRow("test-pacs", orthanc.dicomweb_url, "orthanc", None, True, True), replace=True
    )
    answer = httpx.post(
        f"{url}/search/by-instance",
        data={"pacs": "test-pacs", "write_back": "true", "k": "2", **CT},
        headers=auth,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    written = answer.headers["X-Medcbir-Written-Back"]
    hits = answer.json()["hits"]

    (found,) = kos_in_study(orthanc)
    assert found["00080018"]["Value"] == [written]  # type: ignore[index]
    from indexer.storage.dicomweb import PacsInstance

    series = found["0020000E"]["Value"][0]  # type: ignore[index]
    data = connect(orthanc, archive).retrieve(PacsInstance(CT["study_instance_uid"], series, written))
    kos_path = tmp_path / "kos.dcm"
    kos_path.write_bytes(data)
    kos = pydicom.dcmread(BytesIO(data))
    assert kos.SOPClassUID == KOS_CLASS and kos.StudyInstanceUID == CT["study_instance_uid"]

    referenced = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in kos.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    }
    images = archive.catalog.images_by_ids([h["image_id"] for h in hits])
    neighbours = [images[h["image_id"]] for h in hits]
    studies = {row.study_instance_uid for row in neighbours}
    assert len(studies) == 2 and CT["study_instance_uid"] not in studies  # two other studies
    # every neighbour is referenced, whatever its study, beside the query
    assert referenced == {CT["sop_instance_uid"]} | {row.sop_instance_uid for row in neighbours}
    evidence = {
        (
            study.StudyInstanceUID,
            series.SeriesInstanceUID,
            sop.ReferencedSOPInstanceUID,
            sop.ReferencedSOPClassUID,
        )
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == {
        (row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid, row.sop_class_uid)
        for row in neighbours
    } | {
        (
            CT["study_instance_uid"],
            CT["series_instance_uid"],
            CT["sop_instance_uid"],
            "1.2.840.10008.5.1.4.1.1.2",
        )
    }
    assert "IdenticalDocumentsSequence" not in kos  # stored in the query's study only
    text = next(item.TextValue for item in kos.ContentSequence if item.ValueType == "TEXT")
    lines = text.splitlines()[1:]
    assert len(lines) == len(hits) == 2 and lines[0].startswith("1. similarity ")
    for line, hit in zip(lines, hits, strict=True):
        assert f"instance {images[hit['image_id']].sop_instance_uid}]" in line

    import highdicom as hd

    read_back = hd.ko.KeyObjectSelectionDocument.from_dataset(kos)  # highdicom reads it back
    for row in neighbours:
        assert read_back.resolve_reference(row.sop_instance_uid or "") == (
            row.study_instance_uid,
            row.series_instance_uid,
            row.sop_instance_uid,
        )
    report = validate_dicom(kos_path)
    assert not report.errors, report.raw_errors


def test_only_instances_of_the_same_pacs_are_referenced(tmp_path: Path) -> None:
    """A neighbour indexed from disk or from another PACS cannot be opened from this PACS: text only."""
    from indexer.storage.pacs_writeback import SimilarCase, similar_cases_kos

    query = pydicom.dcmread(dicom_testfile("CT_small.dcm"), stop_before_pixels=True)
    here, disk, elsewhere = (
        pydicom.dcmread(dicom_testfile(name), stop_before_pixels=True)
        for name in ("MR_small.dcm", "MR2_UNCI.dcm", "RG1_UNCI.dcm")
    )

    def case(rank: int, ds: pydicom.Dataset, pacs: str | None) -> SimilarCase:
        return SimilarCase(
            rank,
            0.9,
            ["x"],
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            ds.SOPClassUID,
            pacs,
        )

    cases = [case(1, here, "main"), case(2, disk, None), case(3, elsewhere, "other"), case(4, query, "main")]
    kos = similar_cases_kos(query, cases, "main")
    referenced = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in kos.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    }
    assert referenced == {query.SOPInstanceUID, here.SOPInstanceUID}  # the query once, though a hit too
    text = next(item.TextValue for item in kos.ContentSequence if item.ValueType == "TEXT")
    assert len(text.splitlines()) == 1 + len(cases)  # every case in the text
    path = tmp_path / "kos.dcm"
    kos.save_as(path)
    report = validate_dicom(path)
    assert not report.errors, report.raw_errors
