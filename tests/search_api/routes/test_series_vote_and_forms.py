"""POST /search/series over a live API: the hits' vote and uncertainty, a zip of DICOM slices, and the 4xx limits."""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.uid import generate_uid

from indexer.archive import Archive
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.prediction.vote import vote_labels
from indexer.settings import IndexerSettings
from search_api import series as series_module
from search_api.app import create_app
from search_api.series import SeriesTooLargeError, expand_zips
from tests.helpers import ThumbnailEncoder, dicom_testfile, serve_app

PASSWORD = "a long series vote password 7"
MR, US = "emri_small.dcm", "examples_ybr_color.dcm"


@dataclass
class SeriesApi:
    url: str
    archive: Archive
    headers: dict[str, str]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeriesApi]:
    root = tmp_path_factory.mktemp("series_vote")
    source = root / "source"
    source.mkdir()
    for name in (MR, US):
        (source / name).write_bytes(dicom_testfile(name).read_bytes())
    manifest = root / "manifest.csv"
    manifest.write_text(f"filename,diagnosis\n{MR},tumour\n{US},normal\n")
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=ThumbnailEncoder())
    columns = ManifestColumns(diagnosis="diagnosis")
    report = ingest_path(
        archive, source, load_manifest(manifest, columns), progress=False, workers=0, frames="all"
    )
    assert report.indexed == 40, report
    create_user(archive.catalog, "vera", PASSWORD, "radiologist")
    try:
        with serve_app(create_app(archive=archive)) as url:
            token = httpx.post(f"{url}/token", data={"username": "vera", "password": PASSWORD}).json()
            yield SeriesApi(url, archive, {"Authorization": f"Bearer {token['access_token']}"})
    finally:
        archive.close()


def _post(api: SeriesApi, files: list[tuple[str, bytes]], **form: str) -> httpx.Response:
    return httpx.post(
        f"{api.url}/search/series",
        files=[("files", f) for f in files],
        data=form,
        headers=api.headers,
        timeout=120,
    )


def _mr_slices() -> list[bytes]:
    """The MR multi-frame object cut into single-frame DICOM files (one per frame, the same series)."""
    whole = pydicom.dcmread(dicom_testfile(MR))
    size = whole.Rows * whole.Columns * whole.BitsAllocated // 8
    out = []
    for i in range(int(whole.NumberOfFrames)):
        part = pydicom.dcmread(dicom_testfile(MR))
        part.NumberOfFrames = 1
        part.PixelData = whole.PixelData[i * size : (i + 1) * size]
        part.SOPInstanceUID = part.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        part.InstanceNumber = i + 1
        buffer = io.BytesIO()
        part.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_hits_vote_their_cases_diagnoses_under_the_search_rules(api: SeriesApi) -> None:
    body = _post(api, [("mr.dcm", dicom_testfile(MR).read_bytes())], k="2").json()
    top, second = body["hits"]
    assert top["diagnosis"] == ["tumour"] and second["diagnosis"] == ["normal"]
    expected = vote_labels([(top["score"], ["tumour"]), (second["score"], ["normal"])])
    prediction = body["prediction"]
    assert prediction["label"] == "tumour" == expected.scores[0][0]
    assert prediction["confidence"] == pytest.approx(expected.scores[0][1])
    assert [s["label"] for s in prediction["scores"]] == ["tumour", "normal"]
    assert prediction["labeled_neighbours"] == 2
    assert prediction["top_similarity"] == pytest.approx(top["score"])
    assert prediction["uncertain"] is False, prediction
    assert body["modality"] == "MR"


def test_a_series_unlike_any_stored_one_is_flagged_out_of_distribution(api: SeriesApi) -> None:
    rng = np.random.default_rng(3)
    noise = [(f"n{i}.png", _png(rng.integers(0, 255, (64, 64), dtype=np.uint8))) for i in range(3)]
    body = _post(api, noise, k="2").json()
    prediction = body["prediction"]
    assert body["hits"][0]["score"] < 0.5
    assert prediction["uncertain"] is True
    assert prediction["uncertain_reason"].startswith("out_of_distribution"), prediction


def test_a_zip_of_dicom_slices_is_a_series_with_its_pairs_and_previews(api: SeriesApi) -> None:
    slices = _mr_slices()
    chosen = [1, 4, 7]
    members = {f"series/slice{i:02d}.dcm": slices[i] for i in chosen}
    members["__MACOSX/._slice01.dcm"] = b"resource fork"  # debris that archivers add is skipped
    response = _post(api, [("mr.zip", _zip(members))], k="2", pairs="3")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query_slices"] == 3
    top = body["hits"][0]
    assert top["diagnosis"] == ["tumour"] and top["slices"] == 10
    frames = {}
    for pair in top["pairs"]:
        row = api.archive.catalog.image(pair["image_id"])
        assert row is not None
        frames[pair["query_slice"]] = row.frame_index
    assert frames == dict(enumerate(chosen))
    previews = {p["query_slice"]: p for p in body["query_previews"]}
    assert set(previews) == {0, 1, 2}
    assert previews[0]["name"] == "mr.zip/series/slice01.dcm"
    assert PILImage.open(io.BytesIO(base64.b64decode(previews[0]["png_base64"]))).size == (64, 64)


def test_the_pairs_field_sets_how_many_pairs_a_hit_names(api: SeriesApi) -> None:
    body = _post(api, [("mr.dcm", dicom_testfile(MR).read_bytes())], k="1", pairs="6").json()
    assert len(body["hits"][0]["pairs"]) == 6
    too_many = _post(api, [("mr.dcm", dicom_testfile(MR).read_bytes())], pairs="21")
    assert too_many.status_code == 422


def test_a_zip_member_that_is_not_dicom_is_415_naming_it(api: SeriesApi) -> None:
    slices = _mr_slices()
    members = {"a.dcm": slices[0], "notes.txt": b"not a slice", "b.dcm": slices[1]}
    response = _post(api, [("mr.zip", _zip(members))])
    assert response.status_code == 415, response.text
    assert "'notes.txt' is not a DICOM file" in response.json()["detail"]
    png = _post(api, [("p.zip", _zip({"a.png": _png(np.zeros((8, 8), np.uint8))}))])
    assert png.status_code == 415 and "DICOM slices only" in png.json()["detail"]


def test_a_zip_with_more_members_than_slices_allowed_is_422_before_reading(
    api: SeriesApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(series_module, "MAX_SLICES", 4)
    members = {f"s{i}.dcm": b"x" for i in range(5)}  # never read: refused from the member count
    response = _post(api, [("many.zip", _zip(members))])
    assert response.status_code == 422
    assert "holds 5 files: more than 4 slices" in response.json()["detail"]


def test_a_multi_frame_file_over_the_slice_limit_is_422_from_its_header(
    api: SeriesApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(series_module, "MAX_SLICES", 20)
    response = _post(api, [("us.dcm", dicom_testfile(US).read_bytes())])  # 30 frames
    assert response.status_code == 422 and "more than 20 slices" in response.json()["detail"]


def test_a_zip_bomb_member_is_413(api: SeriesApi) -> None:
    bomb = _zip({"a.dcm": _mr_slices()[0], "bomb.dcm": bytes(8 * 1024 * 1024)})  # 8 MiB of zeros, ~1000x
    response = _post(api, [("bomb.zip", bomb)])
    assert response.status_code == 413, response.text
    assert (
        "bomb" in response.json()["detail"]
        and "MEDCBIR_ARCHIVE_MAX_MEMBER_RATIO" in response.json()["detail"]
    )


def test_a_zip_whose_members_inflate_past_the_upload_limit_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    head = bytes(128) + b"DICM"  # past the format check, so only the size budget stops it
    members = {f"m{i}.dcm": head + rng.integers(0, 4, 200_000, dtype=np.uint8).tobytes() for i in range(3)}
    packed = _zip(members)
    assert len(packed) < 300_000  # the zip itself passes the upload limit
    with pytest.raises(SeriesTooLargeError, match="inflates past 300,000 bytes"):
        list(expand_zips([("big.zip", packed)], max_members=500, max_total_bytes=300_000))


def test_a_broken_zip_is_422(api: SeriesApi) -> None:
    good = _zip({"a.dcm": _mr_slices()[0]}, compression=zipfile.ZIP_STORED)
    broken = good[:60] + bytes(len(good) - 200) + good[-140:]  # the directory survives, the data does not
    response = _post(api, [("broken.zip", broken)])
    assert response.status_code in (415, 422), response.text


def test_an_empty_file_and_a_non_image_are_refused(api: SeriesApi) -> None:
    assert _post(api, [("e.dcm", b"")]).status_code == 422
    text = _post(api, [("x.txt", b"plain words, no image")])
    assert text.status_code == 415 and "supported formats" in text.json()["detail"]


class _CountingEncoder(ThumbnailEncoder):
    """The test encoder, counting how many frames each embed call held at once."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, images):  # type: ignore[no-untyped-def]
        self.calls.append(len(images))
        return super().embed(images)


def test_frames_are_embedded_in_batches_held_under_the_decode_budget(api: SeriesApi) -> None:
    from types import SimpleNamespace

    from search_api.series import SeriesSearcher

    data = [("us.dcm", dicom_testfile(US).read_bytes())]  # 30 colour frames of 240 x 320
    frame = 240 * 320 * 3  # samples; the batch holds up to 3 x the budget in float RGB values
    for budget, most in ((None, 30), (frame, 3), (2 * frame, 6)):
        encoder = _CountingEncoder()
        archive = SimpleNamespace(encoder=encoder, catalog=api.archive.catalog, index=api.archive.index)
        searcher = SimpleNamespace(archive=archive, max_pixels=budget, predictors=lambda: _predictors())
        result = SeriesSearcher(searcher).search(data, k=1)  # type: ignore[arg-type]
        assert result.query_slices == 30 and result.hits[0].slices == 30
        assert sum(encoder.calls) == 30 and max(encoder.calls) == min(most, 32), (budget, encoder.calls)


def _predictors():  # type: ignore[no-untyped-def]
    from search_api.predictions import Predictors

    return Predictors()
