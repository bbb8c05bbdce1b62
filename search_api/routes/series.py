"""Series queries: POST /search/series answers with the stored series most like the sent slices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from indexer.storage.pacs_reader import PacsReader
from search_api import series as series_module
from search_api.access import RADIOLOGY, allow
from search_api.deps import (
    ApiSettingsDep,
    AuditDep,
    CatalogDep,
    PatientRefForm,
    SearchFiltersDep,
    SeriesSearcherDep,
    read_upload,
)
from search_api.errors import ERROR_RESPONSES, StrictJsonRoute
from search_api.schemas import SearchFilters, SeriesSearchResponse
from search_api.series import MAX_PAIRS, fetch_pacs_series

router = APIRouter(route_class=StrictJsonRoute)


def _series_filters(filters: SearchFilters) -> SearchFilters:
    """The search filters as series search applies them: each hit is a whole series already."""
    if filters.group_by == "study":
        raise HTTPException(
            422, "group_by=study does not apply to series search (each hit is one series); leave it out"
        )
    return filters


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
    filters: SearchFiltersDep,
    pairs: Annotated[
        int, Form(ge=1, le=MAX_PAIRS, description="Best (query slice, stored slice) pairs per hit")
    ] = 3,
    patient_ref: PatientRefForm = None,
) -> SeriesSearchResponse:
    """Two stages: stored series vectors shortlist, per-slice MaxSim re-ranks; each hit names its best
    (query slice, stored image, similarity) pairs and its case's diagnoses, and the hits vote a prediction
    under the same uncertainty rules as POST /search. The filters of POST /search apply: a stored series
    can be a hit only when every slice passes modality / body_part / label and none is the query's
    patient's (exclude_patient: patient_ref, the slices' DICOM PatientIDs, stored copies of the slices);
    min_similarity drops weaker hits. At most 500 slices, one modality; the sent files (and a zip's
    inflated members) together at most the upload limit."""
    filters = _series_filters(filters)
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
        lambda: series.search(
            data,
            pairs=pairs,
            max_total_bytes=limits.max_upload_bytes,
            filters=filters,
            patient_ref=patient_ref,
        )
    )
    audit(f"series slices:{result.query_slices} cases:" + ",".join(str(h.case_id) for h in result.hits))
    return result


Uid = Annotated[str, Form(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z.\-_]+$")]


@router.post(
    "/search/series/by-pacs",
    response_model=SeriesSearchResponse,
    responses={**ERROR_RESPONSES, 502: ERROR_RESPONSES[404]},
    dependencies=[allow(RADIOLOGY, "search")],
)
async def search_series_in_pacs(
    series: SeriesSearcherDep,
    catalog: CatalogDep,
    limits: ApiSettingsDep,
    audit: AuditDep,
    pacs: Annotated[str, Form(min_length=1, max_length=64, description="The PACS's name in medcbir")],
    study_instance_uid: Uid,
    series_instance_uid: Uid,
    filters: SearchFiltersDep,
    pairs: Annotated[
        int, Form(ge=1, le=MAX_PAIRS, description="Best (query slice, stored slice) pairs per hit")
    ] = 3,
    patient_ref: PatientRefForm = None,
) -> SeriesSearchResponse:
    """A PACS series as the query: its instances listed (QIDO-RS) and retrieved (WADO-RS), then searched
    like POST /search/series, with the same filters and exclude_patient. 404: no such PACS or series;
    502: the PACS failed; 413/422: the limits."""
    filters = _series_filters(filters)
    catalog.pacs_connection(pacs)  # NotFoundError (404) for a PACS that is not configured
    client = PacsReader(catalog).client(pacs)
    cap = series_module.MAX_SLICES
    data = await run_in_threadpool(
        lambda: fetch_pacs_series(
            client, study_instance_uid, series_instance_uid, cap, limits.max_upload_bytes
        )
    )
    result = await run_in_threadpool(
        lambda: series.search(
            data,
            pairs=pairs,
            max_total_bytes=limits.max_upload_bytes,
            filters=filters,
            patient_ref=patient_ref,
        )
    )
    audit(
        f"series pacs:{pacs} series:{series_instance_uid} slices:{result.query_slices} cases:"
        + ",".join(str(h.case_id) for h in result.hits)
    )
    return result
