"""Explanation endpoints over a live secured API with the real lite0 encoder: PNG maps that follow the object."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import httpx
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image as PILImage

from embeddings import ImageEncoder
from indexer.archive import Archive
from indexer.governance.accounts import create_user
from indexer.governance.audit import audit_records
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.prediction.versions import train_predictors
from indexer.settings import IndexerSettings
from search_api.app import create_app
from search_api.explanations import Explainer, QueryStore
from search_api.searcher import NotFoundError
from tests.helpers import dicom_testfile, serve_app

PASSWORD = "a long explanation password 7"
SIZE = 256
GAP = 6  # between the query and neighbour panels
PLACES = {"left": (128, 70), "right": (128, 186), "top": (70, 128), "bottom": (186, 128)}


def _disc() -> npt.NDArray[np.float32]:
    yy, xx = np.mgrid[:96, :96]
    patch = (0.6 + 0.35 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.float32)
    patch[(xx - 47.5) ** 2 + (yy - 47.5) ** 2 > 46.0**2] = 0.05
    return patch


def _ct() -> npt.NDArray[np.float32]:
    raw = pydicom.dcmread(dicom_testfile("CT_small.dcm")).pixel_array.astype(np.float32)
    return ((raw - raw.min()) / max(float(raw.max() - raw.min()), 1.0))[16:112, 16:112]


def _png(patch: npt.NDArray[np.float32], place: str) -> bytes:
    """A grey 256 x 256 PNG, dark, with the patch centred at `place`: overlays are the only colour."""
    canvas = np.full((SIZE, SIZE), 0.05, dtype=np.float32)
    row, col = PLACES[place]
    canvas[row - 48 : row + 48, col - 48 : col + 48] = patch
    buffer = io.BytesIO()
    PILImage.fromarray(np.rint(canvas * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class ExplainedApi:
    url: str
    archive: Archive
    data_dir: Path
    image_ids: dict[str, int]  # "disc-left" -> image id
    sources: dict[str, bytes]
    headers: dict[str, dict[str, str]]  # per user


def build_explained_archive(
    root: Path, encoder: ImageEncoder
) -> tuple[Archive, dict[str, int], dict[str, bytes]]:
    """Eight grey PNGs (a textured disc and a real CT patch, each at four places, one patient each, labeled
    "disc" or "ct") indexed with `encoder`; the archive, image ids and file bytes by name ("disc-left")."""
    source = root / "source"
    source.mkdir()
    sources: dict[str, bytes] = {}
    with (source / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
        for kind, patch in (("disc", _disc()), ("ct", _ct())):
            for place in PLACES:
                name = f"{kind}-{place}"
                sources[name] = _png(patch, place)
                (source / f"{name}.png").write_bytes(sources[name])
                writer.writerow([f"{name}.png", name, f"P-{name}", "Synthetic.", kind])
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=encoder)
    manifest = load_manifest(source / "manifest.csv", ManifestColumns())
    report = ingest_path(archive, source, manifest, progress=False, workers=0)
    assert report.indexed == len(sources), report
    image_ids = {case.case_key: case.images[0].id for case in archive.catalog.list_cases(limit=50)[1]}
    return archive, image_ids, sources


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, real_encoder) -> Iterator[ExplainedApi]:  # type: ignore[no-untyped-def]
    """The explained archive behind a live API, with two radiologists."""
    root = tmp_path_factory.mktemp("explain")
    archive, image_ids, sources = build_explained_archive(root, real_encoder)
    for user in ("alice", "bob"):
        create_user(archive.catalog, user, PASSWORD, "radiologist")
    try:
        with serve_app(create_app(archive=archive)) as url:
            headers = {}
            for user in ("alice", "bob"):
                token = httpx.post(f"{url}/token", data={"username": user, "password": PASSWORD}).json()
                headers[user] = {"Authorization": f"Bearer {token['access_token']}"}
            yield ExplainedApi(url, archive, root / "data", image_ids, sources, headers)
    finally:
        archive.close()


def _colour_centre(panel: npt.NDArray[np.uint8]) -> tuple[float, float]:
    """(row, column) centre of mass of the overlay's colour, as fractions: the base image is grey."""
    rgb = panel.astype(np.float64)
    colour = rgb.max(axis=2) - rgb.min(axis=2)
    assert colour.sum() > 0, "no overlay colour"
    rows, cols = np.mgrid[: colour.shape[0], : colour.shape[1]]
    return float((rows * colour).sum() / colour.sum()) / colour.shape[0], float(
        (cols * colour).sum() / colour.sum()
    ) / colour.shape[1]


def _share_on_object(panel: npt.NDArray[np.uint8], place: str, margin: int = 16) -> float:
    """The share of the overlay's colour inside the object's square (plus a margin for the upsampling)."""
    rgb = panel.astype(np.float64)
    colour = rgb.max(axis=2) - rgb.min(axis=2)
    row, col = PLACES[place]
    half = 48 + margin
    inside = colour[max(row - half, 0) : row + half, max(col - half, 0) : col + half].sum()
    return float(inside / colour.sum())


def _decode(response: httpx.Response) -> npt.NDArray[np.uint8]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = PILImage.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def _panels(response: httpx.Response) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    pair = _decode(response)
    assert pair.shape == (SIZE, 2 * SIZE + GAP, 3)  # 256 px images are never upscaled
    return pair[:, :SIZE], pair[:, SIZE + GAP :]


def _search(api: ExplainedApi, name: str, user: str = "alice") -> dict:  # type: ignore[type-arg]
    response = httpx.post(
        f"{api.url}/search",
        files={"file": (f"{name}.png", api.sources[name])},
        data={"k": "8"},
        headers=api.headers[user],
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body: dict = response.json()  # type: ignore[type-arg]
    assert len(body["query_id"]) == 32
    return body


def test_similarity_map_of_a_search_follows_the_object(api: ExplainedApi) -> None:
    for here, there in (("left", "right"), ("right", "left")):
        body = _search(api, f"disc-{here}")
        hit = next(h for h in body["hits"] if h["case_key"] == f"disc-{there}")
        response = httpx.get(
            f"{api.url}/queries/{body['query_id']}/similarity/{hit['image_id']}",
            headers=api.headers["alice"],
            timeout=120,
        )
        query_panel, neighbour_panel = _panels(response)
        # the score the map explains is the score the search ranked by
        assert float(response.headers["x-medcbir-score"]) == pytest.approx(hit["similarity"], abs=2e-3)
        query_col = _colour_centre(query_panel)[1]
        neighbour_col = _colour_centre(neighbour_panel)[1]
        assert (query_col < 0.4) if here == "left" else (query_col > 0.6), (here, query_col)
        assert (neighbour_col < 0.4) if there == "left" else (neighbour_col > 0.6), (there, neighbour_col)


def test_similarity_of_two_archived_images_follows_the_object(api: ExplainedApi) -> None:
    for kind in ("disc", "ct"):
        top, bottom = api.image_ids[f"{kind}-top"], api.image_ids[f"{kind}-bottom"]
        response = httpx.get(
            f"{api.url}/images/{top}/similarity/{bottom}",
            params={"max_side": 128},
            headers=api.headers["bob"],
            timeout=120,
        )
        pair = _decode(response)
        assert pair.shape == (128, 2 * 128 + GAP, 3)
        first, second = pair[:, :128], pair[:, 128 + GAP :]
        assert _colour_centre(first)[0] < 0.4
        assert _colour_centre(second)[0] > 0.6


def test_queries_belong_to_their_user(api: ExplainedApi) -> None:
    body = _search(api, "ct-left")
    image_id = body["hits"][0]["image_id"]
    path = f"{api.url}/queries/{body['query_id']}/similarity/{image_id}"
    assert httpx.get(path, headers=api.headers["alice"], timeout=120).status_code == 200
    other = httpx.get(path, headers=api.headers["bob"], timeout=120)
    assert other.status_code == 404 and "search again" in other.json()["detail"]
    # both are audited as explanations of that query and image, the refusal as rejected
    _, rows = audit_records(api.archive.catalog, action="explain", limit=5)
    mine = [r for r in rows if r.object == f"query:{body['query_id']} image:{image_id}"]
    assert [(r.username, r.outcome, r.status) for r in mine[:2]] == [
        ("bob", "rejected", 404),
        ("alice", "success", 200),
    ]
    assert httpx.get(path, timeout=120).status_code == 401
    unknown_image = httpx.get(
        f"{api.url}/queries/{body['query_id']}/similarity/999999", headers=api.headers["alice"], timeout=120
    )
    assert unknown_image.status_code == 404
    unknown_query = httpx.get(
        f"{api.url}/queries/{'a' * 32}/similarity/{image_id}", headers=api.headers["alice"], timeout=120
    )
    assert unknown_query.status_code == 404
    malformed = httpx.get(
        f"{api.url}/queries/not-an-id/similarity/{image_id}", headers=api.headers["alice"], timeout=120
    )
    assert malformed.status_code == 422
    # the search by an archived image names its query by image id instead
    by_image = httpx.post(
        f"{api.url}/search/by-image/{image_id}", data={"k": "2"}, headers=api.headers["alice"], timeout=120
    )
    assert by_image.status_code == 200 and by_image.json()["query_id"] is None


def test_grad_cam_needs_a_head_then_follows_the_object(api: ExplainedApi) -> None:
    left, right = api.image_ids["disc-left"], api.image_ids["disc-right"]
    missing = httpx.get(f"{api.url}/images/{left}/gradcam", headers=api.headers["alice"], timeout=120)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no trained head: run medcbir train-head"

    trained = train_predictors(api.archive.catalog, api.archive.encoder.name, api.data_dir)
    assert trained.head is not None and sorted(trained.head.labels) == ["ct", "disc"]

    centres = {}
    for place in PLACES:
        response = httpx.get(
            f"{api.url}/images/{api.image_ids[f'disc-{place}']}/gradcam",
            params={"label": "disc"},
            headers=api.headers["alice"],
            timeout=120,
        )
        heat = _decode(response)
        assert heat.shape == (SIZE, SIZE, 3)
        assert 0.0 <= float(response.headers["x-medcbir-score"]) <= 1.0
        assert response.headers["x-medcbir-label"] == "disc"
        centres[place] = _colour_centre(heat)
        # the class evidence lies mostly on the disc (its square is a quarter of the image)
        assert _share_on_object(heat, place) > 0.6, place
    # and it moves with the disc
    assert centres["left"][1] < 0.45 < 0.55 < centres["right"][1], centres
    assert centres["top"][0] < 0.45 < 0.55 < centres["bottom"][0], centres

    # a query's Grad-CAM; the default class is the head's top class for the image
    body = _search(api, "disc-right")
    default = httpx.get(
        f"{api.url}/queries/{body['query_id']}/gradcam", headers=api.headers["alice"], timeout=120
    )
    assert _share_on_object(_decode(default), "right") > 0.6
    assert default.headers["x-medcbir-label"] in trained.head.labels
    unknown = httpx.get(
        f"{api.url}/images/{right}/gradcam",
        params={"label": "nope"},
        headers=api.headers["alice"],
        timeout=120,
    )
    assert unknown.status_code == 422 and "ct, disc" in unknown.json()["detail"]


def test_query_store_bounds_entries_bytes_and_age() -> None:
    now = [0.0]
    store = QueryStore(max_entries=2, max_bytes=10, ttl_s=60.0, clock=lambda: now[0])
    first, second = store.put("a", b"1234"), store.put("a", b"5678")
    assert first and second and store.get(first, "a") == b"1234"
    third = store.put("a", b"9")  # over 2 entries: the least recently used (second) goes
    assert third is not None
    with pytest.raises(NotFoundError):
        store.get(second, "a")
    assert store.put("a", b"x" * 11) is None  # alone over the byte budget: not kept
    store.put("b", b"123456")  # 4 + 1 + 6 > 10 bytes: the oldest (first) goes
    with pytest.raises(NotFoundError):
        store.get(first, "a")
    with pytest.raises(NotFoundError):
        store.get(third, "b")  # another owner
    now[0] = 61.0
    with pytest.raises(NotFoundError):
        store.get(third, "a")  # expired
    assert len(store) == 0


def test_an_image_whose_source_is_gone_is_explained_from_its_thumbnail(api: ExplainedApi) -> None:
    image_id = api.image_ids["ct-top"]
    row = api.archive.catalog.image(image_id)
    assert row is not None and row.thumbnail_path
    source = Path(url2pathname(urlparse(row.source_uri).path))
    thumbnail = api.archive.settings.thumbnail_dir / row.thumbnail_path
    explainer = Explainer(api.archive)
    moved = source.with_suffix(".moved")
    source.rename(moved)
    try:
        pixels = explainer.image_pixels(image_id)
        assert pixels.shape == (SIZE, SIZE, 3)
        other = explainer.image_pixels(api.image_ids["ct-bottom"])
        assert explainer.similarity(pixels, other).score > 0.5
        hidden = thumbnail.with_suffix(".hidden")
        thumbnail.rename(hidden)
        try:
            with pytest.raises(NotFoundError, match="source file and thumbnail are gone"):
                explainer.image_pixels(image_id)
        finally:
            hidden.rename(thumbnail)
    finally:
        moved.rename(source)
