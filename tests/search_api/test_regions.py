"""Region queries (box=) over a live API with the real lite0 encoder: the region decides, and is located."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image as PILImage

from indexer.archive import Archive
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from search_api.app import create_app
from tests.helpers import serve_app

data = pytest.importorskip("skimage.data", reason="scikit-image (the demo extra) provides the test pictures")

PASSWORD = "a long region password 17"
SIDE = 256
NAMES = ("camera", "astronaut", "coins", "coffee", "chelsea", "rocket", "moon", "brick")
INNER = (64, 64, 192, 192)  # the part of the astronaut the query shows, in the archived image's pixels


def _picture(name: str) -> npt.NDArray[np.uint8]:
    image = PILImage.fromarray(getattr(data, name)()).convert("RGB").resize((SIDE, SIDE))
    return np.asarray(image)


def _png(pixels: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class RegionApi:
    url: str
    ids: dict[str, int]
    headers: dict[str, str]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, real_encoder) -> Iterator[RegionApi]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("regions")
    source = root / "source"
    source.mkdir()
    with (source / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
        for name in NAMES:
            (source / f"{name}.png").write_bytes(_png(_picture(name)))
            writer.writerow([f"{name}.png", name, f"patient-{name}", "Picture.", name])
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=real_encoder)
    manifest = load_manifest(source / "manifest.csv", ManifestColumns())
    assert ingest_path(archive, source, manifest, progress=False, workers=0).indexed == len(NAMES)
    ids = {case.case_key: case.images[0].id for case in archive.catalog.list_cases(limit=50)[1]}
    create_user(archive.catalog, "alice", PASSWORD, "radiologist")
    try:
        with serve_app(create_app(archive=archive)) as url:
            token = httpx.post(f"{url}/token", data={"username": "alice", "password": PASSWORD}).json()
            yield RegionApi(url, ids, {"Authorization": f"Bearer {token['access_token']}"})
    finally:
        archive.close()


def _search(api: RegionApi, image: bytes, **form: object) -> httpx.Response:
    return httpx.post(
        f"{api.url}/search",
        files={"file": ("q.png", image)},
        data={k: str(v) for k, v in form.items()},
        headers=api.headers,
        timeout=120,
    )


def test_the_region_decides_the_neighbours_and_is_located_in_them(api: RegionApi) -> None:
    # a cat picture with a piece of the astronaut pasted into its top-left quarter
    canvas = _picture("chelsea").copy()
    x0, y0, x1, y1 = INNER
    canvas[0:128, 0:128] = _picture("astronaut")[y0:y1, x0:x1]
    whole = _search(api, _png(canvas), k=3).json()
    assert whole["hits"][0]["case_key"] == "chelsea" and whole["hits"][0]["region"] is None
    response = _search(api, _png(canvas), k=3, box="0,0,128,128")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["box"] == [0, 0, 128, 128]
    top = body["hits"][0]
    assert top["case_key"] == "astronaut"
    region = top["region"]
    assert region["rows"] == SIDE and region["columns"] == SIDE
    bx0, by0, bx1, by1 = region["box"]
    assert 0 <= bx0 < bx1 <= SIDE and 0 <= by0 < by1 <= SIDE
    # the located box holds the middle of the pasted part of the astronaut
    assert bx0 <= 128 <= bx1 and by0 <= 128 <= by1
    assert all(h["region"] is not None for h in body["hits"])


def test_a_crop_of_an_archived_image_finds_that_image_first(api: RegionApi) -> None:
    for name in ("camera", "rocket", "coffee"):
        body = _search(api, _png(_picture(name)), k=2, box="64,64,192,192").json()
        assert body["hits"][0]["case_key"] == name, (name, [h["case_key"] for h in body["hits"]])


def test_by_image_with_a_box_searches_the_region_and_leaves_the_image_out(api: RegionApi) -> None:
    image_id = api.ids["astronaut"]
    response = httpx.post(
        f"{api.url}/search/by-image/{image_id}",
        data={"k": "3", "box": "64,64,192,192"},
        headers=api.headers,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["image_id"] == image_id and body["query"]["box"] == [64, 64, 192, 192]
    assert image_id not in [h["image_id"] for h in body["hits"]]
    assert all(h["region"] is not None for h in body["hits"])


@pytest.mark.parametrize(
    ("box", "phrase"),
    [
        ("0,0,300,100", "outside the 256 x 256 image"),
        ("10,10,11,11", "at least 8 x 8"),
        ("10,10,12", "four whole pixel numbers"),
        ("50,10,20,40", "right edge must exceed"),
    ],
)
def test_a_bad_box_is_422_saying_what_to_do(api: RegionApi, box: str, phrase: str) -> None:
    response = _search(api, _png(_picture("camera")), box=box)
    assert response.status_code == 422 and phrase in response.json()["detail"]
    by_image = httpx.post(
        f"{api.url}/search/by-image/{api.ids['camera']}", data={"box": box}, headers=api.headers, timeout=60
    )
    assert by_image.status_code == 422 and phrase in by_image.json()["detail"]


def test_refining_a_region_search_keeps_the_region(api: RegionApi) -> None:
    canvas = _picture("chelsea").copy()
    x0, y0, x1, y1 = INNER
    canvas[0:128, 0:128] = _picture("astronaut")[y0:y1, x0:x1]
    first = _search(api, _png(canvas), k=3, box="0,0,128,128").json()
    top = first["hits"][0]["image_id"]
    response = httpx.post(
        f"{api.url}/search/refine",
        data={"query_id": first["query_id"], "positive": [str(top)], "k": "3", "box": "0,0,128,128"},
        headers=api.headers,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["box"] == [0, 0, 128, 128]
    assert body["hits"][0]["image_id"] == top and body["hits"][0]["case_key"] == "astronaut"
    # the similarity shown is the region's, as in the region search
    assert body["hits"][0]["similarity"] == pytest.approx(first["hits"][0]["similarity"], abs=1e-4)
    outside = httpx.post(
        f"{api.url}/search/refine",
        data={"query_id": first["query_id"], "positive": [str(top)], "box": "0,0,999,128"},
        headers=api.headers,
        timeout=60,
    )
    assert outside.status_code == 422 and "outside" in outside.json()["detail"]
