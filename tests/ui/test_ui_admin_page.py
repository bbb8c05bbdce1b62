"""The admin page under AppTest against the live engine API: users and the audit trail, admins only."""

from __future__ import annotations

import sys

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import TEST_USERS
from tests.ui.test_ui_app import APP, TIMEOUT_S


def open_admin(monkeypatch: pytest.MonkeyPatch, api_url: str, token: str) -> AppTest:
    monkeypatch.setenv("MEDCBIR_UI_API_URL", api_url)
    monkeypatch.setattr(sys, "argv", ["ui/app.py"])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.session_state["api_token"] = token
    at.run()
    at.switch_page("admin_page.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_admin_page_lists_users_and_the_audit_trail(
    monkeypatch: pytest.MonkeyPatch, live_api: str, api_tokens: dict[str, str]
) -> None:
    at = open_admin(monkeypatch, live_api, api_tokens["admin"])
    assert "Administration" in [t.value for t in at.title]
    assert not at.error, [e.value for e in at.error]
    users = at.dataframe[0].value
    assert set(TEST_USERS.values()) <= set(users["username"])
    audit = at.dataframe[1].value
    assert {"username", "role", "action", "object", "outcome", "client", "request_id"} <= set(audit.columns)
    assert "login" in set(audit["action"])


def test_radiologists_get_no_admin_page(
    monkeypatch: pytest.MonkeyPatch, live_api: str, api_tokens: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        open_admin(monkeypatch, live_api, api_tokens["radiologist"])  # the page is not even registered
