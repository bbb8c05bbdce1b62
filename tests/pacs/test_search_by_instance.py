"""POST /search/by-instance against a live Orthanc: search by reference, role-checked, audited, PACS errors mapped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embeddings import ImageEncoder
from indexer.archive import Archive
from indexer.catalog.pacs_rows import PacsConnectionRow
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from indexer.ingest.pacs_sync import sync_pacs
from indexer.storage.dicomweb import StudyFilter
from tests.helpers import dicom_testfile, free_port, serve_app
from tests.pacs.orthanc import OrthancServer
from tests.pacs.test_pacs_sync import connect, open_archive

PASSWORD = "by-instance test password"


@pytest.fixture()
def api(
    orthanc: OrthancServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, str], Archive]]:
    from search_api.app import create_app

    monkeypatch.setenv("MEDCBIR_PACS_TEST_PACS_USERNAME", orthanc.username)
    monkeypatch.setenv("MEDCBIR_PACS_TEST_PACS_PASSWORD", orthanc.password)
    archive = open_archive(tmp_path / "data")
    create_user(archive.catalog, "rad", PASSWORD, "radiologist")
    with serve_app(create_app(archive=archive)) as url:
        token = httpx.post(f"{url}/token", data={"username": "rad", "password": PASSWORD}).json()[
            "access_token"
        ]
        yield url, {"Authorization": f"Bearer {token}"}, archive


def test_search_by_instance_fetches_and_searches_or_uses_the_stored_vector(
    orthanc: OrthancServer, api: tuple[str, dict[str, str], Archive], tmp_path: Path
) -> None:
    url, auth, archive = api
    folder = tmp_path / "disk"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(dicom_testfile("CT_small.dcm").read_bytes())
    assert ingest_path(archive, folder, progress=False, workers=0).indexed == 1  # the twin, from disk
    pacs = connect(orthanc, archive)
    orthanc.upload([dicom_testfile("CT_small.dcm"), dicom_testfile("MR_small.dcm")])
    mr_study = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"
    assert (
        sync_pacs(archive, pacs, StudyFilter(study=mr_study), progress=False, workers=0).ingest.indexed == 1
    )
    archive.save_index()
    ct = {
        "study_instance_uid": "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
        "series_instance_uid": "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322",
        "sop_instance_uid": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
    }

    # not indexed from the PACS: retrieved with WADO-RS, and its twin from disk comes first
    answer = httpx.post(
        f"{url}/search/by-instance", data={"pacs": "test-pacs", "k": 2, **ct}, headers=auth, timeout=60
    )
    assert answer.status_code == 200, answer.text
    top = answer.json()["hits"][0]
    assert top["image_id"] == 1 and top["similarity"] > 0.99  # image 1: the copy indexed from disk

    # indexed from the PACS: its stored vector, itself left out
    mr_row = next(
        r
        for r in archive.catalog.images_by_ids(list(range(1, 10))).values()
        if r.source_uri.startswith("pacs://")
    )
    by_ref = {
        "study_instance_uid": mr_row.study_instance_uid,
        "series_instance_uid": mr_row.series_instance_uid,
        "sop_instance_uid": mr_row.sop_instance_uid,
    }
    answer = httpx.post(
        f"{url}/search/by-instance", data={"pacs": "test-pacs", **by_ref}, headers=auth, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert mr_row.id not in [h["image_id"] for h in answer.json()["hits"]]
    rendered = httpx.get(f"{url}/images/{mr_row.id}/render", headers=auth, timeout=60)  # re-read by WADO-RS
    assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")

    unknown = httpx.post(f"{url}/search/by-instance", data={"pacs": "nope", **ct}, headers=auth)
    assert unknown.status_code == 404 and "pacs list" in unknown.text
    missing = httpx.post(
        f"{url}/search/by-instance",
        data={"pacs": "test-pacs", **{**ct, "sop_instance_uid": "1.2.3"}},
        headers=auth,
    )
    assert missing.status_code == 404
    assert httpx.post(f"{url}/search/by-instance", data={"pacs": "test-pacs", **ct}).status_code == 401

    from indexer.governance.audit import audit_records

    _, events = audit_records(archive.catalog, action="search")
    assert any("pacs:test-pacs sop:" in (e.object or "") for e in events)


def test_a_pacs_that_is_down_answers_502(
    api: tuple[str, dict[str, str], Archive], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, auth, archive = api
    monkeypatch.setenv("MEDCBIR_PACS_RETRIES", "0")
    archive.catalog.add_pacs_connection(
        PacsConnectionRow("down", f"http://127.0.0.1:{free_port()}/dicom-web", "dicomweb", None, True, False)
    )
    answer = httpx.post(
        f"{url}/search/by-instance",
        data={"pacs": "down", "study_instance_uid": "1", "series_instance_uid": "2", "sop_instance_uid": "3"},
        headers=auth,
        timeout=60,
    )
    assert answer.status_code == 502 and "does not answer" in answer.text


@pytest.mark.parametrize("stem", ["MR2", "RG1"])
def test_search_finds_the_twin_across_pacs_and_disk(
    orthanc: OrthancServer, api: tuple[str, dict[str, str], Archive], tmp_path: Path, stem: str
) -> None:
    """The uncompressed original synced from the PACS; its JPEG 2000 copy on disk is the same instance
    (SOP Instance UID, pixels within the digest): `index` skips it, and POST /search with it finds the
    PACS's copy first (pydicom-data's _UNCI and _J2KI files)."""
    url, auth, archive = api
    orthanc.upload([dicom_testfile(f"{stem}_UNCI.dcm")])
    assert sync_pacs(archive, connect(orthanc, archive), progress=False, workers=0).ingest.indexed == 1
    folder = tmp_path / "disk"
    folder.mkdir()
    (folder / "j2k.dcm").write_bytes(dicom_testfile(f"{stem}_J2KI.dcm").read_bytes())
    assert (
        ingest_path(archive, folder, progress=False, workers=0).already_indexed == 1
    )  # dedup across sources
    archive.save_index()
    files = {"file": (f"{stem}_J2KI.dcm", dicom_testfile(f"{stem}_J2KI.dcm").read_bytes())}
    answer = httpx.post(f"{url}/search", files=files, data={"k": "1"}, headers=auth, timeout=120)
    assert answer.status_code == 200, answer.text
    (top,) = answer.json()["hits"]
    assert top["pacs"]["pacs"] == "test-pacs" and top["similarity"] > 0.99


def test_a_box_on_an_instance_searches_its_region_and_bad_boxes_are_4xx(
    orthanc: OrthancServer, api: tuple[str, dict[str, str], Archive], tmp_path: Path
) -> None:
    """`box` on /search/by-instance: the region of the retrieved instance (or of the stored one, read back
    by WADO-RS) is embedded and searched, as on /search; a box outside the image or of 1 pixel is a 422."""
    url, auth, archive = api
    folder = tmp_path / "disk"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(dicom_testfile("CT_small.dcm").read_bytes())
    (folder / "rg.dcm").write_bytes(dicom_testfile("RG1_UNCI.dcm").read_bytes())
    assert ingest_path(archive, folder, progress=False, workers=0).indexed == 2
    pacs = connect(orthanc, archive)
    orthanc.upload([dicom_testfile("CT_small.dcm"), dicom_testfile("MR_small.dcm")])
    mr_study = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"
    assert (
        sync_pacs(archive, pacs, StudyFilter(study=mr_study), progress=False, workers=0).ingest.indexed == 1
    )
    archive.save_index()
    ct = {  # CT_small: 128 x 128, in the PACS, not indexed from it
        "pacs": "test-pacs",
        "study_instance_uid": "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
        "series_instance_uid": "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322",
        "sop_instance_uid": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
    }

    def post(data: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{url}/search/by-instance", data=data, headers=auth, timeout=60)

    whole = post({**ct, "k": "3"})
    region = post({**ct, "k": "3", "box": "16,16,80,80"})
    assert whole.status_code == 200 == region.status_code, region.text
    assert region.json()["query"]["box"] == [16, 16, 80, 80] and whole.json()["query"]["box"] is None
    assert region.json()["query"]["pacs"]["pacs"] == "test-pacs"
    whole_top, region_top = whole.json()["hits"][0], region.json()["hits"][0]
    assert whole_top["image_id"] == 1 and whole_top["similarity"] > 0.99  # the whole image: its twin
    assert region_top["similarity"] < whole_top["similarity"]  # the region is embedded on its own

    mr_row = next(
        r
        for r in archive.catalog.images_by_ids(list(range(1, 10))).values()
        if r.source_uri.startswith("pacs://")
    )
    mr = {
        "pacs": "test-pacs",
        "study_instance_uid": mr_row.study_instance_uid or "",
        "series_instance_uid": mr_row.series_instance_uid or "",
        "sop_instance_uid": mr_row.sop_instance_uid or "",
    }
    stored = post(
        {**mr, "box": "0,0,32,32"}
    )  # indexed from the PACS: cut from it, read back, itself left out
    assert stored.status_code == 200, stored.text
    assert stored.json()["query"]["box"] == [0, 0, 32, 32] and stored.json()["query"]["image_id"] == mr_row.id
    assert mr_row.id not in [h["image_id"] for h in stored.json()["hits"]]

    for box, said in [("0,0,500,500", "outside"), ("10,10,11,11", "at least"), ("1,2,3", "four whole")]:
        for query in (ct, mr):
            refused = post({**query, "box": box})
            assert refused.status_code == 422 and said in refused.text, (box, refused.text)

    from indexer.governance.audit import audit_records

    _, events = audit_records(archive.catalog, action="search")
    assert any("box:" in (e.object or "") and "pacs:test-pacs" in (e.object or "") for e in events)


def test_a_box_with_a_cnn_encoder_is_located_in_neighbours_read_back_from_the_pacs(
    orthanc: OrthancServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_encoder: ImageEncoder
) -> None:
    """The second stage of a region query: each neighbour, itself an instance of the PACS, is read back
    by WADO-RS and says where in it the region matches best (the real encoder's feature maps)."""
    from indexer.settings import IndexerSettings
    from search_api.app import create_app

    monkeypatch.setenv("MEDCBIR_PACS_TEST_PACS_USERNAME", orthanc.username)
    monkeypatch.setenv("MEDCBIR_PACS_TEST_PACS_PASSWORD", orthanc.password)
    archive = Archive.open(IndexerSettings(data_dir=tmp_path / "data"), encoder=real_encoder)
    create_user(archive.catalog, "rad", PASSWORD, "radiologist")
    orthanc.upload([dicom_testfile(name) for name in ("CT_small.dcm", "MR_small.dcm", "MR2_UNCI.dcm")])
    assert sync_pacs(archive, connect(orthanc, archive), progress=False, workers=0).ingest.indexed == 3
    archive.save_index()
    rows = archive.catalog.images_by_ids(list(range(1, 4)))
    ct = next(r for r in rows.values() if r.sop_instance_uid and r.sop_instance_uid.endswith(".12322"))
    with serve_app(create_app(archive=archive)) as url:
        token = httpx.post(f"{url}/token", data={"username": "rad", "password": PASSWORD}).json()
        answer = httpx.post(
            f"{url}/search/by-instance",
            data={
                "pacs": "test-pacs",
                "study_instance_uid": ct.study_instance_uid,
                "series_instance_uid": ct.series_instance_uid,
                "sop_instance_uid": ct.sop_instance_uid,
                "k": "2",
                "box": "32,32,96,96",
            },
            headers={"Authorization": f"Bearer {token['access_token']}"},
            timeout=120,
        )
    archive.close()
    assert answer.status_code == 200, answer.text
    hits = answer.json()["hits"]
    assert len(hits) == 2 and ct.id not in [h["image_id"] for h in hits]
    for hit in hits:
        assert hit["pacs"]["pacs"] == "test-pacs"
        region = hit["region"]
        assert region is not None, hit
        x0, y0, x1, y1 = region["box"]
        assert 0 <= x0 < x1 <= region["columns"] and 0 <= y0 < y1 <= region["rows"]
