"""The live HTTP API over a real indexed archive: search, cases, thumbnails, health, and 4xx on bad input."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image as PILImage

from tests.conftest import ARCHIVE_ROWS
from tests.helpers import dicom_testfile


def _search(url: str, data: bytes, name: str = "q.dcm", **form: object) -> httpx.Response:
    return httpx.post(
        f"{url}/search", files={"file": (name, data)}, data={k: str(v) for k, v in form.items()}, timeout=120
    )


def test_health_reports_encoder_index_and_catalog(live_api_url: str) -> None:
    health = httpx.get(f"{live_api_url}/health").json()
    assert health["status"] == "ok" and health["catalog_ok"] is True
    assert health["encoder"].startswith("efficientnet_lite0@")
    assert health["index_size"] == len(ARCHIVE_ROWS) == health["catalog_images"]
    assert {"CR", "MR", "US", "CT"} <= set(health["modalities"])


def test_search_hits_carry_their_case_report_and_labels(live_api_url: str) -> None:
    response = _search(live_api_url, dicom_testfile("MR2_J2KI.dcm").read_bytes(), k=4)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["hits"]) == 4
    top = body["hits"][0]
    expected = {row[0].split("/")[1]: row for row in ARCHIVE_ROWS}["MR2_UNCI.dcm"]
    assert top["source_uri"].endswith("MR2_UNCI.dcm")
    assert top["case_key"] == expected[1]
    assert top["report"] == expected[3]
    assert top["diagnosis"] == ["lesion", "follow-up"]
    assert top["modality"] == "MR"
    assert top["similarity"] >= 0.99
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4]
    # prediction: a weighted vote over the neighbours, scores summing to one
    prediction = body["prediction"]
    assert prediction["labeled_neighbours"] == 4
    assert sum(s["score"] for s in prediction["scores"]) == pytest.approx(1.0, abs=1e-6)
    assert prediction["label"] == prediction["scores"][0]["label"]
    # the query preview is a PNG of the decoded query
    preview = base64.b64decode(body["query"]["preview_png_base64"])
    assert PILImage.open(io.BytesIO(preview)).format == "PNG"
    assert body["query"]["modality"] == "MR"

    thumb = httpx.get(f"{live_api_url}{top['thumbnail_url']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert PILImage.open(io.BytesIO(thumb.content)).size[0] <= 256

    case = httpx.get(f"{live_api_url}{top['case_url']}").json()
    assert case["case_key"] == expected[1] and case["report"] == expected[3]
    assert [img["image_id"] for img in case["images"]] == [top["image_id"]]


def test_modality_filter_returns_only_that_modality(live_api_url: str) -> None:
    body = _search(live_api_url, dicom_testfile("RG1_J2KI.dcm").read_bytes(), k=10, modality="mr").json()
    assert body["hits"] and {h["modality"] for h in body["hits"]} == {"MR"}
    body = _search(live_api_url, dicom_testfile("RG1_J2KI.dcm").read_bytes(), k=10, modality="XA").json()
    assert body["hits"] == [] and body["prediction"]["label"] is None


def test_png_query_works(live_api_url: str) -> None:
    from skimage import data as skdata

    buf = io.BytesIO()
    PILImage.fromarray(skdata.retina()).resize((300, 300)).save(buf, format="PNG")
    body = _search(live_api_url, buf.getvalue(), name="fundus.png", k=2).json()
    assert body["hits"][0]["source_uri"].endswith("retina.png")
    assert body["hits"][0]["diagnosis"] == ["retina"]


@pytest.mark.parametrize(
    ("data", "status", "phrase"),
    [
        (b"", 422, "empty"),
        (b"hello, this is text and not an image" * 4, 415, "DICOM"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, ""),
    ],
)
def test_bad_uploads_get_a_4xx_with_a_message(
    live_api_url: str, data: bytes, status: int, phrase: str
) -> None:
    response = _search(live_api_url, data)
    assert response.status_code == status, response.text
    assert phrase in response.json()["detail"]


def test_truncated_dicom_is_a_4xx(live_api_url: str) -> None:
    data = dicom_testfile("CT_small.dcm").read_bytes()[:3000]
    response = _search(live_api_url, data)
    assert response.status_code == 422 and response.json()["detail"]


def test_k_out_of_range_is_a_422(live_api_url: str) -> None:
    data = dicom_testfile("CT_small.dcm").read_bytes()
    assert _search(live_api_url, data, k=0).status_code == 422
    response = _search(live_api_url, data, k=1000)
    assert response.status_code == 422 and "maximum" in response.json()["detail"]


def test_unknown_case_and_image_are_404(live_api_url: str) -> None:
    assert httpx.get(f"{live_api_url}/cases/99999").status_code == 404
    assert httpx.get(f"{live_api_url}/images/99999/thumbnail").status_code == 404
