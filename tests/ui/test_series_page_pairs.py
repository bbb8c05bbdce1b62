"""The series page under AppTest against the live engine API: real DICOM slices in, the vote, the hits, and
their slice pairs side by side behind a slice slider that does not search again."""

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


def _upload(at: AppTest, *names: str) -> AppTest:
    files = [(name, dicom_testfile(name).read_bytes(), "application/dicom") for name in names]
    at.file_uploader(key="series_files").set_value(files)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_two_mr_slices_show_the_vote_and_their_pairs_with_a_slider(
    monkeypatch: pytest.MonkeyPatch, live_api: str, api_tokens: dict[str, str]
) -> None:
    at = _upload(
        _series_page(monkeypatch, live_api, api_tokens["radiologist"]), "MR_small.dcm", "MR2_UNCI.dcm"
    )
    assert not at.error, [e.value for e in at.error]
    subheaders = [s.value for s in at.subheader]
    assert "Prediction" in subheaders and "Similar series" in subheaders
    texts = [t.value for t in at.text]
    # The archive stores each MR file as its own one-slice series, labeled "lesion" (C-MR-2) and
    # "lesion;follow-up" (C-MR-1): both come back, and the query's own slices are paired with them.
    assert any(t.startswith("Diagnosis: lesion") for t in texts), texts
    caption = next(c.value for c in at.caption if "query slices" in c.value)
    assert caption.startswith("2 query slices · MR")
    slider = at.select_slider(key=next(k for k in at.session_state if str(k).startswith("series_pair_")))
    first = [t.value for t in at.text if t.value.startswith("Query slice")]
    shown = int(str(slider.value))  # a 0-based query slice; the options are shown 1-based
    other = next(int(o) - 1 for o in slider.options if int(o) - 1 != shown)
    hits = sum(t.startswith("Diagnosis:") for t in texts)
    assert hits >= 2 and len(at.image) == 2 * hits  # each hit: the query slice and its stored slice
    slider.set_value(other).run()
    assert not at.exception, [e.value for e in at.exception]
    after = [t.value for t in at.text if t.value.startswith("Query slice")]
    assert after != first
    assert (
        next(c.value for c in at.caption if "query slices" in c.value) == caption
    )  # kept, not searched again


def test_slices_of_two_modalities_are_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, live_api: str, api_tokens: dict[str, str]
) -> None:
    at = _upload(
        _series_page(monkeypatch, live_api, api_tokens["radiologist"]), "CT_small.dcm", "MR_small.dcm"
    )
    errors = [e.value for e in at.error]
    assert any("HTTP 422" in e and "mix modalities" in e for e in errors), errors
