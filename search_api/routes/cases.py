"""Cases: list, read, add (images + report + diagnosis), edit with history, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from search_api.access import ADMIN, RADIOLOGY, allow
from search_api.deps import (
    ApiSettingsDep,
    AuditDep,
    CaseManagerDep,
    CatalogDep,
    PrincipalDep,
    RowId,
    SearcherDep,
    read_upload,
)
from search_api.errors import CONFLICT_RESPONSES, ERROR_RESPONSES, StrictJsonRoute
from search_api.mappers import case_edit_out, redact_case, split_label_field
from search_api.refine import case_marks, save_marks
from search_api.schemas import (
    CaseEditOut,
    CaseList,
    CaseOut,
    CaseUpdate,
    FeedbackMarkOut,
    FeedbackMarksIn,
)

router = APIRouter(route_class=StrictJsonRoute)


@router.get(
    "/cases",
    response_model=CaseList,
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "list_cases")],
)
def list_cases(
    searcher: SearcherDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Only cases where every word occurs in the case id, report, a diagnosis, or an "
            "image's modality, body part, study or series description (case-insensitive)",
        ),
    ] = None,
) -> CaseList:
    """The archive's cases, a page at a time, to pick a query from (optionally only those matching `q`)."""
    return searcher.cases(limit=limit, offset=offset, text=q)


@router.post(
    "/cases",
    response_model=CaseOut,
    status_code=201,
    responses=CONFLICT_RESPONSES,
    dependencies=[allow(RADIOLOGY, "add_case")],
)
async def add_case(
    principal: PrincipalDep,
    searcher: SearcherDep,
    manager: CaseManagerDep,
    limits: ApiSettingsDep,
    audit: AuditDep,
    files: Annotated[list[UploadFile], File(description="The case's images: DICOM, PNG or JPEG")],
    report: Annotated[str | None, Form(max_length=100_000, description="The report text")] = None,
    diagnosis: Annotated[
        str | None, Form(max_length=5000, description="Diagnosis labels, separated by ';' or '|'")
    ] = None,
    predicted_label: Annotated[
        str | None,
        Form(
            max_length=256, description="The label the search predicted (recorded as confirmed or corrected)"
        ),
    ] = None,
) -> CaseOut:
    """Add a case (images + report + diagnosis); it is searchable when this answers. Saving a search's
    query as a new case is this call with the query image and the confirmed or corrected label."""
    if not files or len(files) > limits.max_case_images:
        raise HTTPException(422, f"send 1 to {limits.max_case_images} images")
    uploads = [await read_upload(f, limits.max_upload_bytes) for f in files]
    case_id = await run_in_threadpool(
        manager.add_case,
        uploads,
        report,
        split_label_field(diagnosis),
        principal.username,
        (predicted_label or "").strip() or None,
    )
    audit(f"case:{case_id}")
    return redact_case(searcher.case(case_id), principal)


@router.get(
    "/cases/{case_id}",
    response_model=CaseOut,
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "view_case")],
)
def get_case(case_id: RowId, searcher: SearcherDep, principal: PrincipalDep) -> CaseOut:
    return redact_case(searcher.case(case_id), principal)


@router.patch(
    "/cases/{case_id}",
    response_model=CaseOut,
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "edit_case")],
)
def edit_case(
    case_id: RowId,
    update: Annotated[CaseUpdate, Body()],
    searcher: SearcherDep,
    manager: CaseManagerDep,
    principal: PrincipalDep,
) -> CaseOut:
    """Change a case's report and/or diagnosis labels (a corrected diagnosis); kept in its history."""
    manager.edit_case(case_id, report=update.report, diagnosis=update.diagnosis, username=principal.username)
    return redact_case(searcher.case(case_id), principal)


@router.get(
    "/cases/{case_id}/history",
    response_model=list[CaseEditOut],
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "view_case_history")],
)
def case_history(case_id: RowId, manager: CaseManagerDep) -> list[CaseEditOut]:
    """Who changed what in a case, and when (UTC)."""
    return [case_edit_out(edit) for edit in manager.history(case_id)]


@router.delete(
    "/cases/{case_id}",
    status_code=204,
    response_class=Response,
    responses=ERROR_RESPONSES,
    dependencies=[allow(ADMIN, "delete_case")],
)
def delete_case(case_id: RowId, manager: CaseManagerDep, principal: PrincipalDep) -> Response:
    """Delete a case: its rows, its vectors (they leave the index at once), thumbnails and uploads."""
    manager.delete_case(case_id, principal.username)
    return Response(status_code=204)


@router.put(
    "/cases/{case_id}/feedback-marks",
    response_model=list[FeedbackMarkOut],
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "save_feedback_marks")],
)
def save_feedback_marks(
    case_id: RowId,
    marks: Annotated[FeedbackMarksIn, Body()],
    catalog: CatalogDep,
    principal: PrincipalDep,
    audit: AuditDep,
) -> list[FeedbackMarkOut]:
    """Keep the relevance marks of a refined search (every mark so far, as sent to POST /search/refine)
    with the case; they replace the marks saved before for the same search (`origin`). Audited."""
    saved = save_marks(catalog, case_id, marks, principal.username)
    audit(
        f"case:{case_id} {marks.origin} round:{marks.round} positives:{len(set(marks.positive))} "
        f"negatives:{len(set(marks.negative))}"
    )
    return saved


@router.get(
    "/cases/{case_id}/feedback-marks",
    response_model=list[FeedbackMarkOut],
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "view_feedback_marks")],
)
def feedback_marks(case_id: RowId, catalog: CatalogDep) -> list[FeedbackMarkOut]:
    """The relevance marks saved with the case, by search (origin), relevant first."""
    return case_marks(catalog, case_id)
