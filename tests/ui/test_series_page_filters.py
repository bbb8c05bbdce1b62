"""The series page's sidebar filters under AppTest against the live engine API: a label filter and the
query patient's exclusion reach POST /search/series and change the hits shown."""

from __future__ import annotations

import sys

import pytest
from streamlit.testing.v1 import AppTest

from tests.helpers import dicom_testfile
from tests.ui.test_ui_app import APP, TIMEOUT_S


def _series_page(monkeypatch: pytest.MonkeyPatch, live_api: str, token: str) -> AppTest:
    monkeypatch.setenv("MEDCBIR_UI_API_URL", live_api)
    monkeypatch.setattr(sys, "argv", ["ui/app.py"])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.session_state["api_token"] = token
    at.run()
    at.switch_page("series_page.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _run(at: AppTest) -> list[str]:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return [t.value for t in at.text if t.value.startswith("Diagnosis:")]


def test_the_label_filter_keeps_only_series_of_that_diagnosis(
    monkeypatch: pytest.MonkeyPatch, live_api: str, api_tokens: dict[str, str]
) -> None:
    at = _series_page(monkeypatch, live_api, api_tokens["radiologist"])
    assert "ct finding" in at.selectbox(key="series_label").options
    files = [(name, dicom_testfile(name).read_bytes(), "application/dicom") for name in ("MR_small.dcm",)]
    at.file_uploader(key="series_files").set_value(files)
    unfiltered = _run(at)
    assert "Diagnosis: lesion" in unfiltered, unfiltered  # the MR query finds its own stored series
    at.selectbox(key="series_label").set_value("ct finding")
    filtered = _run(at)
    assert filtered == ["Diagnosis: ct finding"], filtered


def test_excluding_the_query_patient_drops_its_series_and_says_so(
    monkeypatch: pytest.MonkeyPatch, live_api: str, api_tokens: dict[str, str]
) -> None:
    at = _series_page(monkeypatch, live_api, api_tokens["radiologist"])
    files = [("MR_small.dcm", dicom_testfile("MR_small.dcm").read_bytes(), "application/dicom")]
    at.file_uploader(key="series_files").set_value(files)
    assert "Diagnosis: lesion" in _run(at)
    at.checkbox(key="series_exclude_patient").check()
    at.run()
    at.text_input(key="series_patient_ref").input("PAT-E")  # C-MR-2's patient, from the manifest
    shown = _run(at)
    assert "Diagnosis: lesion" not in shown and shown, shown
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Own patient excluded:") and "patient ref" in c for c in captions), captions
