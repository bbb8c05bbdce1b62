"""Region queries: a box of the query image embedded on its own, searched, and located in each neighbour."""

from __future__ import annotations

import logging
import time

import numpy as np
import numpy.typing as npt

from embeddings import EmbeddingsError
from embeddings.encoder import Encoder
from embeddings.regions import locate_region
from imaging import DecodedImage, ImagingError, load_image
from imaging.region import Box, check_box, crop
from indexer.cleanup import model_encoder
from indexer.errors import NotFoundError
from indexer.storage.stored import UnreadableSourceUriError, load_stored_image, read_stored_if_present
from search_api.exclusion import archived_patient, upload_patient
from search_api.schemas import DisplayWindow, Hit, RegionMatch, SearchFilters, SearchResponse
from search_api.searcher import Searcher
from search_api.windows import resolve_window

log = logging.getLogger(__name__)


class RegionSearcher:
    """Answers POST /search and /search/by-image/{id} with `box`: the region is cropped from the
    display-ready pixels (the image's window kept), embedded alone and searched with the same filters,
    exclusions, vote and uncertainty rules; then, with a CNN encoder, each hit says where in it the
    region matches best (the rectangle of its feature map closest to the region's vector)."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher

    def search_upload(
        self,
        data: bytes,
        box: Box,
        filters: SearchFilters,
        *,
        window: DisplayWindow | None = None,
        window_preset: str | None = None,
        patient_ref: str | None = None,
        locate: bool = True,
    ) -> SearchResponse:
        """The neighbours of the box of an uploaded image."""
        start = time.perf_counter()
        searcher = self.searcher
        decoded = load_image(data, max_pixels=searcher.max_pixels)
        vector = self._embed_region(decoded, box)
        patient = upload_patient(searcher.archive, data, decoded, patient_ref)
        found = searcher._neighbours(vector, filters, patient)
        preview_window = window or resolve_window(decoded.metadata, preset=window_preset)
        query = searcher._query_info(data, decoded, preview_window, patient.patient_ref)
        query = query.model_copy(update={"box": box.as_list()})
        response = searcher._response(query, found, filters, start, vector)
        return self._located(response, vector) if locate else response

    def search_archived(
        self,
        image_id: int,
        box: Box,
        filters: SearchFilters,
        *,
        window: DisplayWindow | None = None,
        locate: bool = True,
    ) -> SearchResponse:
        """The neighbours of the box of an archived image (the image itself left out)."""
        start = time.perf_counter()
        searcher = self.searcher
        row = searcher.archive.catalog.image(image_id)
        if row is None:
            raise NotFoundError(f"image {image_id} does not exist; pick one from GET /cases")
        source = read_stored_if_present(row.source_uri)
        if source is None:
            raise NotFoundError(
                f"image {image_id}: its source file is no longer reachable, and a region is cut from the "
                "full image; search the whole image instead (no box)"
            )
        decoded = load_image(source, max_pixels=searcher.max_pixels, frame=row.frame_index)
        vector = self._embed_region(decoded, box)
        patient = archived_patient(row.case.patient_ref, row.case_id)
        found = searcher._neighbours(vector, filters, patient, exclude_id=row.id)
        query = searcher._query_info(source, decoded, window, row.case.patient_ref)
        query = query.model_copy(update={"image_id": row.id, "case_id": row.case_id, "box": box.as_list()})
        response = searcher._response(query, found, filters, start, vector)
        return self._located(response, vector) if locate else response

    # -- internals -----------------------------------------------------------------------------

    def _embed_region(self, decoded: DecodedImage, box: Box) -> npt.NDArray[np.float32]:
        rows, columns = decoded.pixels.shape[:2]
        region = crop(decoded.pixels, check_box(box, rows, columns))
        vector: npt.NDArray[np.float32] = self.searcher.archive.encoder.embed([region])[0]
        return vector

    def _located(self, response: SearchResponse, vector: npt.NDArray[np.float32]) -> SearchResponse:
        """Each hit with the box of it that best matches the region (when it can be computed)."""
        encoder = model_encoder(self.searcher.archive.encoder)
        if not isinstance(encoder, Encoder) or not response.hits:
            return response  # a model without spatial feature maps: the hits carry no box
        catalog = self.searcher.archive.catalog
        rows = catalog.images_by_ids([h.image_id for h in response.hits])
        images: list[npt.NDArray[np.float32]] = []
        placed: list[Hit] = []
        for hit in response.hits:
            row = rows.get(hit.image_id)
            if row is None:
                continue
            try:
                pixels = load_stored_image(
                    row.source_uri, row.frame_index, max_pixels=self.searcher.max_pixels
                ).pixels
            except (OSError, UnreadableSourceUriError, ImagingError):
                continue  # its source is gone: this hit says nothing about where
            images.append(pixels)
            placed.append(hit)
        try:
            matches = locate_region(encoder, images, vector)
        except EmbeddingsError as exc:
            log.warning("region matches not located: %s", exc)
            return response
        boxes = {
            hit.image_id: RegionMatch(
                box=list(match.box), rows=image.shape[0], columns=image.shape[1], score=match.score
            )
            for hit, image, match in zip(placed, images, matches, strict=True)
        }
        hits = [h.model_copy(update={"region": boxes.get(h.image_id)}) for h in response.hits]
        return response.model_copy(update={"hits": hits})
