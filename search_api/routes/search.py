"""Searching (by upload or by archived image), rendering with a window, thumbnails, filters and health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from imaging.region import parse_box
from search_api.access import PUBLIC, RADIOLOGY, allow
from search_api.deps import (
    ApiSettingsDep,
    AuditDep,
    BoxForm,
    CenterForm,
    PatientRefForm,
    PresetForm,
    PrincipalDep,
    QueryStoreDep,
    RowId,
    SearcherDep,
    SearchFiltersDep,
    WidthForm,
    form_window,
    read_upload,
)
from search_api.errors import ERROR_RESPONSES, PNG_RESPONSES, StrictJsonRoute
from search_api.mappers import redact
from search_api.regions import RegionSearcher
from search_api.schemas import FilterOptions, HealthOut, SearchResponse

router = APIRouter(route_class=StrictJsonRoute)


@router.get("/health", response_model=HealthOut, dependencies=[allow(PUBLIC, None)])
def health(searcher: SearcherDep) -> HealthOut:
    return searcher.health()


@router.post(
    "/search",
    response_model=SearchResponse,
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "search")],
)
async def search(
    principal: PrincipalDep,
    searcher: SearcherDep,
    queries: QueryStoreDep,
    limits: ApiSettingsDep,
    audit: AuditDep,
    filters: SearchFiltersDep,
    file: Annotated[
        UploadFile, File(description="The query image: DICOM, PNG or JPEG (decided by its bytes)")
    ],
    window_center: CenterForm = None,
    window_width: WidthForm = None,
    preset: PresetForm = None,
    patient_ref: PatientRefForm = None,
    box: BoxForm = None,
) -> SearchResponse:
    window = form_window(window_center, window_width)
    region = parse_box(box) if box else None
    data = await read_upload(file, limits.max_upload_bytes)
    if region is not None:  # the box alone is embedded and searched; each hit says where it matches
        result = await run_in_threadpool(
            lambda: RegionSearcher(searcher).search_upload(
                data, region, filters, window=window, window_preset=preset or None, patient_ref=patient_ref
            )
        )
    else:
        result = await run_in_threadpool(
            lambda: searcher.search(
                data, filters=filters, window=window, window_preset=preset or None, patient_ref=patient_ref
            )
        )
    # The query image is kept (memory only, for its owner) so its matches can be explained later.
    query_id = queries.put(principal.username, data)
    audit((f"box:{region} " if region else "") + "cases:" + ",".join(str(h.case_id) for h in result.hits))
    return redact(result, principal).model_copy(update={"query_id": query_id})


@router.post(
    "/search/by-image/{image_id}",
    response_model=SearchResponse,
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "search")],
)
async def search_by_image(
    image_id: RowId,
    principal: PrincipalDep,
    searcher: SearcherDep,
    audit: AuditDep,
    filters: SearchFiltersDep,
    window_center: CenterForm = None,
    window_width: WidthForm = None,
    box: BoxForm = None,
) -> SearchResponse:
    """Search with an archived image's stored embedding (no re-encoding); the image itself is left out.
    With `box`, the region of the image is decoded, embedded and searched instead."""
    window = form_window(window_center, window_width)
    region = parse_box(box) if box else None
    if region is not None:
        result = await run_in_threadpool(
            lambda: RegionSearcher(searcher).search_archived(image_id, region, filters, window=window)
        )
    else:
        result = await run_in_threadpool(searcher.search_by_image, image_id, filters, window)
    where = f" box:{region}" if region else ""
    audit(f"image:{image_id}{where} cases:" + ",".join(str(h.case_id) for h in result.hits))
    return redact(result, principal)


@router.post(
    "/render", responses=PNG_RESPONSES, response_class=Response, dependencies=[allow(RADIOLOGY, "render")]
)
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
    data = await read_upload(file, limits.max_upload_bytes)
    png = await run_in_threadpool(
        searcher.render, data, window_center, window_width, preset or None, max_side
    )
    return Response(content=png, media_type="image/png")


@router.get(
    "/images/{image_id}/render",
    responses=PNG_RESPONSES,
    response_class=Response,
    dependencies=[allow(RADIOLOGY, "view_image")],
)
def render_image(
    image_id: RowId,
    searcher: SearcherDep,
    window_center: Annotated[float | None, Query()] = None,
    window_width: Annotated[float | None, Query(gt=0)] = None,
    preset: Annotated[str | None, Query(max_length=32)] = None,
    max_side: Annotated[int, Query(ge=16, le=2048)] = 512,
) -> Response:
    """An archived image re-rendered from its source file with the window/level asked for."""
    png = searcher.render_image(image_id, window_center, window_width, preset or None, max_side)
    return Response(content=png, media_type="image/png")


@router.get(
    "/images/{image_id}/thumbnail",
    responses=PNG_RESPONSES,
    response_class=Response,
    dependencies=[allow(RADIOLOGY, "thumbnail")],
)
def thumbnail(image_id: RowId, searcher: SearcherDep) -> Response:
    return Response(content=searcher.thumbnail(image_id), media_type="image/png")


@router.get(
    "/filters",
    response_model=FilterOptions,
    responses=ERROR_RESPONSES,
    # Page furniture read on every refresh, with no patient data: not audited.
    dependencies=[allow(RADIOLOGY, None)],
)
def filters(searcher: SearcherDep) -> FilterOptions:
    """The modalities, body parts and diagnosis labels the archive holds, and the CT window presets."""
    return searcher.filter_options()
