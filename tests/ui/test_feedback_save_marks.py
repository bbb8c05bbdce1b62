"""Relevance marks on the search page under AppTest against the live engine API: thumbs, "Refine", and
"Save marks" keeping them with a case (read back through the case API)."""

from __future__ import annotations

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from tests.helpers import dicom_testfile
from tests.ui.test_ui_app import start_app, upload
from ui.feedback import DOWN, UP


def _marks(at: AppTest) -> list:  # type: ignore[type-arg]
    return [w for w in at.segmented_control if str(w.key).startswith("mark_")]


def test_marks_are_refined_and_saved_with_a_case(
    monkeypatch: pytest.MonkeyPatch, live_api: str, api_tokens: dict[str, str]
) -> None:
    at = upload(
        start_app(monkeypatch, live_api, api_tokens["radiologist"]),
        dicom_testfile("MR_small.dcm").read_bytes(),
        "mr.dcm",
    )
    assert not at.exception, [e.value for e in at.exception]
    thumbs = _marks(at)
    assert len(thumbs) >= 3
    assert not any(e.label == "Save the marks with a case" for e in at.expander)  # nothing marked yet
    good, bad = int(str(thumbs[0].key).rsplit("_", 1)[1]), int(str(thumbs[2].key).rsplit("_", 1)[1])
    thumbs[0].set_value(UP)
    thumbs[2].set_value(DOWN)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("1 marked relevant, 1 not relevant" in c.value for c in at.caption)
    case_input = next(n for n in at.number_input if str(n.key).startswith("marks_case_"))
    assert case_input.value is None  # an uploaded query belongs to no case: the user names one
    case_input.set_value(1)
    at.run()
    next(b for b in at.button if b.label == "Save marks").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "2 mark(s) saved with case 1." in [s.value for s in at.success]
    saved = httpx.get(
        f"{live_api}/cases/1/feedback-marks",
        headers={"Authorization": f"Bearer {api_tokens['radiologist']}"},
        timeout=30,
    ).json()
    latest = {m["image_id"]: m["relevant"] for m in saved if m["origin"].startswith("query:")}
    assert latest[good] is True and latest[bad] is False
    assert all(m["username"] == "test-radiologist" for m in saved)

    next(b for b in at.button if b.label == "Refine").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("showing round 1" in c.value for c in at.caption)


def test_saving_with_a_case_that_does_not_exist_says_so(
    monkeypatch: pytest.MonkeyPatch, live_api: str, api_tokens: dict[str, str]
) -> None:
    at = upload(
        start_app(monkeypatch, live_api, api_tokens["radiologist"]),
        dicom_testfile("CT_small.dcm").read_bytes(),
        "ct.dcm",
    )
    _marks(at)[0].set_value(UP)
    at.run()
    next(n for n in at.number_input if str(n.key).startswith("marks_case_")).set_value(999_999)
    at.run()
    next(b for b in at.button if b.label == "Save marks").click()
    at.run()
    errors = [e.value for e in at.error]
    assert any("HTTP 404" in e and "case 999999 does not exist" in e for e in errors), errors
