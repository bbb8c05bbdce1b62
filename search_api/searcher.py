"""The Searcher: query image bytes -> decoded pixels -> vector -> neighbours -> hits and a kNN vote."""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from imaging import load_image, render_png
from indexer.archive import Archive
from indexer.catalog import Case, Image
from search_api.schemas import (
    CaseImage,
    CaseOut,
    HealthOut,
    Hit,
    LabelScore,
    Prediction,
    QueryInfo,
    SearchResponse,
)

QUERY_PREVIEW_SIDE = 512


class NotFoundError(LookupError):
    """The requested case or image does not exist."""


def vote(neighbours: Sequence[tuple[float, Sequence[str]]]) -> Prediction:
    """Similarity-weighted vote: each labeled neighbour casts its (non-negative) similarity, split over its labels."""
    weights: dict[str, float] = defaultdict(float)
    votes: dict[str, int] = defaultdict(int)
    labeled = 0
    for similarity, labels in neighbours:
        if not labels:
            continue
        labeled += 1
        share = max(float(similarity), 0.0) / len(labels)
        for label in labels:
            weights[label] += share
            votes[label] += 1
    total = sum(weights.values())
    if labeled == 0:
        return Prediction()
    if total <= 0:  # every labeled neighbour is dissimilar: fall back to plain counts
        weights = defaultdict(float, {label: float(n) for label, n in votes.items()})
        total = sum(weights.values())
    scores = sorted(
        (LabelScore(label=label, score=w / total, votes=votes[label]) for label, w in weights.items()),
        key=lambda s: (-s.score, s.label),
    )
    return Prediction(
        label=scores[0].label, confidence=scores[0].score, scores=scores, labeled_neighbours=labeled
    )


class Searcher:
    """Answers searches and lookups over an open archive; knows nothing of HTTP."""

    def __init__(self, archive: Archive, max_pixels: int | None = None) -> None:
        self.archive = archive
        self.max_pixels = max_pixels

    def search(self, data: bytes, k: int = 10, modality: str | None = None) -> SearchResponse:
        """The k stored images most similar to the query, and a vote over their diagnoses."""
        start = time.perf_counter()
        decoded = load_image(data, max_pixels=self.max_pixels)
        vector = self.archive.encoder.embed([decoded.pixels])
        allowed = None
        if modality:
            allowed = self.archive.catalog.image_ids_where(
                encoder=self.archive.encoder.name, modality=modality
            )
        result = self.archive.index.search(vector, k, allowed_ids=allowed)[0]
        rows = self.archive.catalog.images_by_ids([int(i) for i in result.ids])
        hits: list[Hit] = []
        for image_id, similarity in zip(result.ids, result.similarities, strict=True):
            row = rows.get(int(image_id))
            if row is None:  # the index is ahead of the catalog (deleted row): never show a ghost
                continue
            hits.append(self._hit(len(hits) + 1, row, float(similarity)))
        meta = decoded.metadata
        query = QueryInfo(
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
            preview_png_base64=base64.b64encode(render_png(decoded.pixels, QUERY_PREVIEW_SIDE)).decode(
                "ascii"
            ),
        )
        return SearchResponse(
            query=query,
            hits=hits,
            prediction=vote([(h.similarity, h.diagnosis) for h in hits]),
            encoder=self.archive.encoder.name,
            index_size=len(self.archive.index),
            took_ms=(time.perf_counter() - start) * 1000.0,
        )

    def case(self, case_id: int) -> CaseOut:
        """A stored case with its images."""
        case = self.archive.catalog.case(case_id)
        if case is None:
            raise NotFoundError(f"case {case_id} does not exist")
        return _case_out(case)

    def thumbnail(self, image_id: int) -> bytes:
        """The stored image's PNG thumbnail, rendered at ingest with the same windowing as its embedding."""
        image = self.archive.catalog.image(image_id)
        if image is None or not image.thumbnail_path:
            raise NotFoundError(f"image {image_id} does not exist")
        path = self.archive.settings.thumbnail_dir / Path(image.thumbnail_path)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            # the cache lost it: re-render from the source file when it is still reachable
            parsed = urlparse(image.source_uri)
            source = Path(url2pathname(parsed.path))
            if parsed.scheme != "file" or not source.exists():
                raise NotFoundError(f"image {image_id}: thumbnail and source file are gone") from None
            png = render_png(load_image(source).pixels, 256)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            return png

    def health(self) -> HealthOut:
        """What is loaded and whether the catalog answers."""
        catalog_ok = self.archive.catalog.ping()
        stats = self.archive.catalog.stats() if catalog_ok else None
        encoder = self.archive.encoder
        return HealthOut(
            status="ok" if catalog_ok else "degraded",
            encoder=encoder.name,
            dim=encoder.dim,
            device=str(getattr(encoder, "device", "cpu")),
            index_size=len(self.archive.index),
            catalog_ok=catalog_ok,
            catalog_images=stats.images if stats else 0,
            modalities=self.archive.catalog.modalities() if catalog_ok else [],
        )

    @staticmethod
    def _hit(rank: int, row: Image, similarity: float) -> Hit:
        case = row.case
        return Hit(
            rank=rank,
            image_id=row.id,
            case_id=case.id,
            case_key=case.case_key,
            source_uri=row.source_uri,
            similarity=float(np.clip(similarity, -1.0, 1.0)),
            modality=row.modality,
            body_part=row.body_part,
            study_description=row.study_description,
            series_description=row.series_description,
            frame_index=row.frame_index,
            diagnosis=case.labels,
            report=case.report,
            patient_ref=case.patient_ref,
            thumbnail_url=f"/images/{row.id}/thumbnail",
            case_url=f"/cases/{case.id}",
        )


def _case_out(case: Case) -> CaseOut:
    return CaseOut(
        case_id=case.id,
        case_key=case.case_key,
        patient_ref=case.patient_ref,
        study_instance_uid=case.study_instance_uid,
        report=case.report,
        diagnosis=case.labels,
        images=[
            CaseImage(
                image_id=img.id,
                source_uri=img.source_uri,
                modality=img.modality,
                body_part=img.body_part,
                study_description=img.study_description,
                series_description=img.series_description,
                sop_instance_uid=img.sop_instance_uid,
                rows=img.rows,
                columns=img.columns,
                frames=img.frames,
                thumbnail_url=f"/images/{img.id}/thumbnail",
            )
            for img in case.images
        ],
    )
