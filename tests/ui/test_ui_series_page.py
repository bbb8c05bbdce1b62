"""The series page under AppTest against the live engine API: it opens and asks for slices."""

from __future__ import annotations

import sys

import pytest
from streamlit.testing.v1 import AppTest

from tests.ui.test_ui_app import APP, TIMEOUT_S


def test_series_page_opens_and_asks_for_slices(
    monkeypatch: pytest.MonkeyPatch, live_api: str, api_tokens: dict[str, str]
) -> None:
    monkeypatch.setenv("MEDCBIR_UI_API_URL", live_api)
    monkeypatch.setattr(sys, "argv", ["ui/app.py"])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.session_state["api_token"] = api_tokens["radiologist"]
    at.run()
    at.switch_page("series_page.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Similar series search" in [t.value for t in at.title]
    assert any("at most 500" in i.value for i in at.info)
