"""UI test fixtures: `contract_api`, a real HTTP server answering the search API contract with fixed data."""

from __future__ import annotations

import base64
import importlib.util
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, ClassVar

import pytest
from fastapi import FastAPI, File, Form, Header, HTTPException, UploadFile
from fastapi.responses import Response
from PIL import Image

from imaging import list_window_presets
from search_api.schemas import (
    CaseImage,
    CaseList,
    CaseOut,
    CaseSummary,
    FilterOptions,
    HealthOut,
    Hit,
    LabelCount,
    LabelScore,
    MeOut,
    Prediction,
    QueryInfo,
    SearchResponse,
    TokenOut,
)
from tests.helpers import free_port, start_server, stop_server

# Magic first bytes that make the contract server answer with an error, to test the UI's error paths.
UNSUPPORTED_PREFIX = b"UNSUPPORTED"
UNDECODABLE_PREFIX = b"UNDECODABLE"
UNLABELED_PREFIX = b"UNLABELED"
BROKEN_MEDIA_PREFIX = b"BROKENMEDIA"
CT_PREFIX = b"CTQUERY"
UNCERTAIN_PREFIX = b"UNCERTAIN"  # an out-of-distribution query, with a trained head
UNSUPPORTED_DETAIL = "Unsupported image format: send DICOM, PNG or JPEG bytes."
UNDECODABLE_DETAIL = "The DICOM file has no pixel data: send an image instance."
HOSTILE_TEXT = "<script>alert(1)</script> ![track](http://evil.example/x.png) :red[boom]"
CONTRACT_HITS = 12
# The contract server's one account: signing in with these answers CONTRACT_TOKEN.
CONTRACT_USER = "rad"
CONTRACT_PASSWORD = "contract-password"
CONTRACT_TOKEN = "contract-token"


def make_png(size: tuple[int, int] = (8, 8), value: int = 128) -> bytes:
    """A tiny grey PNG."""
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def report_of(index: int) -> str:
    """A long report whose tail only shows in the expander."""
    return f"Report {index}: " + "findings consistent with the label. " * 10 + f"END-OF-REPORT-{index}"


def contract_hit(index: int) -> Hit:
    """Hit number `index` (0-based) of the fixed answer."""
    return Hit(
        rank=index + 1,
        image_id=100 + index,
        case_id=200 + index,
        case_key=f"CASE-{index:03d}",
        source_uri=f"archive/case{index}.dcm",
        similarity=0.98765 - 0.01 * index,
        modality="CT",
        body_part="CHEST",
        study_description=HOSTILE_TEXT if index == 0 else "CT CHEST",
        diagnosis=["pneumonia"] if index % 3 else ["nodule", "emphysema"],
        report=report_of(index),
        thumbnail_url=f"/images/{100 + index}/thumbnail",
        case_url=f"/cases/{200 + index}",
        study_instance_uid=f"1.2.840.{index // 2}",
        series_instance_uid=f"1.2.840.{index // 2}.{index}",
        patient_ref="P-query" if index == 1 else f"P-{index}",
    )


@dataclass
class SearchCall:
    """What the UI sent to POST /search."""

    filename: str | None
    data: bytes
    k: int
    modality: str | None
    body_part: str | None = None
    label: str | None = None
    min_similarity: float | None = None
    group_by: str | None = None
    exclude_patient: bool = False
    image_id: int | None = None


@dataclass
class RenderCall:
    """What the UI sent to POST /render or GET /images/{id}/render."""

    image_id: int | None
    center: float
    width: float


@dataclass
class ContractApi:
    """A running contract server: its URL, the calls it received, and the magic inputs it answers."""

    unsupported_prefix: ClassVar[bytes] = UNSUPPORTED_PREFIX
    undecodable_prefix: ClassVar[bytes] = UNDECODABLE_PREFIX
    unlabeled_prefix: ClassVar[bytes] = UNLABELED_PREFIX
    broken_media_prefix: ClassVar[bytes] = BROKEN_MEDIA_PREFIX
    ct_prefix: ClassVar[bytes] = CT_PREFIX
    uncertain_prefix: ClassVar[bytes] = UNCERTAIN_PREFIX
    unsupported_detail: ClassVar[str] = UNSUPPORTED_DETAIL
    undecodable_detail: ClassVar[str] = UNDECODABLE_DETAIL
    hostile_text: ClassVar[str] = HOSTILE_TEXT
    max_hits: ClassVar[int] = CONTRACT_HITS

    url: str
    searches: list[SearchCall] = field(default_factory=list)
    thumbnail_requests: list[int] = field(default_factory=list)
    renders: list[RenderCall] = field(default_factory=list)
    case_queries: list[str | None] = field(default_factory=list)  # the q of each GET /cases


def create_contract_app(record: ContractApi) -> FastAPI:
    """A FastAPI app implementing the search API contract with fixed, engine-free answers."""
    app = FastAPI()
    png = make_png()

    @app.get("/health")
    def health() -> HealthOut:
        return HealthOut(
            status="ok",
            encoder="fake-encoder",
            dim=16,
            device="cpu",
            index_size=1234,
            catalog_ok=True,
            catalog_images=1234,
            modalities=["CT", "MR"],
        )

    def answer(call: SearchCall, data: bytes) -> SearchResponse:
        record.searches.append(call)
        if data.startswith(UNSUPPORTED_PREFIX):
            raise HTTPException(status_code=415, detail=UNSUPPORTED_DETAIL)
        if data.startswith(UNDECODABLE_PREFIX):
            raise HTTPException(status_code=422, detail=UNDECODABLE_DETAIL)
        hits = [contract_hit(i) for i in range(min(call.k, CONTRACT_HITS))]
        if call.exclude_patient:
            hits = [h for h in hits if h.patient_ref != "P-query"]
        preview = png
        if data.startswith(BROKEN_MEDIA_PREFIX):  # a preview that is no PNG, thumbnails that 404
            preview = b"not a png"
            hits = [h.model_copy(update={"thumbnail_url": "/images/999/thumbnail"}) for h in hits]
        if data.startswith(UNLABELED_PREFIX):
            hits = [h.model_copy(update={"diagnosis": []}) for h in hits]
            prediction = Prediction()
        else:
            prediction = Prediction(
                label="pneumonia",
                confidence=0.75,
                scores=[
                    LabelScore(label="pneumonia", score=0.75, votes=3),
                    LabelScore(label="nodule", score=0.25, votes=1),
                ],
                labeled_neighbours=len(hits),
            )
        head_prediction = None
        if data.startswith(UNCERTAIN_PREFIX):
            reason = "out_of_distribution: top similarity 0.27 < 0.62"
            prediction = prediction.model_copy(
                update={
                    "uncertain": True,
                    "uncertain_reason": reason,
                    "calibrated": True,
                    "top_similarity": 0.27,
                }
            )
            head_prediction = Prediction(
                label="nodule",
                confidence=0.9,
                scores=[LabelScore(label="nodule", score=0.9), LabelScore(label="pneumonia", score=0.1)],
                method="linear head 20260101T000000000000Z-abcdef12 (T=1.5)",
                calibrated=True,
                uncertain=True,
                uncertain_reason=reason,
                top_similarity=0.27,
            )
        ct = data.startswith(CT_PREFIX)
        return SearchResponse(
            query=QueryInfo(
                format="dicom" if ct else "png",
                rows=8,
                columns=8,
                modality="CT" if ct else (call.modality or "OT"),
                body_part="HAND",
                study_description=HOSTILE_TEXT,
                window_center=40.0 if ct else None,
                window_width=400.0 if ct else None,
                window_units="modality" if ct else "display",
                window_min=-1024.0 if ct else 0.0,
                window_max=3071.0 if ct else 255.0,
                patient_ref="P-query",
                image_id=call.image_id,
                preview_png_base64=base64.b64encode(preview).decode("ascii"),
            ),
            hits=hits,
            prediction=prediction,
            head_prediction=head_prediction,
            encoder="fake-encoder",
            index_size=1234,
            took_ms=12.5,
            candidates=None if not (call.modality or call.body_part or call.label) else len(hits),
        )

    @app.post("/token")
    def token(username: Annotated[str, Form()], password: Annotated[str, Form()]) -> TokenOut:
        if (username, password) != (CONTRACT_USER, CONTRACT_PASSWORD):
            raise HTTPException(status_code=401, detail="wrong username or password")
        return TokenOut(access_token=CONTRACT_TOKEN, expires_in=600, username=username, role="radiologist")

    @app.get("/me")
    def me(authorization: Annotated[str | None, Header()] = None) -> MeOut:
        if authorization != f"Bearer {CONTRACT_TOKEN}":
            raise HTTPException(status_code=401, detail="sign in first")
        return MeOut(username=CONTRACT_USER, role="radiologist", auth="token")

    @app.get("/filters")
    def filters() -> FilterOptions:
        return FilterOptions(
            modalities=["CT", "MR"],
            body_parts=["CHEST", "KNEE"],
            labels=[LabelCount(label="pneumonia", cases=8), LabelCount(label="nodule", cases=4)],
            window_presets={name: (spec.center, spec.width) for name, spec in list_window_presets().items()},
        )

    @app.post("/search")
    def search(
        file: Annotated[UploadFile, File()],
        k: Annotated[int, Form(ge=1, le=100)] = 10,
        modality: Annotated[str | None, Form()] = None,
        body_part: Annotated[str | None, Form()] = None,
        label: Annotated[str | None, Form()] = None,
        min_similarity: Annotated[float | None, Form()] = None,
        group_by: Annotated[str | None, Form()] = None,
        exclude_patient: Annotated[bool, Form()] = False,
    ) -> SearchResponse:
        data = file.file.read()
        call = SearchCall(
            file.filename, data, k, modality, body_part, label, min_similarity, group_by, exclude_patient
        )
        return answer(call, data)

    @app.post("/search/by-image/{image_id}")
    def search_by_image(
        image_id: int,
        k: Annotated[int, Form(ge=1, le=100)] = 10,
        modality: Annotated[str | None, Form()] = None,
        exclude_patient: Annotated[bool, Form()] = False,
    ) -> SearchResponse:
        if image_id < 100 or image_id >= 100 + CONTRACT_HITS:
            raise HTTPException(status_code=404, detail=f"No image with id {image_id}.")
        call = SearchCall(None, b"", k, modality, exclude_patient=exclude_patient, image_id=image_id)
        return answer(call, b"")

    @app.post("/render")
    def render(
        file: Annotated[UploadFile, File()],
        window_center: Annotated[float, Form()],
        window_width: Annotated[float, Form()],
    ) -> Response:
        record.renders.append(RenderCall(None, window_center, window_width))
        return Response(content=make_png(value=200), media_type="image/png")

    @app.get("/images/{image_id}/render")
    def render_image(image_id: int, window_center: float, window_width: float) -> Response:
        record.renders.append(RenderCall(image_id, window_center, window_width))
        return Response(content=make_png(value=60), media_type="image/png")

    @app.get("/cases")
    def cases(limit: int = 50, offset: int = 0, q: str | None = None) -> CaseList:
        record.case_queries.append(q)
        rows = [
            CaseSummary(
                case_id=200 + i,
                case_key=contract_hit(i).case_key,
                diagnosis=contract_hit(i).diagnosis,
                modalities=["CT"],
                image_ids=[100 + i],
                thumbnail_url=f"/images/{100 + i}/thumbnail",
            )
            for i in range(CONTRACT_HITS)
        ]
        words = (q or "").lower().split()  # the real API's rule on these fields: every word must occur
        rows = [r for r in rows if all(w in " ".join([r.case_key, *r.diagnosis]).lower() for w in words)]
        return CaseList(total=len(rows), offset=offset, limit=limit, cases=rows[offset : offset + limit])

    @app.get("/cases/{case_id}")
    def case(case_id: int) -> CaseOut:
        if case_id < 200 or case_id >= 200 + CONTRACT_HITS:
            raise HTTPException(status_code=404, detail=f"No case with id {case_id}.")
        hit = contract_hit(case_id - 200)
        images = [
            CaseImage(
                image_id=hit.image_id,
                source_uri=hit.source_uri,
                modality=hit.modality,
                body_part=hit.body_part,
                study_description=hit.study_description,
                thumbnail_url=hit.thumbnail_url,
            )
        ]
        return CaseOut(
            case_id=case_id, case_key=hit.case_key, report=hit.report, diagnosis=hit.diagnosis, images=images
        )

    @app.get("/images/{image_id}/thumbnail")
    def thumbnail(image_id: int) -> Response:
        if image_id < 100 or image_id >= 100 + CONTRACT_HITS:
            raise HTTPException(status_code=404, detail=f"No image with id {image_id}.")
        record.thumbnail_requests.append(image_id)
        return Response(content=png, media_type="image/png")

    @app.get("/not-json")
    def not_json() -> Response:
        return Response(content=b"<html>proxy error</html>", status_code=502, media_type="text/html")

    return app


@pytest.fixture(scope="session")
def contract_api() -> Iterator[ContractApi]:
    """A real uvicorn server, in a thread, answering the API contract with fixed responses."""
    record = ContractApi(url="")
    url, server, thread = start_server(create_contract_app(record), lifespan="auto")
    record.url = url
    yield record
    stop_server(server, thread)


@pytest.fixture
def contract(contract_api: ContractApi) -> ContractApi:
    """The contract server with its call records cleared for this test."""
    contract_api.searches.clear()
    contract_api.thumbnail_requests.clear()
    contract_api.renders.clear()
    return contract_api


@pytest.fixture
def png_bytes() -> bytes:
    """A small real PNG to upload."""
    return make_png((32, 32), 90)


@pytest.fixture
def dead_api_url() -> str:
    """A URL where no API listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def live_api(request: pytest.FixtureRequest) -> str:
    """The real engine API: `live_api_url` from tests/conftest.py; skipped until search_api.app exists."""
    if importlib.util.find_spec("search_api.app") is None:
        pytest.skip("search_api/app.py does not exist yet: no live engine API to test the UI against")
    try:
        url = request.getfixturevalue("live_api_url")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py provides no `live_api_url` fixture (a live search API)")
    return str(url)


@pytest.fixture
def live_token(live_api: str, api_tokens: dict[str, str]) -> str:
    """The live engine API's radiologist token."""
    return api_tokens["radiologist"]
