"""The live HTTP API over a real indexed archive: search, cases, thumbnails, health, and 4xx on bad input."""

from __future__ import annotations

import base64
import io
from importlib.util import find_spec

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from embeddings.settings import configured_backend
from tests.conftest import ARCHIVE_ROWS
from tests.helpers import dicom_testfile

API = httpx.Client(timeout=120)  # signed in as the admin (who sees source paths) by the fixture below


@pytest.fixture(autouse=True)
def _signed_in(admin_headers: dict[str, str]) -> None:
    """Every request of this module carries the admin's bearer token."""
    API.headers.update(admin_headers)


def _search(url: str, data: bytes, name: str = "q.dcm", **form: object) -> httpx.Response:
    return API.post(
        f"{url}/search", files={"file": (name, data)}, data={k: str(v) for k, v in form.items()}, timeout=120
    )


def test_health_reports_encoder_index_and_catalog(live_api_url: str) -> None:
    health = API.get(f"{live_api_url}/health").json()
    assert health["status"] == "ok" and health["catalog_ok"] is True
    assert health["encoder"].startswith("efficientnet_lite0@")
    assert health["index_size"] == len(ARCHIVE_ROWS) == health["catalog_images"]
    assert {"CR", "MR", "US", "CT"} <= set(health["modalities"])
    # the fast path by default: the CPU encoder runs ONNX Runtime unless torch is asked for (or it is missing)
    fast = find_spec("onnxruntime") is not None and configured_backend() != "torch"
    assert health["backend"] == ("onnxruntime" if fast else "torch")


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

    thumb = API.get(f"{live_api_url}{top['thumbnail_url']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert PILImage.open(io.BytesIO(thumb.content)).size[0] <= 256

    case = API.get(f"{live_api_url}{top['case_url']}").json()
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
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, "damaged"),
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
    assert API.get(f"{live_api_url}/cases/99999").status_code == 404
    assert API.get(f"{live_api_url}/images/99999/thumbnail").status_code == 404


def _ids_by_file(url: str) -> dict[str, int]:
    cases = API.get(f"{url}/cases", params={"limit": 100}).json()["cases"]
    out = {}
    for case in cases:
        for image_id in case["image_ids"]:
            thumb = API.get(f"{url}/cases/{case['case_id']}").json()["images"]
            out.update({img["source_uri"].rsplit("/", 1)[1]: img["image_id"] for img in thumb})
            assert image_id in out.values()
    return out


def test_rare_filters_over_http_match_one_image_among_many(live_api_url: str) -> None:
    data = dicom_testfile("MR2_J2KI.dcm").read_bytes()
    body = _search(live_api_url, data, k=1, body_part="chest").json()  # only RG1 says CHEST
    assert [h["source_uri"].rsplit("/", 1)[1] for h in body["hits"]] == ["RG1_UNCI.dcm"]
    assert body["candidates"] == 1 and body["filters"]["body_part"] == "chest"
    body = _search(live_api_url, data, k=5, label="ultrasound finding").json()
    assert [h["case_key"] for h in body["hits"]] == ["C-US-1"] and body["candidates"] == 1
    body = _search(live_api_url, data, k=5, label="lesion", group_by="study", min_similarity=0.99).json()
    assert [h["case_key"] for h in body["hits"]] == ["C-MR-1"]
    body = _search(live_api_url, data, k=5, exclude_patient="true", group_by="none").json()
    assert body["filters"]["exclude_patient"] is True
    # The header's patient id and the stored copy of this very file (its manifest patient) both apply:
    exclusion = body["exclusion"]
    assert exclusion["applied"] is True and exclusion["sources"] == ["dicom_patient_id", "content_match"]
    assert exclusion["excluded_images"] == 1
    assert len(body["hits"]) == 5 and "MR2_J2KI.dcm" not in {
        h["source_uri"].rsplit("/", 1)[1] for h in body["hits"]
    }


@pytest.mark.parametrize(
    ("form", "phrase"),
    [
        ({"group_by": "patient"}, "group_by"),
        ({"min_similarity": "2"}, "min_similarity"),
        ({"preset": "lung"}, "needs a CT image"),
        ({"preset": "nope"}, "unknown window preset"),
        ({"window_center": "10"}, "both window_center and window_width"),
    ],
)
def test_bad_search_options_are_a_422(live_api_url: str, form: dict[str, str], phrase: str) -> None:
    response = _search(live_api_url, dicom_testfile("MR_small.dcm").read_bytes(), **form)
    assert response.status_code == 422, response.text
    assert phrase in str(response.json()["detail"])


def test_window_presets_and_render_rewindow_the_display_only(live_api_url: str) -> None:
    data = dicom_testfile("CT_small.dcm").read_bytes()
    plain = _search(live_api_url, data, k=2).json()
    lung = _search(live_api_url, data, k=2, preset="lung").json()
    assert [h["similarity"] for h in plain["hits"]] == [h["similarity"] for h in lung["hits"]]
    assert lung["query"]["display_window"] == {"center": -600.0, "width": 1500.0, "preset": "lung"}
    assert plain["query"]["window_units"] == "modality" and plain["query"]["window_min"] <= -1024
    assert lung["query"]["preview_png_base64"] != plain["query"]["preview_png_base64"]

    def render(**form: str) -> PILImage.Image:
        response = API.post(f"{live_api_url}/render", files={"file": ("ct", data)}, data=form, timeout=60)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text
        return PILImage.open(io.BytesIO(response.content))

    narrow = render(window_center="40", window_width="80", max_side="64")
    wide = render(window_center="40", window_width="4000", max_side="64")
    assert narrow.size == (64, 64)
    # a brain window saturates a body slice; a 4000 HU window flattens it to mid-greys
    assert _spread(narrow) > 2 * _spread(wide)
    png_query = io.BytesIO()
    PILImage.new("L", (32, 32), 100).save(png_query, format="PNG")
    response = API.post(
        f"{live_api_url}/render", files={"file": ("g.png", png_query.getvalue())},
        data={"window_center": "100", "window_width": "2"}, timeout=60,
    )  # fmt: skip
    assert response.status_code == 200, response.text  # PNG: windowed in 0-255 grey levels
    grey = np.asarray(PILImage.open(io.BytesIO(response.content)).convert("L"))
    # grey 100 at the centre of a 2-wide window (LINEAR_EXACT: (100 - 100) / 2 + 0.5): mid-grey, its own size
    assert grey.shape == (32, 32) and grey.min() == grey.max() and 127 <= int(grey.min()) <= 128
    below = API.post(
        f"{live_api_url}/render", files={"file": ("g.png", png_query.getvalue())},
        data={"window_center": "90", "window_width": "2"}, timeout=60,
    )  # fmt: skip
    assert (
        int(np.asarray(PILImage.open(io.BytesIO(below.content)).convert("L")).min()) == 255
    )  # above the window


def _spread(image: PILImage.Image) -> float:
    import numpy as np

    return float(np.asarray(image.convert("L"), dtype=np.float32).std())


def test_cases_filters_and_search_by_archived_image(live_api_url: str) -> None:
    listing = API.get(f"{live_api_url}/cases", params={"limit": 3, "offset": 1}).json()
    assert listing["total"] == len(ARCHIVE_ROWS) and len(listing["cases"]) == 3 and listing["offset"] == 1
    assert all(c["thumbnail_url"] and c["image_ids"] for c in listing["cases"])
    assert API.get(f"{live_api_url}/cases", params={"limit": 0}).status_code == 422
    options = API.get(f"{live_api_url}/filters").json()
    assert {"CR", "MR", "US", "CT"} <= set(options["modalities"]) and options["body_parts"] == ["CHEST"]
    assert {lc["label"] for lc in options["labels"]} >= {"lesion", "normal chest"}
    assert options["window_presets"]["lung"] == [-600.0, 1500.0]

    image_id = _ids_by_file(live_api_url)["MR2_UNCI.dcm"]
    body = API.post(f"{live_api_url}/search/by-image/{image_id}", data={"k": "3"}, timeout=60).json()
    assert body["query"]["image_id"] == image_id and body["query"]["modality"] == "MR"
    assert image_id not in [h["image_id"] for h in body["hits"]] and len(body["hits"]) == 3
    upload = _search(live_api_url, dicom_testfile("MR2_UNCI.dcm").read_bytes(), k=4).json()
    assert [h["image_id"] for h in body["hits"]] == [h["image_id"] for h in upload["hits"][1:]]
    rendered = API.get(
        f"{live_api_url}/images/{image_id}/render", params={"window_center": "500", "window_width": "900"}
    )
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"
    narrow = API.get(
        f"{live_api_url}/images/{image_id}/render", params={"window_center": "500", "window_width": "2"}
    )
    assert narrow.status_code == 200
    wide, thin = (PILImage.open(io.BytesIO(r.content)).convert("L") for r in (rendered, narrow))
    stored = pydicom.dcmread(dicom_testfile("MR2_UNCI.dcm"))
    assert wide.size == thin.size and max(wide.size) == min(512, max(stored.Rows, stored.Columns))  # max_side
    assert wide.size[0] / wide.size[1] == pytest.approx(stored.Columns / stored.Rows, abs=0.02)
    # a 2-wide window makes the picture (nearly) black and white; the 900-wide one keeps mid-greys
    thin_grey, wide_grey = np.asarray(thin, dtype=np.float32), np.asarray(wide, dtype=np.float32)
    mid_thin, mid_wide = (float(((g > 10) & (g < 245)).mean()) for g in (thin_grey, wide_grey))
    assert mid_thin < 0.15 and mid_wide > 0.2 and mid_wide > 2 * mid_thin, (mid_thin, mid_wide)
    assert API.post(f"{live_api_url}/search/by-image/99999").status_code == 404
    assert API.get(f"{live_api_url}/images/99999/render").status_code == 404
