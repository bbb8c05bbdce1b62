"""The FastAPI application: lifespan loads the archive once; routes map errors to clear 4xx answers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
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
from search_api.schemas import CaseOut, ErrorOut, HealthOut, SearchResponse
from search_api.searcher import NotFoundError, Searcher
from search_api.settings import ApiSettings

log = logging.getLogger(__name__)

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

    @app.post("/search", response_model=SearchResponse, responses=_ERRORS)
    async def search(
        searcher: SearcherDep,
        limits: ApiSettingsDep,
        file: Annotated[
            UploadFile, File(description="The query image: DICOM, PNG or JPEG (decided by its bytes)")
        ],
        k: Annotated[int, Form(ge=1, description="How many neighbours to return")] = 10,
        modality: Annotated[
            str | None, Form(max_length=16, description="Only images of this modality")
        ] = None,
    ) -> SearchResponse:
        if k > limits.max_k:
            raise HTTPException(
                422, f"k={k} is above the maximum of {limits.max_k}; ask for fewer neighbours"
            )
        data = await _read_upload(file, limits.max_upload_bytes)
        return await run_in_threadpool(searcher.search, data, k, modality or None)

    @app.get("/cases/{case_id}", response_model=CaseOut, responses=_ERRORS)
    def get_case(case_id: int, searcher: SearcherDep) -> CaseOut:
        return searcher.case(case_id)

    @app.get(
        "/images/{image_id}/thumbnail",
        responses={200: {"content": {"image/png": {}}}, **_ERRORS},
        response_class=Response,
    )
    def thumbnail(image_id: int, searcher: SearcherDep) -> Response:
        return Response(content=searcher.thumbnail(image_id), media_type="image/png")

    return app
