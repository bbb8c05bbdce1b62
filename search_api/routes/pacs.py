"""Searching by reference to an instance in a PACS: no pixels uploaded, the instance fetched with WADO-RS."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form
from starlette.concurrency import run_in_threadpool

from indexer.storage.pacs_reader import PacsReader
from indexer.storage.stored import PacsInstanceUri
from search_api.access import RADIOLOGY, allow
from search_api.deps import AuditDep, CatalogDep, PrincipalDep, SearcherDep, SearchFiltersDep
from search_api.errors import ERROR_RESPONSES, StrictJsonRoute
from search_api.mappers import redact
from search_api.schemas import SearchResponse

router = APIRouter(route_class=StrictJsonRoute)

Uid = Annotated[str, Form(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z.\-_]+$")]
PACS_RESPONSES = {**ERROR_RESPONSES, 502: ERROR_RESPONSES[404]}


@router.post(
    "/search/by-instance",
    response_model=SearchResponse,
    responses=PACS_RESPONSES,
    dependencies=[allow(RADIOLOGY, "search")],
)
async def search_by_instance(
    principal: PrincipalDep,
    searcher: SearcherDep,
    catalog: CatalogDep,
    audit: AuditDep,
    filters: SearchFiltersDep,
    pacs: Annotated[str, Form(min_length=1, max_length=64, description="The PACS's name in medcbir")],
    study_instance_uid: Uid,
    series_instance_uid: Uid,
    sop_instance_uid: Uid,
) -> SearchResponse:
    """Cases like one instance of a PACS: its stored vector when it is indexed (itself left out), else the
    instance retrieved with WADO-RS and searched like an upload. 404: no such PACS or instance; 502: the
    PACS failed."""
    where = PacsInstanceUri(pacs, study_instance_uid, series_instance_uid, sop_instance_uid)
    catalog.pacs_connection(pacs)  # NotFoundError (404) for a PACS that is not configured
    stored = catalog.image_ids_with_source_uri(str(where))
    if stored:
        result = await run_in_threadpool(searcher.search_by_image, stored[0], filters, None)
    else:
        data = await run_in_threadpool(PacsReader(catalog), where)
        result = await run_in_threadpool(lambda: searcher.search(data, filters=filters))
    audit(f"pacs:{pacs} sop:{sop_instance_uid} cases:" + ",".join(str(h.case_id) for h in result.hits))
    return redact(result, principal)
