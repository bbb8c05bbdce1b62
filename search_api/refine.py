"""Relevance feedback over HTTP's searches: a kept query (or archived image) refined by marked neighbours."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imaging import load_image
from imaging.region import Box, check_box, crop
from indexer.catalog import Catalog
from indexer.catalog.models import FeedbackMark
from indexer.errors import NotFoundError
from indexer.storage.stored import read_stored_if_present
from indexer.vectors.feedback import DEFAULT_WEIGHTS, FeedbackWeights, pin_positives, rocchio
from search_api.exclusion import QueryPatient, archived_patient, upload_patient
from search_api.explanations import QueryStore
from search_api.mappers import utc_iso
from search_api.schemas import (
    FeedbackMarkOut,
    FeedbackMarksIn,
    Hit,
    QueryInfo,
    Refinement,
    SearchFilters,
    SearchResponse,
)
from search_api.searcher import Searcher, _Found

# Marks per refine request (positives and negatives together): a radiologist marks a few pages of
# neighbours, and every mark costs a catalog read.
MAX_MARKS = 200


class InvalidFeedbackError(ValueError):
    """The marks cannot be used: too many, an image marked both ways, or one not in the archive."""


@dataclass(frozen=True)
class _Origin:
    vector: npt.NDArray[np.float32]
    patient: QueryPatient
    query: QueryInfo
    exclude_id: int | None


def check_marks(positive: Sequence[int], negative: Sequence[int], limit: int = MAX_MARKS) -> None:
    """Refuse more than `limit` marks, or an image marked both relevant and not relevant."""
    if len(set(positive)) + len(set(negative)) > limit:
        raise InvalidFeedbackError(
            f"{len(set(positive)) + len(set(negative))} marked images: at most {limit} per refine; "
            "keep the marks that matter most"
        )
    both = sorted(set(positive) & set(negative))
    if both:
        raise InvalidFeedbackError(
            f"image(s) {', '.join(map(str, both[:10]))} marked both relevant and not relevant; mark each once"
        )


class Refiner:
    """Answers POST /search/refine: Rocchio over the original query and every mark so far, through the
    same filters, exclusions, vote and uncertainty rules as the search.

    Hits carry their similarity to the original query (the number the vote and its calibration were
    fitted on), in the refined order; marked positives come first (pinned), negatives never come back.
    The OOD (uncertainty) check judges the original query, so marks cannot make a foreign image look
    familiar.
    """

    def __init__(
        self, searcher: Searcher, queries: QueryStore, weights: FeedbackWeights = DEFAULT_WEIGHTS
    ) -> None:
        self.searcher = searcher
        self.queries = queries
        self.weights = weights

    def refine(
        self,
        owner: str,
        *,
        query_id: str | None,
        image_id: int | None,
        positive: Sequence[int],
        negative: Sequence[int],
        filters: SearchFilters,
        patient_ref: str | None = None,
        round_number: int = 1,
        box: Box | None = None,
    ) -> SearchResponse:
        """The refined answer; exactly one of query_id (an upload's) and image_id (an archived query).
        With `box`, the original query is that region of the image, as in a region search."""
        start = time.perf_counter()
        check_marks(positive, negative)
        if (query_id is None) == (image_id is None):
            raise InvalidFeedbackError(
                "send query_id (from a POST /search answer) or image_id (the archived query image), not both"
            )
        positives = self._vectors(positive)
        negatives = self._vectors(negative)
        origin = (
            self._upload(owner, query_id, patient_ref, box)
            if query_id is not None
            else self._archived(int(image_id or 0), filters, box)
        )
        refined = rocchio(origin.vector, positives, negatives, self.weights)
        marked = set(positive) | set(negative)
        # The original query's search: its best allowed similarity (OOD check) and its exclusion.
        plain = self.searcher._neighbours(
            origin.vector, filters.model_copy(update={"k": 1}), origin.patient, origin.exclude_id
        )
        wide = filters.model_copy(update={"k": filters.k + len(marked), "min_similarity": None})
        found = self.searcher._neighbours(refined, wide, origin.patient, origin.exclude_id)
        order = pin_positives([h.image_id for h in found.hits], positive, negative, len(found.hits))
        to_original = self._similarities(order, origin.vector)
        rows = {h.image_id: h for h in found.hits}
        hits: list[Hit] = []
        for image_id_ in order:
            similarity = to_original[image_id_]
            if filters.min_similarity is not None and similarity < filters.min_similarity:
                continue
            hit = rows[image_id_].model_copy(update={"rank": len(hits) + 1, "similarity": similarity})
            hits.append(hit)
            if len(hits) == filters.k:
                break
        result = _Found(hits, plain.candidates, plain.top_similarity, plain.exclusion)
        response = self.searcher._response(origin.query, result, filters, start, origin.vector)
        refinement = Refinement(
            round=round_number,
            positives=len(set(positive)),
            negatives=len(set(negative)),
            pinned=[h.image_id for h in hits if h.image_id in set(positive)],
            alpha=self.weights.alpha,
            beta=self.weights.beta,
            gamma=self.weights.gamma,
        )
        return response.model_copy(update={"query_id": query_id, "refinement": refinement})

    # -- internals -----------------------------------------------------------------------------

    def _vectors(self, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        archive = self.searcher.archive
        vectors = []
        for image_id in dict.fromkeys(ids):
            vector = archive.catalog.embedding_of(image_id, archive.encoder.name)
            if vector is None:
                raise InvalidFeedbackError(
                    f"marked image {image_id} is not in the archive (or has no vector from the served "
                    f"encoder {archive.encoder.name}); mark only neighbours a search returned"
                )
            vectors.append(np.asarray(vector, np.float32))
        return np.stack(vectors) if vectors else np.zeros((0, archive.encoder.dim), np.float32)

    def _similarities(self, ids: Sequence[int], query: npt.NDArray[np.float32]) -> dict[int, float]:
        vectors = self._vectors(ids)
        return {i: float(v @ query) for i, v in zip(ids, vectors, strict=True)}

    def _upload(self, owner: str, query_id: str | None, patient_ref: str | None, box: Box | None) -> _Origin:
        data = self.queries.get(str(query_id), owner)  # another user's, or expired: NotFoundError
        archive = self.searcher.archive
        decoded = load_image(data, max_pixels=self.searcher.max_pixels)
        vector = archive.encoder.embed([_region(decoded.pixels, box)])[0]
        patient = upload_patient(archive, data, decoded, patient_ref)
        query = self.searcher._query_info(data, decoded, None, patient.patient_ref)
        return _Origin(
            vector, patient, query.model_copy(update={"box": box.as_list() if box else None}), None
        )

    def _archived(self, image_id: int, filters: SearchFilters, box: Box | None) -> _Origin:
        archive = self.searcher.archive
        row = archive.catalog.image(image_id)
        vector = archive.catalog.embedding_of(image_id, archive.encoder.name) if row else None
        if row is None or vector is None:
            raise NotFoundError(
                f"image {image_id} does not exist or has no vector from the served encoder; "
                "pick one from GET /cases"
            )
        query = self.searcher.search_by_image(image_id, filters.model_copy(update={"k": 1})).query
        if box is not None:
            source = read_stored_if_present(row.source_uri)
            if source is None:
                raise NotFoundError(
                    f"image {image_id}: its source file is no longer reachable, and a region is cut from "
                    "the full image; refine the whole-image search instead (no box)"
                )
            pixels = load_image(source, max_pixels=self.searcher.max_pixels, frame=row.frame_index).pixels
            vector = archive.encoder.embed([_region(pixels, box)])[0]
            query = query.model_copy(update={"box": box.as_list()})
        return _Origin(vector, archived_patient(row.case.patient_ref, row.case_id), query, row.id)


def _region(pixels: npt.NDArray[np.float32], box: Box | None) -> npt.NDArray[np.float32]:
    """The whole image, or the checked box of it."""
    if box is None:
        return pixels
    return crop(pixels, check_box(box, pixels.shape[0], pixels.shape[1]))


def save_marks(
    catalog: Catalog, case_id: int, marks: FeedbackMarksIn, username: str
) -> list[FeedbackMarkOut]:
    """Keep a refined search's marks with a case (replacing those saved before for the same search),
    under the refine rules: at most MAX_MARKS, none marked both ways, every one an archived image."""
    check_marks(marks.positive, marks.negative)
    ids = set(marks.positive) | set(marks.negative)
    found = catalog.images_by_ids(sorted(i for i in ids if 0 <= i < 2**63)) if ids else {}
    missing = sorted(ids - set(found))
    if missing:
        raise InvalidFeedbackError(
            f"image(s) {', '.join(map(str, missing[:10]))} are not in the archive; mark neighbours of the search"
        )
    saved = catalog.save_feedback_marks(
        case_id,
        marks.origin,
        positive=marks.positive,
        negative=marks.negative,
        round_number=marks.round,
        username=username,
    )
    return [_mark_out(m) for m in saved]


def case_marks(catalog: Catalog, case_id: int) -> list[FeedbackMarkOut]:
    """The marks saved with a case; NotFoundError when the case does not exist."""
    if catalog.case(case_id) is None:
        raise NotFoundError(f"case {case_id} does not exist; pick one from GET /cases")
    return [_mark_out(m) for m in catalog.feedback_marks(case_id)]


def _mark_out(mark: FeedbackMark) -> FeedbackMarkOut:
    return FeedbackMarkOut(
        origin=mark.origin,
        image_id=mark.image_id,
        relevant=mark.relevant,
        round=mark.round,
        username=mark.username,
        at=utc_iso(mark.at),
    )
