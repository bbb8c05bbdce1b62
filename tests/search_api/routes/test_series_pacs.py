"""POST /search/series/by-pacs against a live Orthanc: a PACS series reference as the query, and its 4xx."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from indexer.archive import Archive
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from search_api import series as series_module
from tests.helpers import dicom_testfile, serve_app
from tests.pacs.conftest import orthanc, orthanc_server  # noqa: F401 - the live Orthanc fixtures
from tests.pacs.orthanc import OrthancServer
from tests.pacs.test_pacs_sync import connect, open_archive
from tests.search_api.routes.test_series_vote_and_forms import MR, US, _mr_slices

pytestmark = pytest.mark.pacs
PASSWORD = "series by pacs password 8"
MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"


@pytest.fixture()
def api(
    orthanc: OrthancServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, dict[str, str], Archive, dict[str, str]]]:
    from search_api.app import create_app

    monkeypatch.setenv("MEDCBIR_PACS_TEST_PACS_USERNAME", orthanc.username)
    monkeypatch.setenv("MEDCBIR_PACS_TEST_PACS_PASSWORD", orthanc.password)
    source = tmp_path / "source"
    source.mkdir()
    for name in (MR, US):
        (source / name).write_bytes(dicom_testfile(name).read_bytes())
    archive = open_archive(tmp_path / "data")
    assert ingest_path(archive, source, progress=False, workers=0, frames="all").indexed == 40
    connect(orthanc, archive)
    slices = tmp_path / "pacs"
    slices.mkdir()
    paths, frames = [], {}
    for i, data in enumerate(_mr_slices()):
        paths.append(slices / f"s{i}.dcm")
        paths[-1].write_bytes(data)
        frames[f"pacs:{pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID}"] = str(i)
    assert len(orthanc.upload(paths)) == 10  # the MR object as a series of 10 single-frame instances
    header = pydicom.dcmread(dicom_testfile(MR), stop_before_pixels=True)
    ref = {
        "study_instance_uid": str(header.StudyInstanceUID),
        "series_instance_uid": str(header.SeriesInstanceUID),
    }
    ref.update(frames)  # SOP Instance UID -> the frame it was cut from (taken out again by the tests)
    create_user(archive.catalog, "pia", PASSWORD, "radiologist")
    with serve_app(create_app(archive=archive)) as url:
        token = httpx.post(f"{url}/token", data={"username": "pia", "password": PASSWORD}).json()[
            "access_token"
        ]
        yield url, {"Authorization": f"Bearer {token}"}, archive, ref


def _post(url: str, auth: dict[str, str], **form: object) -> httpx.Response:
    return httpx.post(f"{url}/search/series/by-pacs", data=form, headers=auth, timeout=120)


def test_a_pacs_series_finds_its_stored_series_with_the_right_pairs(
    api: tuple[str, dict[str, str], Archive, dict[str, str]],
) -> None:
    url, auth, archive, ref = api
    ref_frames = {k: int(v) for k, v in ref.items() if k.startswith("pacs:")}
    ref = {k: v for k, v in ref.items() if not k.startswith("pacs:")}
    response = _post(url, auth, pacs="test-pacs", k=2, pairs=10, **ref)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query_slices"] == 10 and body["modality"] == "MR"
    top = body["hits"][0]
    assert top["slices"] == 10 and top["score"] > body["hits"][1]["score"]
    names = {p["query_slice"]: p["name"] for p in body["query_previews"]}
    assert len(top["pairs"]) == 10
    for pair in top["pairs"]:  # each instance with the frame it was cut from
        row = archive.catalog.image(pair["image_id"])
        assert row is not None and pair["similarity"] > 0.99
        assert row.frame_index == ref_frames[names[pair["query_slice"]]]


def test_pacs_series_errors_say_what_to_do(
    api: tuple[str, dict[str, str], Archive, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, auth, _, ref = api
    ref = {k: v for k, v in ref.items() if not k.startswith("pacs:")}
    unknown_pacs = _post(url, auth, pacs="nowhere", **ref)
    assert unknown_pacs.status_code == 404 and "nowhere" in unknown_pacs.json()["detail"]
    missing = _post(
        url, auth, pacs="test-pacs", study_instance_uid=ref["study_instance_uid"], series_instance_uid="1.2.3"
    )
    assert missing.status_code == 404 and "no instance of series 1.2.3" in missing.json()["detail"]
    assert (
        _post(url, auth, pacs="test-pacs", study_instance_uid="1;DROP", series_instance_uid="1").status_code
        == 422
    )
    monkeypatch.setattr(series_module, "MAX_SLICES", 5)
    many = _post(url, auth, pacs="test-pacs", **ref)
    assert many.status_code == 422 and "holds 10 instances: more than 5 slices" in many.json()["detail"]
