"""POST /search/refine over a live API: oracle marks raise precision, negatives stay out, 4xx that say why."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
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

PASSWORD = "a long refine password 42"
IMAGES = 40
K = 8


def _png(x: np.ndarray) -> bytes:
    """A 16 x 16 grey PNG whose pixels are the test encoder's vector (its thumbnail is the image)."""
    pixels = np.clip(127.5 + 28 * x, 0, 255).astype(np.uint8).reshape(16, 16)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _archive_and_query(seed: int = 0) -> tuple[list[tuple[str, bytes]], bytes]:
    """Two labels told apart by a weak shared pattern under strong noise; the query leans on the noise,
    so the plain search mixes the labels and the marks are what separate them."""
    rng = np.random.default_rng(seed)
    pattern = np.zeros(256)
    pattern[:64] = 1.0
    images = []
    for i in range(IMAGES):
        label = "alpha" if i % 2 == 0 else "beta"
        x = rng.normal(0, 1, 256) + (0.4 if label == "alpha" else -0.4) * pattern
        images.append((label, _png(x)))
    return images, _png(rng.normal(0, 1, 256) + 0.1 * pattern)


@dataclass
class RefineApi:
    url: str
    app: FastAPI
    archive: Archive
    labels: dict[int, str]  # image id -> its label
    query: bytes
    headers: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefineApi]:
    root = tmp_path_factory.mktemp("refine")
    source = root / "source"
    source.mkdir()
    images, query = _archive_and_query()
    with (source / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
        for i, (label, data) in enumerate(images):
            (source / f"img{i:02d}.png").write_bytes(data)
            writer.writerow([f"img{i:02d}.png", f"case{i:02d}", f"patient{i:02d}", "Synthetic.", label])
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=ThumbnailEncoder())
    report = ingest_path(
        archive, source, load_manifest(source / "manifest.csv", ManifestColumns()), progress=False, workers=0
    )
    assert report.indexed == IMAGES, report
    labels = {
        image.id: case.diagnoses[0].label
        for case in archive.catalog.list_cases(limit=100)[1]
        for image in case.images
    }
    for user in ("alice", "bob"):
        create_user(archive.catalog, user, PASSWORD, "radiologist")
    try:
        app = create_app(archive=archive)
        with serve_app(app) as url:
            headers = {}
            for user in ("alice", "bob"):
                token = httpx.post(f"{url}/token", data={"username": user, "password": PASSWORD}).json()
                headers[user] = {"Authorization": f"Bearer {token['access_token']}"}
            yield RefineApi(url, app, archive, labels, query, headers)
    finally:
        archive.close()


def _search(api: RefineApi, user: str = "alice") -> dict:  # type: ignore[type-arg]
    response = httpx.post(
        f"{api.url}/search",
        files={"file": ("q.png", api.query)},
        data={"k": str(K)},
        headers=api.headers[user],
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _refine(api: RefineApi, user: str = "alice", **form: object) -> httpx.Response:
    return httpx.post(f"{api.url}/search/refine", data=form, headers=api.headers[user], timeout=60)


def _precision(api: RefineApi, ids: list[int]) -> float:
    return sum(api.labels[i] == "alpha" for i in ids) / K


def test_oracle_marks_raise_precision_pin_positives_and_drop_negatives(api: RefineApi) -> None:
    plain = _search(api)
    shown = [h["image_id"] for h in plain["hits"]]
    positive = [i for i in shown if api.labels[i] == "alpha"]
    negative = [i for i in shown if api.labels[i] != "alpha"]
    assert 0 < len(positive) < K  # the plain search mixes the labels: there is something to refine
    response = _refine(api, query_id=plain["query_id"], positive=positive, negative=negative, k=K)
    assert response.status_code == 200, response.text
    body = response.json()
    refined = [h["image_id"] for h in body["hits"]]
    assert len(refined) == K and [h["rank"] for h in body["hits"]] == list(range(1, K + 1))
    assert _precision(api, refined) > _precision(api, shown)
    assert set(refined[: len(positive)]) == set(positive)  # pinned first
    assert not set(refined) & set(negative)  # never shown again
    # beyond pinning: the new images are more relevant than the plain search's next ones
    plain_next = [
        h["image_id"]
        for h in httpx.post(
            f"{api.url}/search",
            files={"file": ("q.png", api.query)},
            data={"k": str(K + len(shown))},
            headers=api.headers["alice"],
            timeout=60,
        ).json()["hits"]
        if h["image_id"] not in shown
    ][: K - len(positive)]
    new = refined[len(positive) :]
    assert sum(api.labels[i] == "alpha" for i in new) > sum(api.labels[i] == "alpha" for i in plain_next)
    # hits keep their similarity to the query image (what the vote was fitted on), and the vote follows
    originals = {h["image_id"]: h["similarity"] for h in plain["hits"]}
    for hit in body["hits"]:
        if hit["image_id"] in originals:
            assert hit["similarity"] == pytest.approx(originals[hit["image_id"]], abs=1e-5)
    assert body["prediction"]["label"] == "alpha"
    assert body["refinement"] == {
        "round": 1,
        "positives": len(positive),
        "negatives": len(negative),
        "pinned": refined[: len(positive)],
        "alpha": 1.0,
        "beta": 2.0,
        "gamma": 0.5,
    }
    # audited with the marks' counts
    _, records = audit_records(api.archive.catalog, username="alice", action="search", limit=5)
    assert any(f"positives:{len(positive)} negatives:{len(negative)}" in (r.object or "") for r in records), [
        r.object for r in records
    ]


def test_refine_by_archived_image_leaves_the_image_out(api: RefineApi) -> None:
    image_id = next(i for i, label in api.labels.items() if label == "beta")
    plain = httpx.post(
        f"{api.url}/search/by-image/{image_id}", data={"k": str(K)}, headers=api.headers["alice"], timeout=60
    ).json()
    shown = [h["image_id"] for h in plain["hits"]]
    positive = [i for i in shown if api.labels[i] == "beta"]
    negative = [i for i in shown if api.labels[i] != "beta"]
    response = _refine(api, image_id=image_id, positive=positive, negative=negative, k=K, round=2)
    assert response.status_code == 200, response.text
    refined = [h["image_id"] for h in response.json()["hits"]]
    assert image_id not in refined and not set(refined) & set(negative)
    assert response.json()["refinement"]["round"] == 2


def test_unknown_expired_and_foreign_queries_are_404(api: RefineApi) -> None:
    assert _refine(api, query_id="0" * 32, positive=[1]).status_code == 404
    plain = _search(api)
    foreign = _refine(api, user="bob", query_id=plain["query_id"], positive=[plain["hits"][0]["image_id"]])
    assert foreign.status_code == 404 and "search again" in foreign.json()["detail"]
    store = api.app.state.explainer.queries  # the kept queries: expire them by moving its clock on
    kept = _search(api)
    clock = store._clock
    store._clock = lambda: clock() + store.ttl_s + 1
    try:
        expired = _refine(api, query_id=kept["query_id"], positive=[kept["hits"][0]["image_id"]])
    finally:
        store._clock = clock
    assert expired.status_code == 404 and "expired" in expired.json()["detail"]
    assert _refine(api, query_id="zz", positive=[1]).status_code == 422  # not a query id at all


def test_bad_marks_are_422_saying_what_to_do(api: RefineApi) -> None:
    plain = _search(api)
    qid = plain["query_id"]
    first = plain["hits"][0]["image_id"]
    both = _refine(api, query_id=qid, positive=[first], negative=[first])
    assert both.status_code == 422 and "mark each once" in both.json()["detail"]
    unknown = _refine(api, query_id=qid, positive=[999_999])
    assert unknown.status_code == 422 and "mark only neighbours" in unknown.json()["detail"]
    many = _refine(api, query_id=qid, positive=list(range(MAX_MARKS + 1)))
    assert many.status_code == 422 and f"at most {MAX_MARKS}" in many.json()["detail"]
    neither = _refine(api, positive=[first])
    assert neither.status_code == 422 and "query_id" in neither.json()["detail"]


def test_the_ui_client_refines_and_says_what_went_wrong(api: RefineApi) -> None:
    from ui.client import ApiClient, ApiError

    token = api.headers["alice"]["Authorization"].split()[1]
    with ApiClient(api.url, token=token) as client:
        plain = client.search(api.query, "q.png", k=K)
        shown = [h.image_id for h in plain.hits]
        positive = [i for i in shown if api.labels[i] == "alpha"]
        negative = [i for i in shown if api.labels[i] != "alpha"]
        refined = client.refine(
            query_id=plain.query_id, image_id=None, positive=positive, negative=negative, round_number=1
        )
        assert refined.refinement is not None and refined.refinement.positives == len(positive)
        assert not {h.image_id for h in refined.hits} & set(negative)
        with pytest.raises(ApiError, match="mark each once") as caught:
            client.refine(query_id=plain.query_id, image_id=None, positive=shown[:1], negative=shown[:1])
        assert caught.value.status_code == 422


def test_min_similarity_judges_the_similarity_to_the_query_image(api: RefineApi) -> None:
    plain = _search(api)
    shown = [h["image_id"] for h in plain["hits"]]
    floor = sorted(h["similarity"] for h in plain["hits"])[K // 2]
    positive = [i for i in shown if api.labels[i] == "alpha"]
    negative = [i for i in shown if api.labels[i] != "alpha"]
    body = _refine(
        api, query_id=plain["query_id"], positive=positive, negative=negative, k=K, min_similarity=floor
    ).json()
    assert body["hits"] and all(h["similarity"] >= floor - 1e-6 for h in body["hits"])
    assert len(body["hits"]) < K  # the floor cut some of the refined list
