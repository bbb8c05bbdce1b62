"""The marks of a refine session saved with a case over a live API: PUT then GET
/cases/{id}/feedback-marks, replaced per refined search, audited, and 4xx that say why."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from indexer.archive import Archive
from indexer.governance.accounts import create_user
from indexer.governance.audit import audit_records
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from search_api.app import create_app
from search_api.refine import MAX_MARKS
from tests.helpers import ThumbnailEncoder, serve_app

PASSWORD = "a long marks password 31"
IMAGES = 12


def _png(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class MarksApi:
    url: str
    archive: Archive
    headers: dict[str, str]
    query: bytes


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarksApi]:
    root = tmp_path_factory.mktemp("marks")
    source = root / "source"
    source.mkdir()
    rng = np.random.default_rng(5)
    with (source / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
        for i in range(IMAGES):
            (source / f"img{i:02d}.png").write_bytes(_png(rng))
            writer.writerow(
                [f"img{i:02d}.png", f"case{i:02d}", f"patient{i:02d}", "Synthetic.", "a" if i % 2 else "b"]
            )
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=ThumbnailEncoder())
    report = ingest_path(
        archive, source, load_manifest(source / "manifest.csv", ManifestColumns()), progress=False, workers=0
    )
    assert report.indexed == IMAGES, report
    create_user(archive.catalog, "mara", PASSWORD, "radiologist")
    try:
        with serve_app(create_app(archive=archive)) as url:
            token = httpx.post(f"{url}/token", data={"username": "mara", "password": PASSWORD}).json()
            yield MarksApi(url, archive, {"Authorization": f"Bearer {token['access_token']}"}, _png(rng))
    finally:
        archive.close()


def _put(api: MarksApi, case_id: int, body: dict[str, object]) -> httpx.Response:
    return httpx.put(f"{api.url}/cases/{case_id}/feedback-marks", json=body, headers=api.headers, timeout=60)


def _get(api: MarksApi, case_id: int) -> httpx.Response:
    return httpx.get(f"{api.url}/cases/{case_id}/feedback-marks", headers=api.headers, timeout=60)


def _search_and_refine(api: MarksApi) -> tuple[str, list[int], int]:
    """A search, one refine round with two marks each way: (query_id, hit image ids, a case id)."""
    found = httpx.post(
        f"{api.url}/search",
        files={"file": ("q.png", api.query)},
        data={"k": "8"},
        headers=api.headers,
        timeout=60,
    ).json()
    ids = [h["image_id"] for h in found["hits"]]
    refined = httpx.post(
        f"{api.url}/search/refine",
        data={"query_id": found["query_id"], "positive": ids[:2], "negative": ids[2:4], "k": "8"},
        headers=api.headers,
        timeout=60,
    )
    assert refined.status_code == 200, refined.text
    return found["query_id"], ids, found["hits"][0]["case_id"]


def test_the_marks_of_a_refine_are_saved_with_the_case_read_back_and_audited(api: MarksApi) -> None:
    query_id, ids, case_id = _search_and_refine(api)
    origin = f"query:{query_id}"
    saved = _put(api, case_id, {"origin": origin, "round": 1, "positive": ids[:2], "negative": ids[2:4]})
    assert saved.status_code == 200, saved.text
    read = _get(api, case_id).json()
    assert read == saved.json()
    assert {(m["image_id"], m["relevant"]) for m in read} == {
        (ids[0], True),
        (ids[1], True),
        (ids[2], False),
        (ids[3], False),
    }
    assert all(m["origin"] == origin and m["round"] == 1 and m["username"] == "mara" for m in read)
    assert all(m["at"].endswith("Z") or "+00:00" in m["at"] for m in read)
    _, events = audit_records(api.archive.catalog, action="save_feedback_marks")
    assert events[0].username == "mara" and events[0].outcome == "success"
    assert events[0].object == f"case:{case_id} {origin} round:1 positives:2 negatives:2"
    assert _get(api, case_id).status_code == 200
    assert audit_records(api.archive.catalog, action="view_feedback_marks")[0] >= 1

    # round 2 sends every mark so far; the saved marks of this search become exactly those
    again = _put(api, case_id, {"origin": origin, "round": 2, "positive": [ids[0]], "negative": ids[1:5]})
    assert again.status_code == 200
    assert [(m["image_id"], m["relevant"], m["round"]) for m in _get(api, case_id).json()] == [
        (ids[0], True, 2),
        *sorted((i, False, 2) for i in ids[1:5]),
    ]


def test_marks_of_another_search_are_kept_beside(api: MarksApi) -> None:
    query_id, ids, case_id = _search_and_refine(api)
    assert _put(api, case_id, {"origin": f"query:{query_id}", "positive": [ids[0]]}).status_code == 200
    other = f"image:{ids[5]}"
    assert _put(api, case_id, {"origin": other, "negative": [ids[6]]}).status_code == 200
    origins = {m["origin"] for m in _get(api, case_id).json()}
    assert {f"query:{query_id}", other} <= origins


def test_bad_marks_are_refused_with_the_reason(api: MarksApi) -> None:
    _, ids, case_id = _search_and_refine(api)
    origin = "query:" + "0" * 32
    missing = _put(api, 10**9, {"origin": origin, "positive": [ids[0]]})
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    assert _get(api, 10**9).status_code == 404
    unknown = _put(api, case_id, {"origin": origin, "positive": [10**12]})
    assert unknown.status_code == 422 and "not in the archive" in unknown.json()["detail"]
    both = _put(api, case_id, {"origin": origin, "positive": [ids[0]], "negative": [ids[0]]})
    assert both.status_code == 422 and "marked both" in both.json()["detail"]
    many = _put(api, case_id, {"origin": origin, "positive": list(range(1, MAX_MARKS + 2))})
    assert many.status_code == 422 and f"at most {MAX_MARKS}" in many.json()["detail"]
    assert _put(api, case_id, {"origin": "anything", "positive": [ids[0]]}).status_code == 422
    assert _put(api, case_id, {"origin": origin, "positive": [ids[0]], "extra": 1}).status_code == 422
    no_token = httpx.put(f"{api.url}/cases/{case_id}/feedback-marks", json={"origin": origin})
    assert no_token.status_code == 401
    _, events = audit_records(api.archive.catalog, action="save_feedback_marks")
    assert any(e.outcome != "success" for e in events)  # refused attempts are audited too
