"""Explanations of a match: similarity maps of a query or an archived image, and Grad-CAM of the head."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from search_api.access import RADIOLOGY, allow
from search_api.deps import AuditDep, ExplainerDep, ExplainLabel, ExplainSide, PrincipalDep, QueryId, RowId
from search_api.errors import PNG_RESPONSES, StrictJsonRoute
from search_api.explanations import Explanation
from search_api.schemas import ErrorOut

router = APIRouter(route_class=StrictJsonRoute)

_EXPLAIN = {**PNG_RESPONSES, 409: {"model": ErrorOut}}


def explanation_png(explanation: Explanation) -> Response:
    """A PNG explanation with the score it explains (and the class, for Grad-CAM) in headers."""
    headers = {"X-Medcbir-Score": f"{explanation.score:.6f}"}
    if explanation.label is not None and explanation.label.isascii() and explanation.label.isprintable():
        headers["X-Medcbir-Label"] = explanation.label
    return Response(content=explanation.png, media_type="image/png", headers=headers)


@router.get(
    "/queries/{query_id}/similarity/{image_id}",
    responses=_EXPLAIN,
    response_class=Response,
    dependencies=[allow(RADIOLOGY, "explain")],
)
async def explain_query_similarity(
    query_id: QueryId,
    image_id: RowId,
    principal: PrincipalDep,
    explainer: ExplainerDep,
    audit: AuditDep,
    max_side: ExplainSide = 384,
) -> Response:
    """Why an archived image matched your search: query | image side by side, each with a heat map of
    the regions that drove their cosine similarity (X-Medcbir-Score). Queries are kept 30 minutes."""
    audit(f"query:{query_id} image:{image_id}")

    def explain() -> Explanation:
        query = explainer.query_pixels(query_id, principal.username)
        return explainer.similarity(query, explainer.image_pixels(image_id), max_side)

    return explanation_png(await run_in_threadpool(explain))


@router.get(
    "/images/{image_id}/similarity/{other_id}",
    responses=_EXPLAIN,
    response_class=Response,
    dependencies=[allow(RADIOLOGY, "explain")],
)
async def explain_image_similarity(
    image_id: RowId,
    other_id: RowId,
    explainer: ExplainerDep,
    audit: AuditDep,
    max_side: ExplainSide = 384,
) -> Response:
    """The same for two archived images (a search by image and one of its hits)."""
    audit(f"image:{image_id} image:{other_id}")

    def explain() -> Explanation:
        return explainer.similarity(
            explainer.image_pixels(image_id), explainer.image_pixels(other_id), max_side
        )

    return explanation_png(await run_in_threadpool(explain))


@router.get(
    "/queries/{query_id}/gradcam",
    responses=_EXPLAIN,
    response_class=Response,
    dependencies=[allow(RADIOLOGY, "explain")],
)
async def explain_query_gradcam(
    query_id: QueryId,
    principal: PrincipalDep,
    explainer: ExplainerDep,
    audit: AuditDep,
    label: ExplainLabel = None,
    max_side: ExplainSide = 384,
) -> Response:
    """Grad-CAM of the trained head's class `label` over your query image: the regions that raise it
    (its probability in X-Medcbir-Score). 404 when no head is trained (medcbir train-head)."""
    audit(f"query:{query_id}")

    def explain() -> Explanation:
        return explainer.grad_cam(explainer.query_pixels(query_id, principal.username), label, max_side)

    return explanation_png(await run_in_threadpool(explain))


@router.get(
    "/images/{image_id}/gradcam",
    responses=_EXPLAIN,
    response_class=Response,
    dependencies=[allow(RADIOLOGY, "explain")],
)
async def explain_image_gradcam(
    image_id: RowId,
    explainer: ExplainerDep,
    label: ExplainLabel = None,
    max_side: ExplainSide = 384,
) -> Response:
    """Grad-CAM of the trained head's class `label` over an archived image."""

    def explain() -> Explanation:
        return explainer.grad_cam(explainer.image_pixels(image_id), label, max_side)

    return explanation_png(await run_in_threadpool(explain))
