"""Searching by reference to an instance in a PACS: no pixels uploaded, the instance fetched with WADO-RS."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Response
from starlette.concurrency import run_in_threadpool

from imaging.region import parse_box
from indexer.catalog import Catalog
from indexer.storage.pacs_reader import PacsReader
from indexer.storage.pacs_writeback import SimilarCase, write_similar_cases
from indexer.storage.stored import PacsInstanceUri, is_pacs_uri
from search_api.access import RADIOLOGY, allow
from search_api.deps import AuditDep, BoxForm, CatalogDep, PrincipalDep, SearcherDep, SearchFiltersDep
from search_api.errors import ERROR_RESPONSES, StrictJsonRoute
from search_api.mappers import pacs_link_out, redact
from search_api.regions import RegionSearcher
from search_api.schemas import SearchResponse

router = APIRouter(route_class=StrictJsonRoute)

Uid = Annotated[str, Form(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z.\-_]+$")]
PACS_RESPONSES = {**ERROR_RESPONSES, 409: ERROR_RESPONSES[404], 502: ERROR_RESPONSES[404]}
WRITTEN_BACK_HEADER = "X-Medcbir-Written-Back"


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
    response: Response,
    write_back: Annotated[
        bool,
        Form(
            description="Also store a Key Object Selection document listing the similar cases in the query's "
            "study (only for a PACS added with --write-back; 409 otherwise); its SOP Instance UID comes back "
            "in the X-Medcbir-Written-Back header"
        ),
    ] = False,
    box: BoxForm = None,
) -> SearchResponse:
    """Cases like one instance of a PACS: its stored vector when it is indexed (itself left out), else the
    instance retrieved with WADO-RS and searched like an upload. With `box`, that region of the instance
    is embedded and searched instead, as on POST /search. 404: no such PACS or instance; 502: the PACS
    failed; 409: write-back asked of a PACS that does not allow it; 422: a box outside the image or too
    small."""
    region = parse_box(box) if box else None  # a malformed box is refused before the PACS is asked
    where = PacsInstanceUri(pacs, study_instance_uid, series_instance_uid, sop_instance_uid)
    connection = catalog.pacs_connection(pacs)  # NotFoundError (404) for a PACS that is not configured
    reader = PacsReader(catalog)
    if write_back and not connection.write_back:
        write_similar_cases(reader.client(pacs), where, [])  # raises WriteBackDisabledError (409)
    stored = catalog.image_ids_with_source_uri(str(where))
    if stored and region is not None:  # the region is cut from the stored image, read back by WADO-RS
        result = await run_in_threadpool(
            lambda: RegionSearcher(searcher).search_archived(stored[0], region, filters)
        )
    elif stored:
        result = await run_in_threadpool(searcher.search_by_image, stored[0], filters, None)
    else:
        data = await run_in_threadpool(reader, where)
        if region is not None:
            result = await run_in_threadpool(
                lambda: RegionSearcher(searcher).search_upload(data, region, filters)
            )
        else:
            result = await run_in_threadpool(lambda: searcher.search(data, filters=filters))
    if result.query.pacs is None:
        link = pacs_link_out(str(where), {connection.name: connection})
        result = result.model_copy(update={"query": result.query.model_copy(update={"pacs": link})})
    boxed = f" box:{region}" if region else ""
    note = f"pacs:{pacs} sop:{sop_instance_uid}{boxed} cases:" + ",".join(str(h.case_id) for h in result.hits)
    if write_back:
        cases = similar_cases(catalog, result)
        written = await run_in_threadpool(write_similar_cases, reader.client(pacs), where, cases)
        response.headers[WRITTEN_BACK_HEADER] = written
        note += f" written-back:{written}"
    audit(note)
    return redact(result, principal)


def similar_cases(catalog: Catalog, result: SearchResponse) -> list[SimilarCase]:
    """The hits as the write-back lists them, with the DICOM identity of those that are instances."""
    rows = catalog.images_by_ids([hit.image_id for hit in result.hits])
    cases = []
    for hit in result.hits:
        row = rows.get(hit.image_id)
        cases.append(
            SimilarCase(
                rank=hit.rank,
                similarity=hit.similarity,
                diagnoses=hit.diagnosis,
                study_instance_uid=row.study_instance_uid if row else None,
                series_instance_uid=row.series_instance_uid if row else None,
                sop_instance_uid=row.sop_instance_uid if row else None,
                sop_class_uid=row.sop_class_uid if row else None,
                pacs=PacsInstanceUri.parse(row.source_uri).pacs
                if row and is_pacs_uri(row.source_uri)
                else None,
            )
        )
    return cases
