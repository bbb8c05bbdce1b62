"""The FastAPI application: lifespan loads the archive once; routes map errors to clear 4xx answers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from imaging import (
    CorruptImageError,
    ImageTooLargeError,
    ImagingError,
    MissingCodecError,
    UnsupportedFormatError,
)
from indexer.archive import Archive
from indexer.settings import IndexerSettings
from search_api.schemas import (
    CT_WINDOW_PRESETS,
    CaseList,
    CaseOut,
    DisplayWindow,
    ErrorOut,
    FilterOptions,
    GroupBy,
    HealthOut,
    SearchFilters,
    SearchResponse,
)
from search_api.searcher import InvalidWindowError, NotFoundError, Searcher
from search_api.settings import ApiSettings

log = logging.getLogger(__name__)

CT_PRESET_NAMES = list(CT_WINDOW_PRESETS)
_GROUPINGS: dict[str, GroupBy] = {"study": "study", "series": "series"}

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut},
    413: {"model": ErrorOut},
    415: {"model": ErrorOut},
    422: {"model": ErrorOut},
}


def _status_for(exc: ImagingError) -> int:
    if isinstance(exc, UnsupportedFormatError):
        return 415
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, CorruptImageError | MissingCodecError):
        return 422
    return 422


def get_searcher(request: Request) -> Searcher:
    """The searcher the lifespan built."""
    searcher: Searcher = request.app.state.searcher
    return searcher


def get_api_settings(request: Request) -> ApiSettings:
    """The settings the app was created with."""
    settings: ApiSettings = request.app.state.api_settings
    return settings


SearcherDep = Annotated[Searcher, Depends(get_searcher)]
ApiSettingsDep = Annotated[ApiSettings, Depends(get_api_settings)]
_PNG = {200: {"content": {"image/png": {}}}, **_ERRORS}


def search_filters(
    limits: ApiSettingsDep,
    k: Annotated[int, Form(ge=1, description="How many neighbours to return")] = 10,
    modality: Annotated[str | None, Form(max_length=16, description="Only images of this modality")] = None,
    body_part: Annotated[
        str | None, Form(max_length=64, description="Only images of this body part (BodyPartExamined)")
    ] = None,
    label: Annotated[
        str | None, Form(max_length=256, description="Only images whose case carries this diagnosis label")
    ] = None,
    min_similarity: Annotated[
        float | None, Form(ge=-1.0, le=1.0, description="Drop neighbours less similar than this")
    ] = None,
    group_by: Annotated[
        Literal["study", "series", "none"] | None,
        Form(description="Keep only the best hit per study or per series"),
    ] = None,
    exclude_patient: Annotated[
        bool, Form(description="Drop images of the query's own patient (matched by pseudonym)")
    ] = False,
) -> SearchFilters:
    """The search filters of a form; empty strings mean "no filter"."""
    if k > limits.max_k:
        raise HTTPException(422, f"k={k} is above the maximum of {limits.max_k}; ask for fewer neighbours")
    return SearchFilters(
        k=k,
        modality=(modality or "").strip() or None,
        body_part=(body_part or "").strip() or None,
        label=(label or "").strip() or None,
        min_similarity=min_similarity,
        group_by=_GROUPINGS.get(group_by or "none"),
        exclude_patient=exclude_patient,
    )


SearchFiltersDep = Annotated[SearchFilters, Depends(search_filters)]
CenterForm = Annotated[
    float | None, Form(description="Window center (level) for the displayed image, in window_units")
]
WidthForm = Annotated[float | None, Form(gt=0, description="Window width for the displayed image")]
PresetForm = Annotated[
    str | None, Form(max_length=32, description="A named CT window: " + ", ".join(CT_PRESET_NAMES))
]


def _window_or_none(center: float | None, width: float | None) -> DisplayWindow | None:
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise HTTPException(422, "send both window_center and window_width, or a preset")
    return DisplayWindow(center=center, width=width)


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload is larger than {limit} bytes; send a smaller image")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise HTTPException(422, "the uploaded file is empty; send a DICOM, PNG or JPEG image")
    return data


def create_app(
    settings: IndexerSettings | None = None,
    api_settings: ApiSettings | None = None,
    archive: Archive | None = None,
) -> FastAPI:
    """Build the app; the archive (catalog, encoder, index) is opened once, at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = archive if archive is not None else Archive.open(settings or IndexerSettings())
        app.state.api_settings = api_settings or ApiSettings()
        app.state.searcher = Searcher(opened, max_pixels=app.state.api_settings.max_pixels)
        log.info("search API ready: %d vectors, encoder %s", len(opened.index), opened.encoder.name)
        try:
            yield
        finally:
            if archive is None:
                opened.close()

    app = FastAPI(
        title="medcbir search API",
        version="0.1.0",
        description="Content-based medical image retrieval: send an image, get the most similar past cases.",
        lifespan=lifespan,
    )

    @app.exception_handler(ImagingError)
    async def imaging_error(_request: Request, exc: ImagingError) -> JSONResponse:
        return JSONResponse(status_code=_status_for(exc), content={"detail": str(exc)})

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.get("/health", response_model=HealthOut)
    def health(searcher: SearcherDep) -> HealthOut:
        return searcher.health()

    @app.exception_handler(InvalidWindowError)
    async def invalid_window(_request: Request, exc: InvalidWindowError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.post("/search", response_model=SearchResponse, responses=_ERRORS)
    async def search(
        searcher: SearcherDep,
        limits: ApiSettingsDep,
        filters: SearchFiltersDep,
        file: Annotated[
            UploadFile, File(description="The query image: DICOM, PNG or JPEG (decided by its bytes)")
        ],
        window_center: CenterForm = None,
        window_width: WidthForm = None,
        preset: PresetForm = None,
    ) -> SearchResponse:
        window = _window_or_none(window_center, window_width)
        data = await _read_upload(file, limits.max_upload_bytes)
        return await run_in_threadpool(
            lambda: searcher.search(data, filters=filters, window=window, window_preset=preset or None)
        )

    @app.post("/search/by-image/{image_id}", response_model=SearchResponse, responses=_ERRORS)
    async def search_by_image(
        image_id: int,
        searcher: SearcherDep,
        filters: SearchFiltersDep,
        window_center: CenterForm = None,
        window_width: WidthForm = None,
    ) -> SearchResponse:
        """Search with an archived image's stored embedding (no re-encoding); the image itself is left out."""
        window = _window_or_none(window_center, window_width)
        return await run_in_threadpool(searcher.search_by_image, image_id, filters, window)

    @app.post("/render", responses=_PNG, response_class=Response)
    async def render(
        searcher: SearcherDep,
        limits: ApiSettingsDep,
        file: Annotated[UploadFile, File(description="The image to render: DICOM, PNG or JPEG")],
        window_center: CenterForm = None,
        window_width: WidthForm = None,
        preset: PresetForm = None,
        max_side: Annotated[int, Form(ge=16, le=2048)] = 512,
    ) -> Response:
        """The uploaded image as a PNG with the window/level asked for; display only, nothing is stored."""
        data = await _read_upload(file, limits.max_upload_bytes)
        png = await run_in_threadpool(
            searcher.render, data, window_center, window_width, preset or None, max_side
        )
        return Response(content=png, media_type="image/png")

    @app.get("/images/{image_id}/render", responses=_PNG, response_class=Response)
    def render_image(
        image_id: int,
        searcher: SearcherDep,
        window_center: Annotated[float | None, Query()] = None,
        window_width: Annotated[float | None, Query(gt=0)] = None,
        preset: Annotated[str | None, Query(max_length=32)] = None,
        max_side: Annotated[int, Query(ge=16, le=2048)] = 512,
    ) -> Response:
        """An archived image re-rendered from its source file with the window/level asked for."""
        png = searcher.render_image(image_id, window_center, window_width, preset or None, max_side)
        return Response(content=png, media_type="image/png")

    @app.get("/cases", response_model=CaseList)
    def list_cases(
        searcher: SearcherDep,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> CaseList:
        """The archive's cases, a page at a time, to pick a query from."""
        return searcher.cases(limit=limit, offset=offset)

    @app.get("/filters", response_model=FilterOptions)
    def filters(searcher: SearcherDep) -> FilterOptions:
        """The modalities, body parts and diagnosis labels the archive holds, and the CT window presets."""
        return searcher.filter_options()

    @app.get("/cases/{case_id}", response_model=CaseOut, responses=_ERRORS)
    def get_case(case_id: int, searcher: SearcherDep) -> CaseOut:
        return searcher.case(case_id)

    @app.get(
        "/images/{image_id}/thumbnail",
        responses=_PNG,
        response_class=Response,
    )
    def thumbnail(image_id: int, searcher: SearcherDep) -> Response:
        return Response(content=searcher.thumbnail(image_id), media_type="image/png")

    return app
