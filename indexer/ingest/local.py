"""The bulk ingest pipeline: read, decode (in worker processes), embed in batches, write rows, then vectors."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from embeddings import EmbeddingsError
from imaging import (
    DecodedImage,
    ImagingError,
    UnsupportedFormatError,
    iter_frames,
    load_image,
    pixel_digest,
    render_png,
)
from indexer.archive import Archive
from indexer.catalog import Image
from indexer.errors import IndexerError
from indexer.governance.pseudonym import patient_reference
from indexer.ingest.manifest import CaseInfo, Manifest
from indexer.storage.sources import SourceItem, UnsafeSourceError, count_items, iter_source, looks_like_image

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

    def log_done(self, what: str = "ingest") -> None:
        """One log line with the counts (never file names or header text)."""
        log.info(
            "%s done: %d files, %d indexed, %d already indexed, %d not images, %d failed, %.1f files/s",
            what,
            self.seen,
            self.indexed,
            self.already_indexed,
            self.not_images,
            self.failed,
            self.rate,
        )


@dataclass
class _Decoded:
    item: SourceItem
    sha256: str
    image: DecodedImage
    thumbnail: bytes
    digest: str


@dataclass
class _Pending:
    item: SourceItem
    sha256: str
    looks_like_image: bool
    future: Future[list[_Frame] | BaseException]


FramePolicy = Literal["representative", "all"]
_Frame = tuple[DecodedImage, bytes, str]


def decode_for_ingest(
    data: bytes, max_pixels: int | None, frames: FramePolicy = "representative"
) -> list[_Frame] | BaseException:
    """Worker-process job: decode, render thumbnails and pixel digests; errors are returned, not raised.

    Frame policy: "representative" embeds one frame per object (the middle one of a multi-frame
    object); "all" embeds every frame, each stored with its frame number so a hit names the frame.
    """
    try:
        images = (
            iter_frames(data, max_pixels=max_pixels)
            if frames == "all"
            else [load_image(data, max_pixels=max_pixels)]
        )
        return [
            (image, render_png(image.pixels, THUMBNAIL_SIDE), pixel_digest(image.pixels)) for image in images
        ]
    except ImagingError as exc:
        return exc
    except Exception as exc:  # a decoder bug must not abort a bulk run: it is recorded and the run goes on
        return RuntimeError(f"unexpected decoder error ({type(exc).__name__}: {exc})")


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


def _thumbnail_name(decoded: _Decoded) -> str:
    """Thumbnail path under the data folder, from the content hash and frame (never from DICOM text)."""
    return f"{decoded.sha256[:2]}/{decoded.sha256}-f{decoded.image.metadata.frame_index}.png"


class SopInstanceConflictError(IndexerError):
    """A file reuses a stored SOP Instance UID with different pixels; the stored image is kept."""


def _executor(workers: int) -> Executor:
    if workers <= 0:
        return ThreadPoolExecutor(1, thread_name_prefix="decode")
    # spawn, not fork: the parent holds torch/OpenMP threads that a forked child must not inherit
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def default_decode_workers() -> int:
    """One decode process per core, leaving one core to the encoder (at least one worker)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class Ingestor:
    """Ingests items into an open archive; one bad file is recorded and the run goes on.

    The main thread reads and hashes each file and skips those already stored (so an interrupted run
    resumes where it stopped without decoding again); worker processes decode the rest while the
    encoder embeds the previous batch; rows are committed before their vectors enter the index.
    SOP Instance UID policy: a file whose SOP Instance UID (and frame) is already stored is a
    duplicate when its pixels are identical (a re-encoded copy: skipped), and a recorded conflict
    when they differ (the stored image is kept; `medcbir failures` lists it).
    """

    def __init__(
        self,
        archive: Archive,
        manifest: Manifest | None = None,
        workers: int | None = None,
        max_pixels: int | None = None,
        frames: FramePolicy = "representative",
    ) -> None:
        self.archive = archive
        self.manifest = manifest
        self.workers = default_decode_workers() if workers is None else workers
        self.batch_size = max(1, archive.settings.batch_size)
        self.max_pixels = max_pixels
        self.frames = frames

    def run(
        self, items: Iterable[SourceItem], *, total: int | None = None, progress: bool = True
    ) -> IngestReport:
        """Ingest every item; re-running on the same files is a no-op."""
        report = IngestReport()
        start = time.perf_counter()
        batches_since_save = 0
        with (
            _executor(self.workers) as pool,
            tqdm(total=total, unit="file", desc="indexing", disable=not progress, smoothing=0.05) as bar,
        ):
            pending: list[_Pending] = []
            for chunk in _chunks(items, self.batch_size):
                submitted = self._submit(pool, chunk, report)
                batches_since_save += self._finish(pending, report)
                bar.update(len(chunk))
                bar.set_postfix(indexed=report.indexed, skipped=report.already_indexed, failed=report.failed)
                pending = submitted
                if batches_since_save >= _SAVE_EVERY_BATCHES:
                    self.archive.save_index()
                    batches_since_save = 0
            self._finish(pending, report)
            bar.set_postfix(indexed=report.indexed, skipped=report.already_indexed, failed=report.failed)
        if report.indexed:
            self.archive.save_index()
        report.elapsed_s = time.perf_counter() - start
        report.log_done()
        return report

    def _submit(self, pool: Executor, chunk: list[SourceItem], report: IngestReport) -> list[_Pending]:
        """Read and hash a chunk; skip what is stored; send the rest to the decoders."""
        read: list[tuple[SourceItem, bytes, str]] = []
        for item in chunk:
            report.seen += 1
            try:
                data = item.read_bytes()
            except (OSError, UnsafeSourceError) as exc:
                report.failed += 1
                self.archive.catalog.record_failure(item.uri, exc)
                continue
            read.append((item, data, hashlib.sha256(data).hexdigest()))
        stored = self.archive.catalog.known_sha256(sha for _, _, sha in read)
        submitted: list[_Pending] = []
        for item, data, sha in read:
            if sha in stored:
                report.already_indexed += 1
                continue
            stored.add(sha)  # a second copy in this run is a duplicate of the first
            future = pool.submit(decode_for_ingest, data, self.max_pixels, self.frames)
            submitted.append(_Pending(item, sha, looks_like_image(data[:132]), future))
        return submitted

    def _finish(self, pending: list[_Pending], report: IngestReport) -> int:
        decoded: list[_Decoded] = []
        for job in pending:
            result = job.future.result()
            if isinstance(result, BaseException):
                if isinstance(result, UnsupportedFormatError) and not (
                    job.item.expected_image or job.looks_like_image
                ):
                    report.not_images += 1
                else:
                    report.failed += 1
                    self.archive.catalog.record_failure(job.item.uri, result, job.sha256)
                continue
            decoded.extend(
                _Decoded(job.item, job.sha256, image, thumbnail, digest)
                for image, thumbnail, digest in result
            )
        fresh = self._drop_sop_duplicates(decoded, report)
        if not fresh:
            return 0
        fresh, vectors = self._embed(fresh, report)
        if not fresh:
            return 0
        ids = self._write_rows(fresh, vectors)
        # Row first, vector second: a crash between the two leaves the catalog ahead, and the
        # index is rebuilt from it at the next start.
        self.archive.index.add(np.asarray(ids, dtype=np.int64), vectors)
        report.indexed += len(fresh)
        return 1

    def _drop_sop_duplicates(self, decoded: list[_Decoded], report: IngestReport) -> list[_Decoded]:
        keys = [(d.image.metadata.sop_instance_uid or "", d.image.metadata.frame_index) for d in decoded]
        stored = self.archive.catalog.pixel_digests_by_sop({k for k in keys if k[0]})
        fresh: list[_Decoded] = []
        for d, key in zip(decoded, keys, strict=True):
            if not key[0] or key not in stored:
                if key[0]:
                    stored[key] = d.digest
                fresh.append(d)
            elif stored[key] == d.digest:
                report.already_indexed += 1
            else:
                report.failed += 1
                conflict = SopInstanceConflictError(
                    f"SOP Instance UID (frame {key[1]}) is already stored with different pixels; "
                    "the stored image is kept. Remove it first to replace it."
                )
                self.archive.catalog.record_failure(d.item.uri, conflict, d.sha256)
        return fresh

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
            path = thumb_dir / _thumbnail_name(d)
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
                    thumbnail_path=_thumbnail_name(d),
                    encoder=archive.encoder.name,
                    embedding=np.asarray(vector, dtype=np.float32).tobytes(),
                )
                session.add(row)
                rows.append(row)
            session.flush()
            return [row.id for row in rows]


def ingest_path(
    archive: Archive,
    root: Path,
    manifest: Manifest | None = None,
    *,
    progress: bool = True,
    workers: int | None = None,
    frames: FramePolicy = "representative",
) -> IngestReport:
    """Index every file under root: a folder, a zip or tar archive, or one file."""
    total = count_items(root)
    ingestor = Ingestor(archive, manifest, workers=workers, frames=frames)
    return ingestor.run(iter_source(root), total=total, progress=progress)
