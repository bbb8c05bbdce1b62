"""Sessions that survive a reload (the HttpOnly sign-in cookie) and an audit trail without page-refresh rows,
under AppTest against a live API with real sign-in, plus the cookie route itself."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient
from streamlit.testing.v1 import AppTest

import ui.session_cookie as session_cookie
from indexer.archive import Archive
from indexer.catalog import AuditEvent
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from indexer.settings import IndexerSettings
from search_api.app import create_app
from search_api.settings import ApiSettings
from tests.helpers import ThumbnailEncoder, dicom_testfile, serve_app
from ui.session_cookie import COOKIE_NAME, HANDOFF_PATH, HANDOFFS, HandoffStore, session_route

APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"
TIMEOUT_S = 60
PASSWORD = "ui sessions password 7"
USER = "ui-session-radiologist"
TOKEN_MINUTES = 30


@dataclass
class SessionApi:
    url: str
    archive: Archive

    def audit_rows(self) -> int:
        with self.archive.catalog.session() as session:
            return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)

    def audit_actions(self, after: int) -> list[str]:
        with self.archive.catalog.session() as session:
            rows = session.scalars(select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id))
            return [r.action for r in rows]

    def last_audit_id(self) -> int:
        with self.archive.catalog.session() as session:
            return int(session.scalar(select(func.max(AuditEvent.id))) or 0)


@pytest.fixture(scope="module")
def session_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionApi]:
    """Its own archive of three CT slices (three cases), one radiologist, the fast test encoder."""
    root = tmp_path_factory.mktemp("ui-sessions")
    source = root / "source"
    source.mkdir()
    for i in range(3):
        ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
        ds.PixelData = np.ascontiguousarray(np.roll(ds.pixel_array, 13 * i, axis=0)).tobytes()
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.9.{i}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.9.{i}.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.9.{i}.1.1"
        ds.PatientID = f"UIS-{i}"
        ds.save_as(source / f"ct{i}.dcm")
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=ThumbnailEncoder())
    assert ingest_path(archive, source, None, progress=False, workers=0).indexed == 3
    create_user(archive.catalog, USER, PASSWORD, "radiologist")
    settings = ApiSettings(login_attempts_per_minute=1000, token_minutes=TOKEN_MINUTES)
    with serve_app(create_app(archive=archive, api_settings=settings)) as url:
        yield SessionApi(url, archive)


def app_test(
    monkeypatch: pytest.MonkeyPatch, api: SessionApi, cookies: dict[str, str] | None = None
) -> AppTest:
    """A fresh browser session (a reload) sending `cookies` with its connection."""
    monkeypatch.setenv("MEDCBIR_UI_API_URL", api.url)
    monkeypatch.setattr(sys, "argv", ["ui/app.py"])
    monkeypatch.setattr(session_cookie, "request_cookies", lambda: dict(cookies or {}))
    return AppTest.from_file(APP, default_timeout=TIMEOUT_S)


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def click(at: AppTest, label: str) -> AppTest:
    buttons = [b for b in at.button if b.label == label]
    assert len(buttons) == 1, [b.label for b in at.button]
    buttons[0].click()
    return run(at)


def sign_in(at: AppTest) -> AppTest:
    run(at)
    assert [t.value for t in at.title] == ["Sign in"]
    at.text_input(key="login_username").input(USER)
    at.text_input(key="login_password").input(PASSWORD)
    click(at, "Sign in")
    assert USER in [t.value for t in at.sidebar.text]
    return at


def handoff_codes(at: AppTest) -> list[str]:
    """The one-time codes of the cookie images the page shows."""
    bodies = [str(getattr(e.proto, "body", "")) for e in at.get("html")]
    return [m for body in bodies for m in re.findall(rf"{HANDOFF_PATH}\?code=([A-Za-z0-9_-]+)", body)]


def test_a_reload_stays_signed_in_until_sign_out_revokes_the_token(
    monkeypatch: pytest.MonkeyPatch, session_api: SessionApi
) -> None:
    at = sign_in(app_test(monkeypatch, session_api))
    token = at.session_state["api_token"]
    # Signing in hands the browser its cookie once: the token, for exactly the token's lifetime.
    codes = handoff_codes(at)
    assert len(codes) == 1
    handoff = HANDOFFS.take(codes[0])
    assert handoff is not None and handoff.token == token and handoff.max_age == TOKEN_MINUTES * 60
    assert handoff_codes(run(at)) == []  # not again on the next run

    # A reload is a new session: it has no state, only the cookie, and it is signed in.
    reloaded = run(app_test(monkeypatch, session_api, {COOKIE_NAME: token}))
    assert [t.value for t in reloaded.title] != ["Sign in"]
    assert USER in [t.value for t in reloaded.sidebar.text]
    # Without the cookie, the same reload asks to sign in.
    assert [t.value for t in run(app_test(monkeypatch, session_api)).title] == ["Sign in"]

    # Sign out revokes the token at the API and clears the cookie.
    click(reloaded, "Sign out")
    assert [t.value for t in reloaded.title] == ["Sign in"]
    codes = handoff_codes(reloaded)
    assert len(codes) == 1
    cleared = HANDOFFS.take(codes[0])
    assert cleared is not None and cleared.token is None
    # A browser that kept the cookie (another tab, or the clearing image never loaded) is signed out too.
    stale = run(app_test(monkeypatch, session_api, {COOKIE_NAME: token}))
    assert [t.value for t in stale.title] == ["Sign in"]
    assert len(handoff_codes(stale)) == 1  # and its cookie is cleared
    # ... and stays on the login form on its next run instead of adopting the refused cookie again.
    assert [t.value for t in run(stale).title] == ["Sign in"]


def test_a_page_refresh_writes_no_audit_row_while_a_search_does(
    monkeypatch: pytest.MonkeyPatch, session_api: SessionApi
) -> None:
    api = session_api
    at = sign_in(app_test(monkeypatch, api))
    at.radio(key="query_mode").set_value("Pick an archived case")
    start = api.last_audit_id()
    run(at)
    actions = api.audit_actions(start)
    assert actions.count("search") == 1, actions
    assert "list_cases" in actions  # the picker's listing is data access: audited when fetched
    assert "whoami" not in actions and "view_filters" not in actions

    # Refreshes: Streamlit reruns the whole page on every interaction; none of them writes a row.
    before = api.audit_rows()
    for _ in range(3):
        run(at)
    at.checkbox(key=next(c.key for c in at.checkbox if c.key and c.key.startswith("region_on_"))).check()
    at.checkbox(key=next(c.key for c in at.checkbox if c.key and c.key.startswith("region_on_"))).uncheck()
    run(at)
    assert api.audit_rows() == before, api.audit_actions(start)

    # A new search (another case) is audited.
    picker = at.selectbox(key="archive_case")
    assert len(picker.options) == 3 and picker.index == 0
    picker.select_index(1)
    start = api.last_audit_id()
    run(at)
    assert api.audit_actions(start).count("search") == 1


def _route_client() -> TestClient:
    return TestClient(Starlette(routes=[Route(HANDOFF_PATH, session_route)]), base_url="https://ui.test")


def test_the_cookie_route_sets_a_secure_httponly_strict_cookie_once(monkeypatch: pytest.MonkeyPatch) -> None:
    store = HandoffStore(ttl_s=30)
    monkeypatch.setattr(session_cookie, "HANDOFFS", store)
    client = _route_client()
    code = store.issue("the-token", 1800)
    response = client.get(HANDOFF_PATH, params={"code": code})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert cookie.startswith(f"{COOKIE_NAME}=the-token;")
    assert {"httponly", "secure", "samesite", "max-age", "path"} <= attributes
    assert "SameSite=strict" in cookie and "Max-Age=1800" in cookie and "Path=/" in cookie
    assert response.headers["cache-control"] == "no-store"
    # A code works once; unknown codes set nothing.
    again = client.get(HANDOFF_PATH, params={"code": code})
    assert again.status_code == 404 and "set-cookie" not in again.headers
    assert "set-cookie" not in client.get(HANDOFF_PATH, params={"code": "guess"}).headers
    # A clearing code expires the cookie.
    cleared = client.get(HANDOFF_PATH, params={"code": store.issue(None, 0)})
    assert (
        cleared.headers["set-cookie"].startswith(f'{COOKIE_NAME}="";')
        and "Max-Age=0" in cleared.headers["set-cookie"]
    )


def test_codes_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    store = HandoffStore(ttl_s=0.0)
    assert store.take(store.issue("t", 60)) is None


def test_the_case_page_is_audited_when_read_and_changed_not_when_refreshed(
    monkeypatch: pytest.MonkeyPatch, session_api: SessionApi
) -> None:
    api = session_api
    at = sign_in(app_test(monkeypatch, api))
    at.query_params["case_id"] = "2"
    start = api.last_audit_id()
    at.switch_page("case_page.py")
    run(at)
    assert api.audit_actions(start).count("view_case") == 1, api.audit_actions(start)
    before = api.audit_rows()
    for _ in range(3):
        run(at)
    assert api.audit_rows() == before, api.audit_actions(start)
    # An edit is audited (intent and outcome), and the page shows it on the next run.
    at.text_area(key="edit_report").input("Edited while refreshing.")
    start = api.last_audit_id()
    click(at, "Save changes")
    assert api.audit_actions(start).count("edit_case") == 2, api.audit_actions(start)
    run(at)
    assert at.text_area(key="edit_report").value == "Edited while refreshing."
    assert any("Edited while refreshing." in t.value for t in at.text), [t.value for t in at.text]
