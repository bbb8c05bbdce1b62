"""POST /search/series over a live API: multi-frame DICOM stored frame by frame, queried with some slices."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from imaging import iter_frames
from indexer.archive import Archive
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from indexer.settings import IndexerSettings
from search_api import series as series_module
from search_api.app import create_app
from tests.helpers import ThumbnailEncoder, dicom_testfile, serve_app

PASSWORD = "a long series password 99"
MR, US = "emri_small.dcm", "examples_ybr_color.dcm"


@dataclass
class SeriesApi:
    url: str
    archive: Archive
    headers: dict[str, str]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeriesApi]:
    root = tmp_path_factory.mktemp("series")
    source = root / "source"
    source.mkdir()
    for name in (MR, US):
        (source / name).write_bytes(dicom_testfile(name).read_bytes())
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=ThumbnailEncoder())
    report = ingest_path(archive, source, progress=False, workers=0, frames="all")
    assert report.indexed == 40, report  # 10 MR frames, 30 ultrasound frames
    create_user(archive.catalog, "alice", PASSWORD, "radiologist")
    try:
        with serve_app(create_app(archive=archive)) as url:
            token = httpx.post(f"{url}/token", data={"username": "alice", "password": PASSWORD}).json()
            yield SeriesApi(url, archive, {"Authorization": f"Bearer {token['access_token']}"})
    finally:
        archive.close()


def _frame_png(name: str, index: int) -> bytes:
    frames = list(iter_frames(str(dicom_testfile(name))))
    pixels = np.rint(frames[index].pixels * 255).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(api: SeriesApi, files: list[tuple[str, bytes]], **form: str) -> httpx.Response:
    return httpx.post(
        f"{api.url}/search/series",
        files=[("files", f) for f in files],
        data=form,
        headers=api.headers,
        timeout=120,
    )


def _frame_of(api: SeriesApi, image_id: int) -> int:
    row = api.archive.catalog.image(image_id)
    assert row is not None
    return row.frame_index


def test_some_slices_find_their_series_with_the_right_pairs(api: SeriesApi) -> None:
    chosen = [2, 5, 8]
    response = _post(api, [(f"s{i}.png", _frame_png(MR, i)) for i in chosen], k="2")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query_slices"] == 3 and body["series_indexed"] == 2
    top = body["hits"][0]
    assert top["slices"] == 10 and top["rank"] == 1
    assert top["score"] > body["hits"][1]["score"]
    pairs = {p["query_slice"]: _frame_of(api, p["image_id"]) for p in top["pairs"]}
    assert pairs == {0: 2, 1: 5, 2: 8}


def test_a_multi_frame_file_is_a_series_query(api: SeriesApi) -> None:
    body = _post(api, [("us.dcm", dicom_testfile(US).read_bytes())], k="1").json()
    assert body["query_slices"] == 30 and body["hits"][0]["slices"] == 30


def test_mixed_modalities_and_too_many_slices_are_422(
    api: SeriesApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed = _post(
        api, [("a.dcm", dicom_testfile(MR).read_bytes()), ("b.dcm", dicom_testfile(US).read_bytes())]
    )
    assert mixed.status_code == 422 and "mix modalities" in mixed.json()["detail"]
    monkeypatch.setattr(series_module, "MAX_SLICES", 5)
    many = _post(api, [("a.dcm", dicom_testfile(MR).read_bytes())])
    assert many.status_code == 422 and "more than 5 slices" in many.json()["detail"]


def test_the_page_of_files_must_be_images(api: SeriesApi, tmp_path: Path) -> None:
    bad = _post(api, [("x.txt", b"not an image at all")])
    assert bad.status_code in (415, 422)


def test_the_ui_client_searches_series(api: SeriesApi) -> None:
    from ui.client import ApiClient, ApiError

    with ApiClient(api.url, token=api.headers["Authorization"].split()[1]) as client:
        result = client.search_series([(f"s{i}.png", _frame_png(MR, i)) for i in (1, 6)], k=1)
        assert result.hits[0].slices == 10 and len(result.hits[0].pairs) == 2
        with pytest.raises(ApiError, match="mix modalities"):
            client.search_series(
                [("a.dcm", dicom_testfile(MR).read_bytes()), ("b.dcm", dicom_testfile(US).read_bytes())]
            )
