"""The search page says when the own-patient exclusion could not apply, and sends the patient reference typed in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from search_api.schemas import Exclusion, SearchResponse
from tests.ui.test_ui_app import start_app, upload
from ui.client import ApiClient

if TYPE_CHECKING:
    from tests.ui.conftest import ContractApi

REASON = "the query's patient is unknown: send patient_ref"


@pytest.fixture
def sent_refs(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """ApiClient.search answered by the contract server, with the exclusion the engine would report."""
    sent: list[str | None] = []
    original = ApiClient.search

    def search(self: ApiClient, *args: Any, patient_ref: str | None = None, **kwargs: Any) -> SearchResponse:
        sent.append(patient_ref)
        result = original(self, *args, patient_ref=patient_ref, **kwargs)
        filters = kwargs.get("filters")
        if filters is None or not filters.exclude_patient:
            return result
        exclusion = (
            Exclusion(requested=True, applied=True, sources=["patient_ref"], excluded_images=4)
            if patient_ref
            else Exclusion(requested=True, applied=False, reason=REASON)
        )
        return result.model_copy(update={"exclusion": exclusion})

    monkeypatch.setattr(ApiClient, "search", search)
    return sent


def test_a_failed_exclusion_is_a_warning_and_a_typed_patient_is_sent(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes, sent_refs: list[str | None]
) -> None:
    at = upload(start_app(monkeypatch, contract.url), png_bytes)
    assert not at.warning and sent_refs == [None]
    at.checkbox(key="exclude_patient").check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [w.value for w in at.warning] == [f"The query's own patient was NOT excluded: {REASON}"]
    at.text_input(key="patient_ref").input("PAT-9").run()
    assert not at.exception, [e.value for e in at.exception]
    assert sent_refs[-1] == "PAT-9" and not at.warning
    assert any(c.value.startswith("Own patient excluded: 4 stored images") for c in at.caption)
