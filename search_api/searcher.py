"""The Searcher: query image bytes -> decoded pixels -> vector -> neighbours -> hits and a kNN vote."""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imaging import DecodedImage, load_image, render_png
from indexer.archive import Archive
from indexer.catalog import Image
from indexer.errors import NotFoundError
from indexer.prediction.ood import ArchiveOodCache
from indexer.prediction.versions import heads_stamp, latest_head, latest_vote_calibration
from indexer.storage.stored import (
    UnreadableSourceUriError,
    is_pacs_uri,
    load_stored_image,
    read_stored_if_present,
)
from search_api.exclusion import QueryPatient, archived_patient, excluded_ids, upload_patient
from search_api.mappers import case_out, case_summary, hit_out, pacs_link_out
from search_api.predictions import Predictors, calibrated_vote, flag_uncertain, head_prediction, vote
from search_api.schemas import (
    CaseList,
    CaseOut,
    DisplayWindow,
    Exclusion,
    FilterOptions,
    HealthOut,
    Hit,
    LabelCount,
    PacsLink,
    Prediction,
    QueryInfo,
    SearchFilters,
    SearchResponse,
)
from search_api.windows import resolve_window, window_presets, window_scale, windowed

log = logging.getLogger(__name__)

QUERY_PREVIEW_SIDE = 512
# With group_by, the index is asked for this many times more neighbours per round until k groups fill.
GROUP_FETCH_FACTOR = 4


@dataclass(frozen=True)
class _Found:
    """One query's hits, how many images passed the filters, the best allowed similarity, the exclusion."""

    hits: list[Hit]
    candidates: int | None
    top_similarity: float | None
    exclusion: Exclusion


def _group_key(row: Image, group_by: str | None) -> str:
    if group_by == "study":
        uid = row.study_instance_uid or row.case.study_instance_uid
        return f"study:{uid}" if uid else f"case:{row.case_id}"
    if group_by == "series":
        return f"series:{row.series_instance_uid}" if row.series_instance_uid else f"image:{row.id}"
    return f"image:{row.id}"


class Searcher:
    """Answers searches and lookups over an open archive; knows nothing of HTTP."""

    def __init__(
        self, archive: Archive, max_pixels: int | None = None, index_poll_seconds: float = 0.0
    ) -> None:
        self.archive = archive
        self.max_pixels = max_pixels
        self.index_poll_seconds = index_poll_seconds  # how often the app catches the index up (0: never)
        # Case additions and deletions change the index while searches read it: one lock for both.
        self.index_lock = archive.index_lock
        self._predictors = Predictors()
        self._predictors_stamp = -1
        self._predictors_lock = threading.Lock()
        self._archive_ood = ArchiveOodCache()

    def search(
        self,
        data: bytes,
        k: int = 10,
        modality: str | None = None,
        *,
        filters: SearchFilters | None = None,
        window: DisplayWindow | None = None,
        window_preset: str | None = None,
        patient_ref: str | None = None,
    ) -> SearchResponse:
        """The k stored images most similar to the query, and a vote over their diagnoses.

        `filters` (when given) wins over `k` and `modality`; `window`/`window_preset` change the
        query preview only. The query's patient (for exclude_patient) is `patient_ref` (a patient id or
        its P-... pseudonym), its DICOM PatientID and the patients of stored images with the same file or
        pixels; when none is known the answer's `exclusion` says it was not applied, and why.
        """
        start = time.perf_counter()
        filters = filters or SearchFilters(k=k, modality=modality or None)
        decoded = load_image(data, max_pixels=self.max_pixels)
        preview_window = window or resolve_window(decoded.metadata, preset=window_preset)
        vector = self.archive.encoder.embed([decoded.pixels])[0]
        patient = upload_patient(self.archive, data, decoded, patient_ref)
        found = self._neighbours(vector, filters, patient)
        query = self._query_info(data, decoded, preview_window, patient.patient_ref)
        return self._response(query, found, filters, start, vector)

    def search_by_image(
        self, image_id: int, filters: SearchFilters | None = None, window: DisplayWindow | None = None
    ) -> SearchResponse:
        """Search with an archived image's stored embedding; the image itself is never a hit."""
        start = time.perf_counter()
        filters = filters or SearchFilters()
        row = self.archive.catalog.image(image_id)
        vector = self.archive.catalog.embedding_of(image_id, self.archive.encoder.name) if row else None
        if row is None or vector is None:
            raise NotFoundError(
                f"image {image_id} does not exist or has no vector from the served encoder "
                f"{self.archive.encoder.name}; pick one from GET /cases"
            )
        patient = archived_patient(row.case.patient_ref, row.case_id)
        found = self._neighbours(vector, filters, patient, exclude_id=row.id)
        source = read_stored_if_present(row.source_uri)
        if source is not None:
            decoded = load_image(source, max_pixels=self.max_pixels, frame=row.frame_index)
            query = self._query_info(source, decoded, window, row.case.patient_ref)
        else:  # the source file is gone: the stored thumbnail stands in, with the catalog's header fields
            query = QueryInfo(
                format="thumbnail",
                rows=row.rows or 0,
                columns=row.columns or 0,
                frames=row.frames,
                frame_index=row.frame_index,
                modality=row.modality,
                body_part=row.body_part,
                study_description=row.study_description,
                series_description=row.series_description,
                window_center=row.window_center,
                window_width=row.window_width,
                preview_png_base64=base64.b64encode(self.thumbnail(row.id)).decode("ascii"),
                patient_ref=row.case.patient_ref,
            )
        link = self._pacs_link(row.source_uri)
        query = query.model_copy(update={"image_id": row.id, "case_id": row.case_id, "pacs": link})
        return self._response(query, found, filters, start, vector)

    def _pacs_link(self, uri: str) -> PacsLink | None:
        """The PACS link of a stored source URI (None unless it is an instance of a configured PACS)."""
        if not is_pacs_uri(uri):
            return None
        return pacs_link_out(uri, {c.name: c for c in self.archive.catalog.pacs_connections()})

    def render(
        self,
        data: bytes,
        center: float | None = None,
        width: float | None = None,
        preset: str | None = None,
        max_side: int = QUERY_PREVIEW_SIDE,
    ) -> bytes:
        """The image as a PNG, re-windowed for display when a window or preset is given."""
        decoded = load_image(data, max_pixels=self.max_pixels)
        window = resolve_window(decoded.metadata, center, width, preset)
        return self._render_decoded(data, decoded, window, max_side)

    def render_image(
        self,
        image_id: int,
        center: float | None = None,
        width: float | None = None,
        preset: str | None = None,
        max_side: int = QUERY_PREVIEW_SIDE,
    ) -> bytes:
        """An archived image as a PNG, re-windowed; needs its source file to still be reachable."""
        row = self.archive.catalog.image(image_id)
        if row is None:
            raise NotFoundError(f"image {image_id} does not exist")
        source = read_stored_if_present(row.source_uri)
        if source is None:
            raise NotFoundError(
                f"image {image_id}: the source file is no longer reachable; only its thumbnail is available"
            )
        decoded = load_image(source, max_pixels=self.max_pixels, frame=row.frame_index)
        window = resolve_window(decoded.metadata, center, width, preset)
        return self._render_decoded(source, decoded, window, max_side)

    def cases(self, limit: int = 50, offset: int = 0, text: str | None = None) -> CaseList:
        """One page of the archive's cases (those matching every word of `text`), to pick a query from."""
        total, rows = self.archive.catalog.list_cases(limit=limit, offset=offset, text=text)
        cases = [case_summary(case) for case in rows]
        return CaseList(total=total, offset=offset, limit=limit, cases=cases)

    def filter_options(self) -> FilterOptions:
        """What each filter can be set to in this archive."""
        catalog = self.archive.catalog
        return FilterOptions(
            modalities=catalog.modalities(),
            body_parts=catalog.body_parts(),
            labels=[LabelCount(label=label, cases=n) for label, n in catalog.stats().labels.items()],
            window_presets=window_presets(),
        )

    # -- internals -----------------------------------------------------------------------------

    def _neighbours(
        self,
        vector: npt.NDArray[np.float32],
        filters: SearchFilters,
        patient: QueryPatient,
        exclude_id: int | None = None,
    ) -> _Found:
        """Hits for one query vector; filters restrict the ids FAISS may return, never a top-k after.

        The best similarity among the allowed images (the query image itself never counts) comes back
        too: the OOD check must judge what the filters let through, not the query's own copy.
        """
        catalog = self.archive.catalog
        dropped, exclusion = excluded_ids(self.archive, patient, filters.exclude_patient)
        allowed: npt.NDArray[np.int64] | None = None
        if filters.modality or filters.body_part or filters.label or dropped is not None:
            allowed = catalog.filtered_image_ids(
                encoder=self.archive.encoder.name,
                modality=filters.modality,
                body_part=filters.body_part,
                label=filters.label,
            )
        if allowed is not None and dropped is not None:
            allowed = allowed[~np.isin(allowed, dropped)]
        if allowed is not None and exclude_id is not None:
            allowed = allowed[allowed != exclude_id]
        pool = len(self.archive.index) if allowed is None else len(allowed)
        extra = 1 if exclude_id is not None and allowed is None else 0
        fetch = min(filters.k + extra, max(pool, 1))
        while True:
            with self.index_lock:
                result = self.archive.index.search(vector[None, :], fetch, allowed_ids=allowed)[0]
            rows = catalog.images_by_ids([int(i) for i in result.ids])
            pacs = (
                {c.name: c for c in catalog.pacs_connections()}
                if any(is_pacs_uri(r.source_uri) for r in rows.values())
                else {}
            )
            top = next(
                (
                    float(s)
                    for i, s in zip(result.ids, result.similarities, strict=True)
                    if i >= 0 and i != exclude_id
                ),
                None,
            )
            hits: list[Hit] = []
            seen: set[str] = set()
            below_threshold = False
            for image_id, similarity in zip(result.ids, result.similarities, strict=True):
                if filters.min_similarity is not None and similarity < filters.min_similarity:
                    below_threshold = True  # sorted best first: everything after is lower still
                    break
                row = rows.get(int(image_id))
                if row is None or row.id == exclude_id:  # a deleted row is never shown as a ghost
                    continue
                key = _group_key(row, filters.group_by)
                if key in seen:
                    continue
                seen.add(key)
                hits.append(hit_out(len(hits) + 1, row, float(similarity), pacs))
                if len(hits) == filters.k:
                    break
            exhausted = len(result.ids) < fetch or fetch >= pool
            if len(hits) >= filters.k or below_threshold or exhausted or filters.group_by is None:
                candidates = None if allowed is None else len(allowed)
                return _Found(hits, candidates, top, exclusion)
            fetch = min(fetch * GROUP_FETCH_FACTOR, pool)

    def _query_info(
        self,
        source: bytes | Path,
        decoded: DecodedImage,
        window: DisplayWindow | None,
        patient_ref: str | None,
    ) -> QueryInfo:
        meta = decoded.metadata
        scale = window_scale(meta, decoded.pixels)
        return QueryInfo(
            format=meta.format,
            rows=meta.rows,
            columns=meta.columns,
            frames=meta.frames,
            frame_index=meta.frame_index,
            modality=meta.modality,
            body_part=meta.body_part,
            study_description=meta.study_description,
            series_description=meta.series_description,
            window_center=meta.window_center,
            window_width=meta.window_width,
            preview_png_base64=base64.b64encode(
                self._render_decoded(source, decoded, window, QUERY_PREVIEW_SIDE)
            ).decode("ascii"),
            display_window=window,
            window_units=scale.units,  # type: ignore[arg-type]
            window_min=scale.low,
            window_max=scale.high,
            patient_ref=patient_ref,
        )

    def predictors(self) -> Predictors:
        """The newest head and vote calibration of the serving encoder, reloaded when DATA_DIR/heads changes."""
        data_dir = self.archive.settings.data_dir
        stamp = heads_stamp(data_dir)
        with self._predictors_lock:
            if stamp != self._predictors_stamp:
                name = self.archive.encoder.name
                self._predictors = Predictors(
                    head=latest_head(data_dir, name), vote=latest_vote_calibration(data_dir, name)
                )
                self._predictors_stamp = stamp
                head, calibration = self._predictors.head, self._predictors.vote
                log.info(
                    "predictors for %s: head %s, vote calibration %s",
                    name,
                    head.version if head else "none",
                    calibration.version if calibration else "none",
                )
            predictors = self._predictors
        if predictors.vote is None:  # no fitted threshold: the archive's own, measured on its stored images
            archive_ood = self._archive_ood.get(self.archive, self.index_lock)
            predictors = replace(predictors, archive_ood=archive_ood)
        return predictors

    def _predictions(
        self, hits: list[Hit], vector: npt.NDArray[np.float32], top: float | None
    ) -> tuple[Prediction, Prediction | None]:
        predictors = self.predictors()
        neighbours = [(h.similarity, h.diagnosis) for h in hits]
        knn = calibrated_vote(neighbours, predictors.vote) if predictors.vote else vote(neighbours)
        ood, floor, source = predictors.ood_similarity, predictors.min_confidence, predictors.ood_source
        head = predictors.head
        return (
            flag_uncertain(knn, top, ood, floor, source),
            flag_uncertain(head_prediction(head, vector), top, ood, floor, source) if head else None,
        )

    def _response(
        self,
        query: QueryInfo,
        found: _Found,
        filters: SearchFilters,
        start: float,
        vector: npt.NDArray[np.float32],
    ) -> SearchResponse:
        prediction, head = self._predictions(found.hits, vector, found.top_similarity)
        return SearchResponse(
            query=query,
            hits=found.hits,
            prediction=prediction,
            encoder=self.archive.encoder.name,
            index_size=len(self.archive.index),
            took_ms=(time.perf_counter() - start) * 1000.0,
            filters=filters,
            candidates=found.candidates,
            head_prediction=head,
            exclusion=found.exclusion,
        )

    def _render_decoded(
        self, source: bytes | Path, decoded: DecodedImage, window: DisplayWindow | None, max_side: int
    ) -> bytes:
        return render_png(windowed(source, decoded, window, self.max_pixels).pixels, max_side)

    def case(self, case_id: int) -> CaseOut:
        """A stored case with its images."""
        case = self.archive.catalog.case(case_id)
        if case is None:
            raise NotFoundError(f"case {case_id} does not exist")
        return case_out(case)

    def thumbnail(self, image_id: int) -> bytes:
        """The stored image's PNG thumbnail, rendered at ingest with the same windowing as its embedding."""
        image = self.archive.catalog.image(image_id)
        if image is None or not image.thumbnail_path:
            raise NotFoundError(f"image {image_id} does not exist")
        path = self.archive.settings.thumbnail_dir / Path(image.thumbnail_path)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            # the cache lost it: re-render from the source (file or archive member) when it is still reachable
            try:
                decoded = load_stored_image(image.source_uri, image.frame_index)
            except (OSError, UnreadableSourceUriError):
                raise NotFoundError(f"image {image_id}: thumbnail and source file are gone") from None
            png = render_png(decoded.pixels, 256)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            return png

    def health(self) -> HealthOut:
        """What is loaded and whether the catalog answers."""
        catalog_ok = self.archive.catalog.ping()
        stats = self.archive.catalog.stats() if catalog_ok else None
        encoder = self.archive.encoder
        predictors = self.predictors()
        index = self.archive.index
        generation = self.archive.catalog.generation() if catalog_ok else index.generation
        behind_rows = max(0, generation - index.generation)
        behind_s = 0.0 if behind_rows == 0 else max(0.0, time.time() - index.synced_at)
        stale = behind_s > max(60.0, 3 * self.index_poll_seconds)
        return HealthOut(
            status=("stale" if stale else "ok") if catalog_ok else "degraded",
            catalog_size=self.archive.catalog.vector_count(encoder.name) if catalog_ok else 0,
            catalog_generation=generation,
            index_generation=index.generation,
            index_behind_rows=behind_rows,
            index_behind_seconds=round(behind_s, 3),
            index_poll_seconds=self.index_poll_seconds,
            encoder=encoder.name,
            dim=encoder.dim,
            device=str(getattr(encoder, "device", "cpu")),
            backend=str(getattr(encoder, "backend", "torch")),
            index_size=len(self.archive.index),
            catalog_ok=catalog_ok,
            catalog_images=stats.images if stats else 0,
            modalities=self.archive.catalog.modalities() if catalog_ok else [],
            index_postprocess=str(index.postprocess.spec) if index.postprocess else "none",
            index_postprocess_version=index.postprocess.version if index.postprocess else None,
            head_version=predictors.head.version if predictors.head else None,
            vote_calibration_version=predictors.vote.version if predictors.vote else None,
        )
