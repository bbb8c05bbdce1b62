"""Relevance feedback: POST /search/refine answers a search again, refined by the neighbours you marked."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form
from starlette.concurrency import run_in_threadpool

from imaging.region import parse_box
from search_api.access import RADIOLOGY, allow
from search_api.deps import AuditDep, BoxForm, PatientRefForm, PrincipalDep, RefinerDep, SearchFiltersDep
from search_api.errors import ERROR_RESPONSES, StrictJsonRoute
from search_api.mappers import redact
from search_api.schemas import SearchResponse

router = APIRouter(route_class=StrictJsonRoute)

MarkedIds = Annotated[
    list[Annotated[int, Form(ge=0, le=2**63 - 1)]],
    Form(description="Image ids of neighbours (repeat the field for each); every mark so far, all rounds"),
]


@router.post(
    "/search/refine",
    response_model=SearchResponse,
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "search")],
)
async def refine(
    principal: PrincipalDep,
    refiner: RefinerDep,
    audit: AuditDep,
    filters: SearchFiltersDep,
    query_id: Annotated[
        str | None,
        Form(pattern="^[0-9a-f]{32}$", description="query_id of the POST /search answer to refine"),
    ] = None,
    image_id: Annotated[
        int | None, Form(ge=0, le=2**63 - 1, description="Or: the archived query image of a by-image search")
    ] = None,
    positive: MarkedIds = [],  # noqa: B006 - FastAPI copies form defaults
    negative: MarkedIds = [],  # noqa: B006
    round_number: Annotated[int, Form(alias="round", ge=1, le=1000, description="Which refine this is")] = 1,
    patient_ref: PatientRefForm = None,
    box: BoxForm = None,
) -> SearchResponse:
    """Rocchio relevance feedback: the query moved towards the images marked relevant (`positive`) and
    away from those marked not relevant (`negative`), searched again with the same filters, exclusions,
    vote and uncertainty rules. Send every mark so far: each round starts from the original query.
    Marked positives come first; negatives are left out. Hits' similarity is to the original query."""
    result = await run_in_threadpool(
        lambda: refiner.refine(
            principal.username,
            query_id=query_id,
            image_id=image_id,
            positive=positive,
            negative=negative,
            filters=filters,
            patient_ref=patient_ref,
            round_number=round_number,
            box=parse_box(box) if box else None,
        )
    )
    origin = f"query:{query_id}" if query_id else f"image:{image_id}"
    audit(
        f"refine {origin} round:{round_number} positives:{len(set(positive))} "
        f"negatives:{len(set(negative))} cases:" + ",".join(str(h.case_id) for h in result.hits)
    )
    return redact(result, principal)
