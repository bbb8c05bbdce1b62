"""The bulk ingest pipeline: read, decode (in worker threads), embed in batches, write rows, then vectors."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embeddings import EmbeddingsError
from imaging import DecodedImage, ImagingError, load_image, pixel_digest, render_png
from indexer.archive import Archive
from indexer.catalog import Image
from indexer.manifest import CaseInfo, Manifest
from indexer.pseudonym import patient_reference
from indexer.sources import SourceItem, looks_like_image

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 256
_SAVE_EVERY_BATCHES = 20


@dataclass
class IngestReport:
    """What one run did."""

    seen: int = 0
    indexed: int = 0
    already_indexed: int = 0
    not_images: int = 0
    failed: int = 0
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Files handled per second."""
        return self.seen / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class _Decoded:
    item: SourceItem
    sha256: str
    image: DecodedImage
    thumbnail: bytes
    digest: str


@dataclass
class _Skipped:
    item: SourceItem
    sha256: str | None
    error: BaseException | None  # None: not an image, nothing to record


def _prepare(item: SourceItem, is_known: Callable[[str], bool]) -> _Decoded | _Skipped | str:
    """Read and decode one file; returns its sha256 alone when it is already in the catalog."""
    try:
        data = item.read_bytes()
    except OSError as exc:
        return _Skipped(item, None, exc)
    sha = hashlib.sha256(data).hexdigest()
    if is_known(sha):
        return sha
    try:
        image = load_image(data)
    except ImagingError as exc:
        if item.expected_image or looks_like_image(item.path):
            return _Skipped(item, sha, exc)
        return _Skipped(item, sha, None)
    except Exception as exc:  # a decoder bug must not abort a bulk run: record it and go on
        log.exception("unexpected decoder error on %s", item.uri)
        return _Skipped(item, sha, exc)
    return _Decoded(item, sha, image, render_png(image.pixels, THUMBNAIL_SIDE), pixel_digest(image.pixels))


def _chunks(items: Iterable[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def case_key_for(decoded: _Decoded, info: CaseInfo | None) -> str:
    """Manifest case id, else one case per manifest row (file), else the DICOM study, else the file."""
    if info is not None and info.case_key:
        return info.case_key
    if info is None and decoded.image.metadata.study_instance_uid:
        return f"study:{decoded.image.metadata.study_instance_uid}"
    return f"file:{decoded.sha256[:24]}"


class Ingestor:
    """Ingests items into an open archive; one bad file is recorded and the run goes on."""

    def __init__(
        self, archive: Archive, manifest: Manifest | None = None, workers: int | None = None
    ) -> None:
        self.archive = archive
        self.manifest = manifest
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.batch_size = max(1, archive.settings.batch_size)

    def run(self, items: Sequence[SourceItem], *, progress: bool = True) -> IngestReport:
        """Ingest every item; re-running on the same files is a no-op."""
        report = IngestReport()
        start = time.perf_counter()
        known: set[str] = set()

        def is_known(sha: str) -> bool:
            return sha in known or bool(self.archive.catalog.known_sha256([sha]))

        batches_since_save = 0
        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool,
            tqdm(total=len(items), unit="file", desc="indexing", disable=not progress, smoothing=0.1) as bar,
        ):
            pending: list[Future[_Decoded | _Skipped | str]] | None = None
            for chunk in _chunks(items, self.batch_size):
                submitted = [pool.submit(_prepare, item, is_known) for item in chunk]
                if pending is not None:
                    batches_since_save += self._finish(pending, known, report)
                    bar.update(len(pending))
                    bar.set_postfix(
                        indexed=report.indexed, skipped=report.already_indexed, failed=report.failed
                    )
                pending = submitted
                if batches_since_save >= _SAVE_EVERY_BATCHES:
                    self.archive.save_index()
                    batches_since_save = 0
            if pending is not None:
                self._finish(pending, known, report)
                bar.update(len(pending))
                bar.set_postfix(indexed=report.indexed, skipped=report.already_indexed, failed=report.failed)
        if report.indexed:
            self.archive.save_index()
        report.elapsed_s = time.perf_counter() - start
        log.info(
            "ingest done: %d files, %d indexed, %d already indexed, %d not images, %d failed, %.1f files/s",
            report.seen,
            report.indexed,
            report.already_indexed,
            report.not_images,
            report.failed,
            report.rate,
        )
        return report

    def _finish(
        self, futures: list[Future[_Decoded | _Skipped | str]], known: set[str], report: IngestReport
    ) -> int:
        decoded: list[_Decoded] = []
        for future in futures:
            result = future.result()
            report.seen += 1
            if isinstance(result, str):
                report.already_indexed += 1
            elif isinstance(result, _Skipped):
                if result.error is None:
                    report.not_images += 1
                else:
                    report.failed += 1
                    self.archive.catalog.record_failure(result.item.uri, result.error, result.sha256)
            else:
                decoded.append(result)
        if not decoded:
            return 0
        stored = self.archive.catalog.known_sha256(d.sha256 for d in decoded) | known
        fresh: list[_Decoded] = []
        for d in decoded:
            if d.sha256 in stored:
                report.already_indexed += 1
            else:
                stored.add(d.sha256)
                fresh.append(d)
        if not fresh:
            return 0
        fresh, vectors = self._embed(fresh, report)
        if not fresh:
            return 0
        ids = self._write_rows(fresh, vectors)
        known.update(d.sha256 for d in fresh)
        # Row first, vector second: a crash between the two leaves the catalog ahead, and the
        # index is rebuilt from it at the next start.
        self.archive.index.add(np.asarray(ids, dtype=np.int64), vectors)
        report.indexed += len(fresh)
        return 1

    def _embed(self, fresh: list[_Decoded], report: IngestReport) -> tuple[list[_Decoded], np.ndarray]:
        """Embed a batch; when the batch fails, embed one by one so only the bad image is recorded."""
        encoder = self.archive.encoder
        try:
            return fresh, encoder.embed([d.image.pixels for d in fresh])
        except EmbeddingsError:
            log.warning("a batch of %d images failed to embed; retrying one by one", len(fresh))
        kept: list[_Decoded] = []
        vectors: list[np.ndarray] = []
        for d in fresh:
            try:
                vectors.append(encoder.embed([d.image.pixels])[0])
                kept.append(d)
            except EmbeddingsError as exc:
                report.failed += 1
                self.archive.catalog.record_failure(d.item.uri, exc, d.sha256)
        return kept, (np.stack(vectors) if vectors else np.empty((0, encoder.dim), np.float32))

    def _write_rows(self, fresh: list[_Decoded], vectors: np.ndarray) -> list[int]:
        archive = self.archive
        thumb_dir = archive.settings.thumbnail_dir
        for d in fresh:
            path = thumb_dir / d.sha256[:2] / f"{d.sha256}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(d.thumbnail)
                os.replace(tmp, path)
        with archive.catalog.session() as session:
            rows: list[Image] = []
            for d, vector in zip(fresh, vectors, strict=True):
                info = self.manifest.lookup(d.item.relative) if self.manifest is not None else None
                meta = d.image.metadata
                case = archive.catalog.get_or_create_case(
                    session,
                    case_key_for(d, info),
                    patient_ref=patient_reference(
                        archive.pseudonym_key, (info.patient_id if info else None) or meta.patient_id
                    ),
                    study_instance_uid=meta.study_instance_uid,
                    report=info.report if info else None,
                    labels=info.labels if info else [],
                )
                row = Image(
                    case=case,
                    source_uri=d.item.uri,
                    sha256=d.sha256,
                    pixel_digest=d.digest,
                    format=meta.format,
                    sop_instance_uid=meta.sop_instance_uid,
                    study_instance_uid=meta.study_instance_uid,
                    series_instance_uid=meta.series_instance_uid,
                    modality=meta.modality,
                    body_part=meta.body_part,
                    study_description=meta.study_description,
                    series_description=meta.series_description,
                    view_position=meta.view_position,
                    laterality=meta.laterality,
                    pixel_spacing_row=meta.pixel_spacing[0] if meta.pixel_spacing else None,
                    pixel_spacing_column=meta.pixel_spacing[1] if meta.pixel_spacing else None,
                    study_date=meta.study_date,
                    sop_class_uid=meta.sop_class_uid,
                    rows=meta.rows,
                    columns=meta.columns,
                    frames=meta.frames,
                    frame_index=meta.frame_index,
                    window_center=meta.window_center,
                    window_width=meta.window_width,
                    thumbnail_path=f"{d.sha256[:2]}/{d.sha256}.png",
                    encoder=archive.encoder.name,
                    embedding=np.asarray(vector, dtype=np.float32).tobytes(),
                )
                session.add(row)
                rows.append(row)
            session.flush()
            return [row.id for row in rows]


def ingest_path(
    archive: Archive, root: Path, manifest: Manifest | None = None, *, progress: bool = True
) -> IngestReport:
    """Index every file under root (or root itself when it is a file)."""
    from indexer.sources import iter_folder

    items = list(iter_folder(root))
    return Ingestor(archive, manifest).run(items, progress=progress)
