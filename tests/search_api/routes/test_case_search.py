"""GET /cases?q=: find cases by words of their diagnoses, report, id, modality or description."""

from __future__ import annotations

import httpx


def _keys(url: str, headers: dict[str, str], q: str) -> list[str]:
    response = httpx.get(f"{url}/cases", params={"q": q}, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["cases"])
    return sorted(c["case_key"] for c in body["cases"])


def test_every_word_must_match_a_field_case_insensitively(
    live_api_url: str, radiologist_headers: dict[str, str]
) -> None:
    url, headers = live_api_url, radiologist_headers
    assert _keys(url, headers, "lesion") == ["C-MR-1", "C-MR-2"]  # diagnosis labels
    assert _keys(url, headers, "LESION follow-up") == ["C-MR-1"]  # every word, any case
    assert _keys(url, headers, "lungs clear") == ["C-CHEST-1"]  # report words
    assert _keys(url, headers, "c-fundus") == ["C-FUNDUS-1"]  # the case id
    assert "C-US-1" in _keys(url, headers, "us")  # an image's modality
    assert _keys(url, headers, "lesion histology") == []
    assert _keys(url, headers, "%") == [] and _keys(url, headers, "_") == []  # wildcards are literal
    everything = httpx.get(f"{url}/cases", headers=headers, timeout=30).json()["total"]
    assert everything == 7 and len(_keys(url, headers, "   ")) == 7  # blank: no filter


def test_a_too_long_query_is_a_clear_422(live_api_url: str, radiologist_headers: dict[str, str]) -> None:
    response = httpx.get(f"{live_api_url}/cases", params={"q": "x" * 201}, headers=radiologist_headers)
    assert response.status_code == 422 and "q" in response.text
