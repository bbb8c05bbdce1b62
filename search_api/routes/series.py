"""Series queries: POST /search/series answers with the stored series most like the sent slices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from search_api.access import RADIOLOGY, allow
from search_api.deps import ApiSettingsDep, AuditDep, SeriesSearcherDep, read_upload
from search_api.errors import ERROR_RESPONSES, StrictJsonRoute
from search_api.schemas import SeriesSearchResponse
from search_api.series import MAX_PAIRS

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
            description="The series: several slice files, one multi-frame DICOM (every frame is a slice), "
            "or a zip of DICOM files (read in member-name order)"
        ),
    ],
    k: Annotated[int, Form(ge=1, le=100)] = 10,
    pairs: Annotated[
        int, Form(ge=1, le=MAX_PAIRS, description="Best (query slice, stored slice) pairs per hit")
    ] = 3,
) -> SeriesSearchResponse:
    """Two stages: stored series vectors shortlist, per-slice MaxSim re-ranks; each hit names its best
    (query slice, stored image, similarity) pairs and its case's diagnoses, and the hits vote a prediction
    under the same uncertainty rules as POST /search. At most 500 slices, one modality; the sent files
    (and a zip's inflated members) together at most the upload limit."""
    data: list[tuple[str, bytes]] = []
    left = limits.max_upload_bytes
    for upload in files:
        try:
            content = await read_upload(upload, left)
        except HTTPException as exc:
            if exc.status_code != 413:
                raise
            raise HTTPException(
                413,
                f"the sent files pass {limits.max_upload_bytes:,} bytes together (MEDCBIR_API_MAX_UPLOAD_BYTES); "
                "send fewer slices",
            ) from None
        left -= len(content)
        data.append((upload.filename or f"file {len(data) + 1}", content))
    result = await run_in_threadpool(
        lambda: series.search(data, k, pairs=pairs, max_total_bytes=limits.max_upload_bytes)
    )
    audit(f"series slices:{result.query_slices} cases:" + ",".join(str(h.case_id) for h in result.hits))
    return result
