"""Audit rows (exactly one per action, denials included, append-only) and case management over HTTP."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pydicom
import pytest
from sqlalchemy import select, text, update

from indexer.catalog import AuditEvent
from indexer.governance.audit import audit_records
from tests.helpers import dicom_testfile
from tests.security.conftest import PASSWORD, USERS, SecuredApi


def _rows(api: SecuredApi, request_id: str) -> list[AuditEvent]:
    with api.archive.catalog.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.request_id == request_id)))


def _rid() -> str:
    return uuid.uuid4().hex


def test_exactly_one_audit_row_per_action_denials_included(secured_api: SecuredApi) -> None:
    api = secured_api
    rad, admin = api.headers("radiologist"), api.headers("admin")
    query = {"file": ("q.dcm", api.files[0].read_bytes())}
    # (method, path, request kwargs, headers) -> (action, outcome, user, role, object prefix)
    actions = [
        ("POST", "/search", {"files": query, "data": {"k": "3"}}, rad, ("search", "success", "radiologist")),
        ("GET", "/cases/1", {}, rad, ("view_case", "success", "radiologist")),
        ("GET", "/images/1/thumbnail", {}, rad, ("thumbnail", "success", "radiologist")),
        ("GET", "/cases/1", {}, {}, ("view_case", "denied", None)),
        ("DELETE", "/cases/1", {}, rad, ("delete_case", "denied", "radiologist")),
        ("GET", "/audit", {}, rad, ("read_audit", "denied", "radiologist")),
        ("GET", "/cases/999999", {}, rad, ("view_case", "rejected", "radiologist")),
        (
            "POST",
            "/token",
            {"data": {"username": USERS["radiologist"], "password": "wrong password"}},
            {},
            ("login", "denied", None),
        ),
        (
            "POST",
            "/token",
            {"data": {"username": USERS["admin"], "password": PASSWORD}},
            {},
            ("login", "success", "admin"),
        ),
        ("GET", "/audit", {}, admin, ("read_audit", "success", "admin")),
    ]
    before = datetime.now(UTC) - timedelta(seconds=5)
    for method, path, kwargs, headers, (action, outcome, role) in actions:
        request_id = _rid()
        response = httpx.request(
            method, f"{api.url}{path}", headers={**headers, "X-Request-ID": request_id}, timeout=60, **kwargs
        )
        assert response.headers["x-request-id"] == request_id
        rows = _rows(api, request_id)
        assert len(rows) == 1, (method, path, rows)
        row = rows[0]
        assert (row.action, row.outcome, row.role) == (action, outcome, role), (method, path)
        assert row.status == response.status_code
        assert row.client == "127.0.0.1"
        at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
        assert before <= at <= datetime.now(UTC) + timedelta(seconds=5)
        if role is not None:
            assert row.username == USERS[role]
        if path.startswith("/cases/"):
            assert row.object == f"case:{path.split('/')[2]}"
        if path == "/search":  # who looked at which patient: the cases the search showed
            shown = sorted(str(h["case_id"]) for h in response.json()["hits"])
            assert row.object is not None and sorted(row.object.removeprefix("cases:").split(",")) == shown
    # login failures name the attempted user; public liveness is not audited
    request_id = _rid()
    httpx.get(f"{api.url}/health", headers={"X-Request-ID": request_id})
    assert _rows(api, request_id) == []
    total, page = audit_records(api.archive.catalog, limit=5, action="login")
    assert total >= 2 and page[0].username == USERS["admin"]


def test_audit_rows_are_append_only(secured_api: SecuredApi) -> None:
    catalog = secured_api.archive.catalog
    with pytest.raises(PermissionError), catalog.session() as session:
        row = session.scalars(select(AuditEvent).limit(1)).one()
        row.outcome = "success"
    with pytest.raises(Exception, match="append-only"), catalog.session() as session:
        session.execute(update(AuditEvent).values(outcome="x"))
    with pytest.raises(Exception, match="append-only"), catalog.session() as session:
        session.execute(text("DELETE FROM audit_events"))


def test_get_audit_for_admins_filters_by_user_and_action(secured_api: SecuredApi) -> None:
    api = secured_api
    response = httpx.get(
        f"{api.url}/audit",
        params={"username": USERS["radiologist"], "action": "view_case", "limit": 5},
        headers=api.headers("admin"),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["total"] >= 1
    assert all(e["username"] == USERS["radiologist"] and e["action"] == "view_case" for e in body["events"])
    assert body["events"][0]["at"].endswith("+00:00")


def _variant(seed: int) -> bytes:
    """A CT image unlike those of the archive (its own pixels, UIDs and patient)."""
    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    ds.PixelData = np.ascontiguousarray(np.flipud(np.roll(ds.pixel_array, seed, axis=0))).tobytes()
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.8.{seed}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.8.{seed}.0"
    ds.PatientID = f"NEW-{seed}"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_add_edit_and_delete_a_case(secured_api: SecuredApi) -> None:
    api = secured_api
    rad, admin = api.headers("radiologist"), api.headers("admin")
    data = _variant(31)
    # a radiologist saves a search's query as a new case, correcting the predicted label
    search = httpx.post(f"{api.url}/search", files={"file": ("q", data)}, data={"k": "2"}, headers=rad).json()
    predicted = search["prediction"]["label"]
    added = httpx.post(
        f"{api.url}/cases",
        files=[("files", ("q.dcm", data))],
        data={"report": "Added report.", "diagnosis": "effusion; nodule", "predicted_label": predicted},
        headers=rad,
    )
    assert added.status_code == 201, added.text
    case = added.json()
    assert case["diagnosis"] == ["effusion", "nodule"] and case["report"] == "Added report."
    assert case["patient_ref"].startswith("P-") and all(
        i["source_uri"].startswith("image:") for i in case["images"]
    )
    image_id = case["images"][0]["image_id"]
    # searchable at once: the same image is its own best neighbour
    hits = httpx.post(f"{api.url}/search", files={"file": ("q", data)}, data={"k": "1"}, headers=rad).json()[
        "hits"
    ]
    assert hits[0]["case_id"] == case["case_id"] and hits[0]["similarity"] > 0.999
    assert hits[0]["diagnosis"] == ["effusion", "nodule"]
    # the same image twice is a conflict
    again = httpx.post(f"{api.url}/cases", files=[("files", ("q.dcm", data))], headers=rad)
    assert again.status_code == 409
    # correct the diagnosis and the report; the history keeps every change
    edited = httpx.patch(
        f"{api.url}/cases/{case['case_id']}", json={"diagnosis": ["nodule", "pneumonia"]}, headers=rad
    )
    assert edited.status_code == 200 and edited.json()["diagnosis"] == ["nodule", "pneumonia"]
    httpx.patch(f"{api.url}/cases/{case['case_id']}", json={"report": "Corrected."}, headers=rad)
    history = httpx.get(f"{api.url}/cases/{case['case_id']}/history", headers=rad).json()
    fields = [(h["field"], h["old_value"], h["new_value"]) for h in history]
    verdict = "confirmed" if predicted in ("effusion", "nodule") else "corrected"
    assert fields == [
        ("created", None, "effusion; nodule"),
        (f"prediction {verdict}", predicted, "effusion; nodule"),
        ("diagnosis", "effusion; nodule", "nodule; pneumonia"),
        ("report", "Added report.", "Corrected."),
    ]
    assert all(h["username"] == USERS["radiologist"] for h in history)
    # delete: rows, vectors, thumbnail and uploaded file go; the history stays
    thumbnails = api.archive.settings.thumbnail_dir
    count_before = len(api.archive.index)
    assert any(thumbnails.rglob("*.png"))
    assert httpx.delete(f"{api.url}/cases/{case['case_id']}", headers=rad).status_code == 403
    assert httpx.delete(f"{api.url}/cases/{case['case_id']}", headers=admin).status_code == 204
    assert len(api.archive.index) == count_before - 1
    assert image_id not in set(api.archive.index.ids().tolist())
    assert httpx.get(f"{api.url}/cases/{case['case_id']}", headers=rad).status_code == 404
    assert httpx.get(f"{api.url}/images/{image_id}/thumbnail", headers=rad).status_code == 404
    hits = httpx.post(f"{api.url}/search", files={"file": ("q", data)}, data={"k": "10"}, headers=rad).json()[
        "hits"
    ]
    assert case["case_id"] not in {h["case_id"] for h in hits}
    assert not list((api.archive.settings.data_dir / "uploads").rglob("*")) or all(
        p.is_dir() for p in (api.archive.settings.data_dir / "uploads").rglob("*")
    )
    history = httpx.get(f"{api.url}/cases/{case['case_id']}/history", headers=rad).json()
    assert history[-1]["field"] == "deleted"


def test_a_bad_upload_adds_nothing(secured_api: SecuredApi) -> None:
    api = secured_api
    before = len(api.archive.index)
    response = httpx.post(
        f"{api.url}/cases",
        files=[("files", ("a.dcm", _variant(57))), ("files", ("junk.dcm", b"not an image" * 10))],
        data={"diagnosis": "x"},
        headers=api.headers("radiologist"),
    )
    assert response.status_code == 415
    assert len(api.archive.index) == before
