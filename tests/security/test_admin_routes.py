"""Admin ingest and rebuild over HTTP, sign-out (a revoked token is refused), and disabled accounts' keys."""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage

from indexer.archive import Archive
from indexer.governance.accounts import create_api_key, create_user, set_disabled
from indexer.governance.audit import audit_records
from search_api.app import create_app
from search_api.settings import ApiSettings
from tests.helpers import dicom_testfile
from tests.security.conftest import PASSWORD, build_secured_archive

MAX_INGEST = 400_000
PHI_NAME = "Quillfeather^Osmund"  # a patient name in a file name: never in a failure reason


@dataclass
class AdminApi:
    """A secured app (TestClient) over its own small archive, with an admin and a radiologist."""

    client: TestClient
    archive: Archive

    def token(self, username: str) -> str:
        response = self.client.post("/token", data={"username": username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def headers(self, username: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(username)}"}


@pytest.fixture(scope="module")
def admin_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    archive, _files = build_secured_archive(tmp_path_factory.mktemp("admin-routes"))
    create_user(archive.catalog, "adm-admin", PASSWORD, "admin")
    create_user(archive.catalog, "adm-radiologist", PASSWORD, "radiologist")
    settings = ApiSettings(max_ingest_bytes=MAX_INGEST, login_attempts_per_minute=1000)
    try:
        with TestClient(create_app(archive=archive, api_settings=settings)) as client:
            yield AdminApi(client, archive)
    finally:
        archive.close()


def _new_dicom(i: int) -> bytes:
    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    arr = np.roll(ds.pixel_array, 37 + 11 * i, axis=0)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.8.{i}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.8.{i}.1"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.8.{i}.1.1"
    ds.PatientID = f"UP-{i}"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _png() -> bytes:
    buffer = io.BytesIO()
    gradient = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (64, 1))
    PILImage.fromarray(gradient).save(buffer, format="PNG")
    return buffer.getvalue()


def _members() -> dict[str, bytes]:
    return {
        "study/a.dcm": _new_dicom(1),
        "study/b.dcm": _new_dicom(2),
        "photo/c.png": _png(),
        f"bad/{PHI_NAME}.dcm": b"DICM is not here" * 20,  # corrupt: counted as failed, with a reason
        "notes.txt": b"just text",  # not an image: neither added nor failed
    }


def _manifest() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
    writer.writerow(["study/a.dcm", "UP-CASE-1", "UP-1", "Uploaded study.", "upload-finding"])
    writer.writerow(["photo/c.png", "UP-CASE-2", "UP-2", "Uploaded photo.", "upload-photo"])
    return out.getvalue().encode()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _audit(api: AdminApi, action: str) -> list[tuple[str | None, str, str | None]]:
    _total, rows = audit_records(api.archive.catalog, action=action, limit=1000)
    return [(r.username, r.outcome, r.object) for r in rows]


def test_admin_ingest_adds_searchable_cases_and_reports_failures_without_names(admin_api: AdminApi) -> None:
    api = admin_api
    admin = api.headers("adm-admin")
    before = len(api.archive.index)
    upload = {"archive": ("upload.zip", _zip(_members())), "manifest": ("m.csv", _manifest())}
    response = api.client.post("/admin/ingest", files=upload, headers=admin)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["seen"], body["added"], body["skipped"], body["failed"], body["not_images"]) == (
        5,
        3,
        0,
        1,
        1,
    )
    assert body["index_size"] == before + 3 == len(api.archive.index)
    [failure] = body["failures"]
    assert failure["member"] == f"bad/{PHI_NAME}.dcm"
    assert failure["error_type"] and failure["reason"] and PHI_NAME not in failure["reason"]
    # Searchable at once, through the same server: an uploaded image finds itself first.
    query = {"file": ("q.dcm", _new_dicom(1))}
    search = api.client.post("/search", files=query, data={"k": "3"}, headers=admin)
    assert search.status_code == 200, search.text
    top = search.json()["hits"][0]
    assert (
        top["similarity"] > 0.999
        and top["case_key"] == "UP-CASE-1"
        and top["diagnosis"] == ["upload-finding"]
    )
    # The manifest named the photo's case and diagnosis.
    labels = api.client.get("/filters", headers=admin).json()["labels"]
    assert {"upload-finding", "upload-photo"} <= {entry["label"] for entry in labels}
    # The same zip again: nothing added, and the kept archive its images are re-read from stays.
    kept = sorted((api.archive.settings.data_dir / "uploaded_archives").rglob("*.zip"))
    assert len(kept) == 1
    same = api.client.post("/admin/ingest", files={"archive": ("same.zip", _zip(_members()))}, headers=admin)
    assert same.status_code == 201 and (same.json()["added"], same.json()["skipped"]) == (0, 3)
    assert kept[0].is_file()
    image_id = top["image_id"]
    assert api.client.get(f"/images/{image_id}/thumbnail", headers=admin).status_code == 200
    rendered = api.client.get(f"/images/{image_id}/render", params={"preset": "lung"}, headers=admin)
    assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")  # re-read from the zip
    # The same images again, as a tar.gz: the same ingest, nothing added twice, nothing kept.
    again = api.client.post(
        "/admin/ingest", files={"archive": ("again.tar.gz", _tar_gz(_members()))}, headers=admin
    )
    assert again.status_code == 201, again.text
    assert (again.json()["added"], again.json()["skipped"]) == (0, 3)
    assert len(api.archive.index) == before + 3
    assert not list((api.archive.settings.data_dir / "uploaded_archives").rglob("*.tar"))
    everything = _audit(api, "ingest")
    # Each ingest is audited twice: its intent ('started') before it runs, its outcome after.
    rows = [row for row in everything if row[1] != "started"]
    assert [(u, o) for u, o, _ in rows[:3]] == [("adm-admin", "success")] * 3
    assert [(u, o) for u, o, _ in everything].count(("adm-admin", "started")) >= 3
    assert rows[2][2] is not None and "added:3" in rows[2][2] and PHI_NAME not in rows[2][2]


def test_admin_ingest_refuses_too_big_non_archives_and_radiologists(admin_api: AdminApi) -> None:
    api = admin_api
    admin = api.headers("adm-admin")
    size = len(api.archive.index)
    too_big = {"archive": ("big.zip", np.random.default_rng(0).bytes(MAX_INGEST + 1))}
    response = api.client.post("/admin/ingest", files=too_big, headers=admin)
    assert response.status_code == 413 and "medcbir index" in response.json()["detail"]
    not_archive = {"archive": ("x.zip", b"plain bytes, not an archive" * 10)}
    assert api.client.post("/admin/ingest", files=not_archive, headers=admin).status_code == 415
    small = {"archive": ("u.zip", _zip({"d.dcm": _new_dicom(9)}))}
    response = api.client.post("/admin/ingest", files=small, headers=api.headers("adm-radiologist"))
    assert response.status_code == 403
    assert api.client.post("/admin/ingest", files=small).status_code == 401
    assert len(api.archive.index) == size
    assert ("adm-radiologist", "denied", None) in _audit(api, "ingest")


def test_admin_rebuild_index_swaps_in_the_kind_asked_for(admin_api: AdminApi) -> None:
    api = admin_api
    admin = api.headers("adm-admin")
    stored = api.archive.catalog.image_ids_where(encoder=api.archive.encoder.name)
    response = api.client.post("/admin/rebuild-index", params={"kind": "hnsw"}, headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == len(stored) and body["kind"] == "hnsw" and body["recall_at_10"] >= 0.95
    assert api.archive.index.kind == "hnsw"
    assert np.array_equal(np.sort(api.archive.index.ids()), np.sort(stored))
    assert api.archive.index_path.exists()
    search = api.client.post(
        "/search", files={"file": ("q.dcm", _new_dicom(2))}, data={"k": "1"}, headers=admin
    )
    assert search.status_code == 200 and search.json()["hits"][0]["similarity"] > 0.999
    flat = api.client.post("/admin/rebuild-index", headers=admin)
    assert flat.status_code == 200 and flat.json()["kind"] == "flat" and flat.json()["recall_at_10"] == 1.0
    assert api.client.post("/admin/rebuild-index", params={"kind": "nope"}, headers=admin).status_code == 422
    rad = api.client.post("/admin/rebuild-index", headers=api.headers("adm-radiologist"))
    assert rad.status_code == 403
    rows = _audit(api, "rebuild_index")
    assert ("adm-admin", "success", f"index:hnsw size:{len(stored)}") in rows
    assert ("adm-radiologist", "denied", None) in rows


def test_logout_revokes_only_the_presented_token(admin_api: AdminApi) -> None:
    api = admin_api
    signed_out = api.headers("adm-radiologist")
    other = api.headers("adm-radiologist")  # another session of the same user
    assert api.client.get("/me", headers=signed_out).status_code == 200
    response = api.client.post("/logout", headers=signed_out)
    assert response.status_code == 200 and response.json()["revoked"] is True
    refused = api.client.get("/me", headers=signed_out)
    assert refused.status_code == 401 and "signed out" in refused.json()["detail"]
    assert api.client.post("/logout", headers=signed_out).status_code == 401
    assert api.client.get("/me", headers=other).status_code == 200
    # A second app over the same catalog and key (another worker) refuses it too: the denylist is in
    # the catalog, not in the first worker's memory.
    with TestClient(create_app(archive=api.archive, api_settings=ApiSettings())) as worker:
        assert worker.get("/me", headers=signed_out).status_code == 401
        assert worker.get("/me", headers=other).status_code == 200
    rows = _audit(api, "logout")
    # the signed-out token's second logout is a denial by an unauthenticated caller
    assert rows[:2] == [(None, "denied", None), ("adm-radiologist", "success", None)]


def test_logout_with_an_api_key_leaves_the_key_to_admins(admin_api: AdminApi) -> None:
    api = admin_api
    create_user(api.archive.catalog, "adm-service", None, "radiologist", service=True)
    key = {"X-API-Key": create_api_key(api.archive.catalog, "adm-service")}
    response = api.client.post("/logout", headers=key)
    assert response.status_code == 200 and response.json()["revoked"] is False
    assert api.client.get("/me", headers=key).status_code == 200


def test_disabling_a_user_refuses_their_tokens_and_api_keys_at_once(admin_api: AdminApi) -> None:
    api = admin_api
    catalog = api.archive.catalog
    create_user(catalog, "adm-soon-disabled", PASSWORD, "radiologist")
    token = api.headers("adm-soon-disabled")
    create_user(catalog, "adm-service-disabled", None, "radiologist", service=True)
    key = {"X-API-Key": create_api_key(catalog, "adm-service-disabled")}
    assert api.client.get("/me", headers=token).status_code == 200
    assert api.client.get("/me", headers=key).status_code == 200
    admin = api.headers("adm-admin")
    for username in ("adm-soon-disabled", "adm-service-disabled"):
        response = api.client.patch(f"/users/{username}", json={"disabled": True}, headers=admin)
        assert response.status_code == 200 and response.json()["disabled"] is True
    assert api.client.get("/me", headers=token).status_code == 401
    assert api.client.get("/me", headers=key).status_code == 401
    set_disabled(catalog, "adm-service-disabled", False)  # enabled again: the same key works again
    assert api.client.get("/me", headers=key).status_code == 200


def test_old_tokens_without_an_id_are_refused(admin_api: AdminApi) -> None:
    import time

    import jwt

    secret = admin_api.client.app.state.jwt_secret  # type: ignore[attr-defined]
    now = int(time.time())
    claims = {
        "sub": "adm-admin",
        "iss": "medcbir",
        "aud": "medcbir-api",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
    }
    token = jwt.encode(claims, secret, algorithm="HS256")
    assert admin_api.client.get("/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    with_id = jwt.encode({**claims, "jti": "abc123"}, secret, algorithm="HS256")
    assert admin_api.client.get("/me", headers={"Authorization": f"Bearer {with_id}"}).status_code == 200
