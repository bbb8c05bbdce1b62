"""An uncertain prediction shows no big label, and never pre-fills the diagnosis of a saved case."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _prediction_app(uncertain: bool) -> None:
    from search_api.schemas import LabelScore, Prediction
    from ui.views import render_prediction

    render_prediction(
        Prediction(
            label="abdomen MR",
            confidence=0.385,
            scores=[LabelScore(label="abdomen MR", score=0.385, votes=3), LabelScore(label="b", score=0.3)],
            labeled_neighbours=5,
            uncertain=uncertain,
            uncertain_reason="low_confidence: 0.38 < 0.50" if uncertain else None,
        )
    )


def _save_app(uncertain: bool) -> None:
    from search_api.schemas import Prediction, SearchResponse
    from ui.search_page import save_query_section

    prediction = Prediction(label="pneumonia", confidence=0.4, uncertain=uncertain)
    result = SearchResponse.model_construct(hits=[], prediction=prediction)  # only the prediction is read
    save_query_section(object(), "q.png", b"", result)  # type: ignore[arg-type]


def test_uncertain_prediction_has_no_big_label_but_a_reason() -> None:
    at = AppTest.from_function(_prediction_app, kwargs={"uncertain": True}).run(timeout=60)
    assert not at.exception
    assert [m.label for m in at.metric] == []  # no "Predicted label: abdomen MR 38.5%" in large type
    assert "No reliable match" in at.warning[0].value
    assert "not shown as a prediction" in at.caption[0].value


def test_trusted_prediction_shows_its_label() -> None:
    at = AppTest.from_function(_prediction_app, kwargs={"uncertain": False}).run(timeout=60)
    assert not at.exception
    assert [m.value for m in at.metric] == ["abdomen MR", "38.5%"]


def test_uncertain_prediction_does_not_prefill_the_saved_diagnosis() -> None:
    at = AppTest.from_function(_save_app, kwargs={"uncertain": True}).run(timeout=60)
    assert not at.exception
    assert at.text_input(key="save_labels").value == ""
    trusted = AppTest.from_function(_save_app, kwargs={"uncertain": False}).run(timeout=60)
    assert trusted.text_input(key="save_labels").value == "pneumonia"


def test_cases_are_named_by_what_a_reader_sees_not_by_hash() -> None:
    from search_api.schemas import CaseSummary
    from ui.picker import case_label

    case = CaseSummary(
        case_id=42,
        case_key="file:3f2a9c0d1e4b5a6978877665",
        diagnosis=["Pneumonia"],
        modalities=["CR"],
        body_parts=["CHEST"],
        study_description="Chest PA",
    )
    assert case_label(case) == "#42 · CR · Chest · Chest PA · Pneumonia"
    assert "3f2a9c" not in case_label(case)
