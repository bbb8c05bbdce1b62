"""The UI's write paths under AppTest against a live API with real sign-in: each change is checked
through the API and the catalog (save a query as a case, edit with history, delete, user accounts)."""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from indexer.archive import Archive
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from search_api.app import create_app
from search_api.settings import ApiSettings
from tests.helpers import ThumbnailEncoder, dicom_testfile, serve_app
from tests.ui.test_ui_app import APP, TIMEOUT_S

PASSWORD = "ui write paths password 7"
ADMIN, RADIOLOGIST = "ui-admin", "ui-radiologist"


@dataclass
class WritableApi:
    """A live API over its own small archive (these tests change it), with an admin and a radiologist."""

    url: str
    archive: Archive
    source: Path

    def token(self, username: str, password: str = PASSWORD) -> httpx.Response:
        return httpx.post(f"{self.url}/token", data={"username": username, "password": password})

    def get(self, path: str, username: str = ADMIN, **params: str | int) -> httpx.Response:
        token = self.token(username).json()["access_token"]
        return httpx.get(f"{self.url}{path}", params=params, headers={"Authorization": f"Bearer {token}"})


def write_archive(root: Path) -> Path:
    """Three CT slices (different pixels, studies and patients) and a manifest with reports and labels."""
    root.mkdir()
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
        for i in range(3):
            ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
            ds.PixelData = np.ascontiguousarray(np.roll(ds.pixel_array, 11 * i, axis=0)).tobytes()
            ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.8.{i}"
            ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.8.{i}.1"
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.8.{i}.1.1"
            ds.PatientID = f"UIW-{i}"
            ds.save_as(root / f"ct{i}.dcm")
            writer.writerow(
                [f"ct{i}.dcm", f"UIW-CASE-{i}", f"UIW-{i}", f"Report {i}.", "nodule" if i else "normal"]
            )
    return manifest


@pytest.fixture(scope="module")
def writable_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WritableApi]:
    """Its own archive (the session's live API is shared and must not change), the fast test encoder."""
    root = tmp_path_factory.mktemp("ui-writes")
    manifest = write_archive(root / "source")
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=ThumbnailEncoder())
    report = ingest_path(
        archive, root / "source", load_manifest(manifest, ManifestColumns()), progress=False, workers=0
    )
    assert report.indexed == 3, report
    create_user(archive.catalog, ADMIN, PASSWORD, "admin")
    create_user(archive.catalog, RADIOLOGIST, PASSWORD, "radiologist")
    app = create_app(archive=archive, api_settings=ApiSettings(login_attempts_per_minute=1000))
    with serve_app(app) as url:
        yield WritableApi(url, archive, root / "source")


def signed_in(monkeypatch: pytest.MonkeyPatch, api: WritableApi, username: str) -> AppTest:
    """The app after signing in through its login form with a real account (no token planted)."""
    monkeypatch.setenv("MEDCBIR_UI_API_URL", api.url)
    monkeypatch.setattr(sys, "argv", ["ui/app.py"])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    assert [t.value for t in at.title] == ["Sign in"]
    at.text_input(key="login_username").input(username)
    at.text_input(key="login_password").input(PASSWORD)
    submit(at, "Sign in")
    assert username in [t.value for t in at.sidebar.text]
    return at


def submit(at: AppTest, label: str) -> AppTest:
    """Click the (form submit) button labelled `label` and rerun; no exception may escape the page."""
    buttons = [b for b in at.button if b.label == label]
    assert len(buttons) == 1, [b.label for b in at.button]
    buttons[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def successes(at: AppTest) -> list[str]:
    return [s.value for s in at.success]


def unique_png(seed: int) -> bytes:
    """A PNG no other test uploads (the API refuses an image already in the archive)."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def open_case(at: AppTest, case_id: int) -> AppTest:
    at.query_params["case_id"] = str(case_id)
    at.switch_page("case_page.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def add_case_through_api(api: WritableApi, seed: int, labels: str, report: str) -> int:
    token = api.token(RADIOLOGIST).json()["access_token"]
    response = httpx.post(
        f"{api.url}/cases",
        data={"diagnosis": labels, "report": report},
        files=[("files", ("x.png", unique_png(seed), "image/png"))],
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    return int(response.json()["case_id"])


def rewritten_dicom(api: WritableApi, name: str) -> bytes:
    """An archived DICOM with a new SOP Instance UID: new bytes, the same pixels (a trusted prediction)."""
    ds = pydicom.dcmread(api.source / name)
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("query", "prefilled"),
    [
        ("noise", ""),  # out of distribution: nothing is pre-filled, no prediction is recorded
        ("ct1", "nodule"),  # ct1 and ct2 are nodules: the vote is trusted and pre-filled
    ],
)
def test_save_a_query_as_a_new_case(
    monkeypatch: pytest.MonkeyPatch, writable_api: WritableApi, query: str, prefilled: str
) -> None:
    api = writable_api
    data = unique_png(1) if query == "noise" else rewritten_dicom(api, f"{query}.dcm")
    at = signed_in(monkeypatch, api, RADIOLOGIST)
    at.file_uploader(key="query_file").upload("query.png", data)
    at.run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.text_input(key="save_labels").value == prefilled
    at.text_input(key="save_labels").input("pneumothorax; follow-up")
    at.text_area(key="save_report").input("Saved from the screen: small apical pneumothorax.")
    submit(at, "Save as a new case")
    saved = [
        m for s in successes(at) if (m := re.fullmatch(r"Saved as case (\d+); it is searchable now\.", s))
    ]
    assert len(saved) == 1, successes(at)
    case_id = int(saved[0].group(1))

    case = api.get(f"/cases/{case_id}", RADIOLOGIST).json()
    assert case["diagnosis"] == ["pneumothorax", "follow-up"]
    assert case["report"] == "Saved from the screen: small apical pneumothorax."
    assert len(case["images"]) == 1
    stored = api.archive.catalog.case(case_id)
    assert stored is not None and sorted(stored.labels) == ["follow-up", "pneumothorax"]
    history = api.get(f"/cases/{case_id}/history", RADIOLOGIST).json()
    assert (history[0]["field"], history[0]["username"]) == ("created", RADIOLOGIST)
    assert history[0]["new_value"] == "pneumothorax; follow-up"
    expected = [("prediction corrected", prefilled)] if prefilled else []
    assert [(h["field"], h["old_value"]) for h in history[1:]] == expected
    # Searchable now: the same image finds its own new case first.
    token = api.token(RADIOLOGIST).json()["access_token"]
    answer = httpx.post(
        f"{api.url}/search",
        files={"file": ("query.png", data, "image/png")},
        data={"k": "3"},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    best = [h["case_id"] for h in answer["hits"] if h["similarity"] >= 1 - 1e-4]
    assert case_id in best, answer["hits"]


def test_edit_report_and_diagnosis_is_kept_in_the_history(
    monkeypatch: pytest.MonkeyPatch, writable_api: WritableApi
) -> None:
    api = writable_api
    case_id = add_case_through_api(api, 2, "normal", "Original report.")
    at = open_case(signed_in(monkeypatch, api, RADIOLOGIST), case_id)
    assert at.text_input(key="edit_labels").value == "normal"
    assert at.text_area(key="edit_report").value == "Original report."
    at.text_input(key="edit_labels").input("nodule ; emphysema")
    at.text_area(key="edit_report").input("Corrected: 6 mm nodule, right upper lobe.")
    submit(at, "Save changes")
    assert "Saved; the change is in the case history." in successes(at)

    case = api.get(f"/cases/{case_id}", RADIOLOGIST).json()
    assert (case["diagnosis"], case["report"]) == (
        ["nodule", "emphysema"],
        "Corrected: 6 mm nodule, right upper lobe.",
    )
    changes = {h["field"]: h for h in api.get(f"/cases/{case_id}/history", RADIOLOGIST).json()}
    assert changes["report"]["old_value"] == "Original report."
    assert changes["report"]["new_value"] == "Corrected: 6 mm nodule, right upper lobe."
    assert (changes["diagnosis"]["old_value"], changes["diagnosis"]["username"]) == ("normal", RADIOLOGIST)
    assert changes["diagnosis"]["new_value"] == "nodule; emphysema"
    # The page's own history shows the edit after the next run.
    at.run()
    assert any(
        t.value.endswith(
            f"{RADIOLOGIST} report: 'Original report.' -> 'Corrected: 6 mm nodule, right upper lobe.'"
        )
        for t in at.text
    ), [t.value for t in at.text]


def test_radiologists_are_offered_no_delete(
    monkeypatch: pytest.MonkeyPatch, writable_api: WritableApi
) -> None:
    api = writable_api
    case_id = add_case_through_api(api, 3, "normal", "Keep me.")
    at = open_case(signed_in(monkeypatch, api, RADIOLOGIST), case_id)
    assert "Delete this case" not in [e.label for e in at.expander]
    assert not [b for b in at.button if b.label == "Delete case"]
    assert api.get(f"/cases/{case_id}", RADIOLOGIST).status_code == 200


def test_admin_deletes_a_case(monkeypatch: pytest.MonkeyPatch, writable_api: WritableApi) -> None:
    api = writable_api
    case_id = add_case_through_api(api, 4, "normal", "Delete me.")
    image_ids = [i["image_id"] for i in api.get(f"/cases/{case_id}").json()["images"]]
    assert set(image_ids) <= set(api.archive.index.ids().tolist())
    at = open_case(signed_in(monkeypatch, api, ADMIN), case_id)
    assert at.button(key="delete_case").disabled  # not before the confirmation is ticked
    at.checkbox(key="confirm_delete").check().run()
    at.button(key="delete_case").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"Case {case_id} deleted." in successes(at)

    assert api.get(f"/cases/{case_id}").status_code == 404
    assert api.archive.catalog.case(case_id) is None
    assert not set(image_ids) & set(api.archive.index.ids().tolist())  # its vectors left the index
    history = api.get(f"/cases/{case_id}/history").json()
    assert (history[-1]["field"], history[-1]["username"]) == ("deleted", ADMIN)


def users_by_name(api: WritableApi) -> dict[str, dict[str, object]]:
    return {u["username"]: u for u in api.get("/users").json()}


def test_admin_creates_disables_enables_and_promotes_a_user(
    monkeypatch: pytest.MonkeyPatch, writable_api: WritableApi
) -> None:
    api = writable_api
    at = signed_in(monkeypatch, api, ADMIN)
    at.switch_page("admin_page.py").run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    at.text_input(key="new_username").input("ui-newcomer")
    at.text_input(key="new_password").input("a first password 123")
    at.selectbox(key="new_role").select("radiologist")
    submit(at, "Create user")
    assert "Created radiologist ui-newcomer." in successes(at)
    assert users_by_name(api)["ui-newcomer"] == {
        "username": "ui-newcomer",
        "role": "radiologist",
        "disabled": False,
        "service": False,
    }
    assert api.token("ui-newcomer", "a first password 123").status_code == 200

    at.run()  # the users table and picker now list the newcomer
    at.selectbox(key="change_user").select("ui-newcomer").run()
    at.button(key="disable_user").click().run()
    assert "ui-newcomer is disabled." in successes(at)
    assert users_by_name(api)["ui-newcomer"]["disabled"] is True
    assert api.token("ui-newcomer", "a first password 123").status_code == 401

    at.button(key="enable_user").click().run()
    assert "ui-newcomer is enabled." in successes(at)
    assert users_by_name(api)["ui-newcomer"]["disabled"] is False
    assert api.token("ui-newcomer", "a first password 123").status_code == 200

    at.selectbox(key="change_role").select("admin").run()
    at.button(key="set_role").click().run()
    assert "ui-newcomer is now admin." in successes(at)
    assert users_by_name(api)["ui-newcomer"]["role"] == "admin"
    actions = [
        e["action"]
        for e in api.get("/audit", limit=200, username=ADMIN).json()["events"]
        if e["object"] == "user:ui-newcomer" and e["outcome"] == "success"
    ]
    assert sorted(actions) == ["create_user"] + ["update_user"] * 3  # audited under the admin's name


def test_a_demoted_admin_loses_the_admin_page(
    monkeypatch: pytest.MonkeyPatch, writable_api: WritableApi
) -> None:
    """The role is asked of the API on every run: a demotion takes effect on the open screen at once."""
    api = writable_api
    create_user(api.archive.catalog, "ui-temp-admin", PASSWORD, "admin")
    at = signed_in(monkeypatch, api, "ui-temp-admin")
    at.switch_page("admin_page.py").run()
    assert "Administration" in [t.value for t in at.title]
    token = api.token(ADMIN).json()["access_token"]
    demoted = httpx.patch(
        f"{api.url}/users/ui-temp-admin",
        json={"role": "radiologist"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert demoted.status_code == 200, demoted.text
    at.text_input(key="new_username").input("ui-should-not-exist")
    at.text_input(key="new_password").input("a first password 123")
    [create] = [b for b in at.button if b.label == "Create user"]
    create.click().run()
    assert "Administration" not in [t.value for t in at.title]
    assert "ui-should-not-exist" not in users_by_name(api)
