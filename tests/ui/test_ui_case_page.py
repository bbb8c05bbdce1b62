"""The case page under AppTest: opened by ?case_id=N, against the contract API and the live engine."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from tests.ui.conftest import CONTRACT_TOKEN
from tests.ui.test_ui_app import APP, TIMEOUT_S, hit_similarities, page_text

if TYPE_CHECKING:
    from tests.ui.conftest import ContractApi


def open_case(
    monkeypatch: pytest.MonkeyPatch, api_url: str, case_id: str | None, token: str = CONTRACT_TOKEN
) -> AppTest:
    """Run the app once on its case page, with ?case_id= set when given, signed in with `token`."""
    monkeypatch.setenv("MEDCBIR_UI_API_URL", api_url)
    monkeypatch.setattr(sys, "argv", ["ui/app.py"])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.session_state["api_token"] = token
    at.run()
    if case_id is not None:
        at.query_params["case_id"] = case_id
    at.switch_page("case_page.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_case_page_shows_report_labels_and_images(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi
) -> None:
    at = open_case(monkeypatch, contract.url, "200")
    text = page_text(at)
    assert "Case: CASE-000" in text and "Diagnosis: nodule, emphysema" in text
    assert any(t.value.endswith("END-OF-REPORT-0") for t in at.text)  # the whole report, as plain text
    assert f"Study: {contract.hostile_text}" in text
    assert len(at.image) == 1  # its one thumbnail (fetched once per session: cached)
    assert at.get("page_link")[0].proto.label == "Back to search"


def test_search_with_an_image_of_the_case(monkeypatch: pytest.MonkeyPatch, contract: ContractApi) -> None:
    at = open_case(monkeypatch, contract.url, "203")
    at.button(key="search_with_image").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert contract.searches[-1].image_id == 103
    assert at.radio(key="query_mode").value == "Pick an archived case"
    assert len(hit_similarities(at)) == 10


@pytest.mark.parametrize(
    ("case_id", "kind", "message"),
    [
        (None, "info", "Open a case from a search result"),
        ("abc", "info", "Open a case from a search result"),
        ("999", "error", "Could not load case 999 (HTTP 404): No case with id 999."),
    ],
)
def test_missing_or_unknown_case_is_a_readable_message(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, case_id: str | None, kind: str, message: str
) -> None:
    at = open_case(monkeypatch, contract.url, case_id)
    assert any(e.value.startswith(message) for e in getattr(at, kind))
    assert not at.image


def test_live_case_page(monkeypatch: pytest.MonkeyPatch, live_api: str, live_token: str) -> None:
    headers = {"Authorization": f"Bearer {live_token}"}
    listing = httpx.get(f"{live_api}/cases", params={"limit": 1}, headers=headers).json()
    case = httpx.get(f"{live_api}/cases/{listing['cases'][0]['case_id']}", headers=headers).json()
    at = open_case(monkeypatch, live_api, str(case["case_id"]), live_token)
    text = page_text(at)
    assert f"Case: {case['case_key']}" in text
    assert case["report"] in [t.value for t in at.text]
    assert len(at.image) == len(case["images"]) >= 1
