"""Series queries: POST /search/series answers with the stored series most like the sent slices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from search_api.access import RADIOLOGY, allow
from search_api.deps import ApiSettingsDep, AuditDep, SeriesSearcherDep, read_upload
from search_api.errors import ERROR_RESPONSES, StrictJsonRoute
from search_api.schemas import SeriesSearchResponse

router = APIRouter(route_class=StrictJsonRoute)


@router.post(
    "/search/series",
    response_model=SeriesSearchResponse,
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "search")],
)
async def search_series(
    series: SeriesSearcherDep,
    limits: ApiSettingsDep,
    audit: AuditDep,
    files: Annotated[
        list[UploadFile],
        File(
            description="The series: several slice files, or one multi-frame DICOM (every frame is a slice)"
        ),
    ],
    k: Annotated[int, Form(ge=1, le=100)] = 10,
) -> SeriesSearchResponse:
    """Two stages: stored series vectors shortlist, per-slice MaxSim re-ranks; each hit names its best
    (query slice, stored image, similarity) pairs. At most 500 slices, one modality."""
    data = [await read_upload(f, limits.max_upload_bytes) for f in files]
    result = await run_in_threadpool(series.search, data, k)
    audit(f"series slices:{result.query_slices} cases:" + ",".join(str(h.case_id) for h in result.hits))
    return result
