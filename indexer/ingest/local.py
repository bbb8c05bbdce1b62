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
from indexer.errors import IndexerError
from indexer.ingest.manifest import Manifest
from indexer.ingest.orphans import die_with_parent
from indexer.ingest.writer import DecodedFrame, write_rows
from indexer.storage.sources import SourceItem, UnsafeSourceError, count_items, iter_source, looks_like_image

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 256
_SAVE_EVERY_BATCHES = 20
# Bytes read ahead of the decoders: a chunk closes at batch_size files or at this many bytes, so a run
# of large files (or of archive members that inflate) holds at most about two chunks in memory.
CHUNK_BYTES = 128 * 1024**2


@dataclass
class IngestReport:
    """What one run did."""

    seen: int = 0
    indexed: int = 0
    already_indexed: int = 0
    not_images: int = 0
    failed: int = 0
    manifest_unmatched: int = 0
    manifest_unlisted: int = 0  # files no manifest row names (indexed without labels)
    manifest_patient_conflicts: int = 0  # files the manifest lists under two patients
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
    except Exception as exc:  # a decoder bug (or MemoryError) must not abort a bulk run: it is recorded
        return RuntimeError(f"unexpected decoder error ({type(exc).__name__}: {exc})")


class CopyOfFailedFileError(IndexerError):
    """A file with the same bytes as another file of this run, which failed: see that file's reason."""


_Read = tuple[SourceItem, "bytes | BaseException"]


def _read_chunks(items: Iterable[SourceItem], size: int, max_bytes: int) -> Iterator[list[_Read]]:
    """Read each item as it is pulled (an archive is streamed, never read a batch ahead); chunk by count and bytes."""
    chunk: list[_Read] = []
    held = 0
    for item in items:
        try:
            data: bytes | BaseException = item.read_bytes()
        except (OSError, UnsafeSourceError) as exc:
            data = exc
        chunk.append((item, data))
        held += len(data) if isinstance(data, bytes) else 0
        if len(chunk) >= size or held >= max_bytes:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _unexpected(step: str, exc: Exception) -> RuntimeError:
    """An error outside the documented ones, kept with its type so `medcbir failures` says what happened."""
    return RuntimeError(f"unexpected {step} error ({type(exc).__name__}: {exc})")


class SopInstanceConflictError(IndexerError):
    """A file reuses a stored SOP Instance UID with different pixels; the stored image is kept."""


def _executor(workers: int) -> Executor:
    if workers <= 0:
        return ThreadPoolExecutor(1, thread_name_prefix="decode")
    # spawn, not fork: the parent holds torch/OpenMP threads that a forked child must not inherit
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,  # a kill -9 of the ingest takes its decoders with it
        initargs=(os.getpid(),),
    )


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
        # content sha256 of files in flight this run -> later copies waiting on the first copy's outcome
        self._in_flight: dict[str, list[SourceItem]] = {}

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
            self._in_flight = {}
            for chunk in _read_chunks(items, self.batch_size, CHUNK_BYTES):
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
        if self.manifest is not None:
            report.manifest_unmatched = self.manifest.unmatched_count()
            report.manifest_unlisted = self.manifest.unlisted
            report.manifest_patient_conflicts = self.manifest.patient_conflicts
        report.elapsed_s = time.perf_counter() - start
        report.log_done()
        return report

    def _submit(self, pool: Executor, chunk: list[_Read], report: IngestReport) -> list[_Pending]:
        """Hash a chunk of read files; skip what is stored; send the rest to the decoders."""
        read: list[tuple[SourceItem, bytes, str]] = []
        for item, data in chunk:
            report.seen += 1
            if self.manifest is not None:
                self.manifest.note_file(item.relative)
            if isinstance(data, BaseException):
                report.failed += 1
                self.archive.catalog.record_failure(item.uri, data)
                continue
            read.append((item, data, hashlib.sha256(data).hexdigest()))
        stored = self.archive.catalog.known_sha256(sha for _, _, sha in read)
        submitted: list[_Pending] = []
        for item, data, sha in read:
            if sha in stored:
                report.already_indexed += 1
            elif sha in self._in_flight:  # a copy: its fate is the first copy's, known when that is finished
                self._in_flight[sha].append(item)
            else:
                self._in_flight[sha] = []
                future = pool.submit(decode_for_ingest, data, self.max_pixels, self.frames)
                submitted.append(_Pending(item, sha, looks_like_image(data[:132]), future))
        return submitted

    def _finish(self, pending: list[_Pending], report: IngestReport) -> int:
        outcomes: dict[str, BaseException | None] = {}  # sha -> None (indexed or duplicate), or the error
        decoded: list[DecodedFrame] = []
        for job in pending:
            try:
                result = job.future.result()
            except Exception as exc:  # a decode process that died (out of memory?) fails its file only
                result = RuntimeError(f"the decode worker failed ({type(exc).__name__}: {exc})")
            if isinstance(result, BaseException):
                if isinstance(result, UnsupportedFormatError) and not (
                    job.item.expected_image or job.looks_like_image
                ):
                    report.not_images += 1
                    outcomes[job.sha256] = None
                else:
                    report.failed += 1
                    outcomes[job.sha256] = result
                    self.archive.catalog.record_failure(job.item.uri, result, job.sha256)
                continue
            decoded.extend(
                DecodedFrame(job.item, job.sha256, image, thumbnail, digest)
                for image, thumbnail, digest in result
            )
        written = self._embed_and_write(decoded, report, outcomes)
        self._settle_copies(pending, outcomes, report)
        return written

    def _embed_and_write(
        self, decoded: list[DecodedFrame], report: IngestReport, outcomes: dict[str, BaseException | None]
    ) -> int:
        fresh = self._drop_sop_duplicates(decoded, report, outcomes)
        if not fresh:
            return 0
        fresh, vectors = self._embed(fresh, report, outcomes)
        if not fresh:
            return 0
        ids = write_rows(self.archive, self.manifest, fresh, vectors)
        if self.manifest is not None:
            self.manifest.note_indexed_unlisted({frame.item.relative for frame in fresh})
        # Row first, vector second: a crash between the two leaves the catalog ahead, and the
        # index is rebuilt from it at the next start.
        self.archive.index.add(np.asarray(ids, dtype=np.int64), vectors)
        report.indexed += len(fresh)
        return 1

    def _settle_copies(
        self, pending: list[_Pending], outcomes: dict[str, BaseException | None], report: IngestReport
    ) -> None:
        """Copies of a file share its fate: a duplicate when it landed (or was not an image), else a failure."""
        for job in pending:
            copies = self._in_flight.pop(job.sha256, [])
            error = outcomes.get(job.sha256)
            if error is None:
                if job.looks_like_image or job.item.expected_image or not copies:
                    report.already_indexed += len(copies)
                else:
                    report.not_images += len(copies)
                continue
            for copy in copies:
                report.failed += 1
                reason = CopyOfFailedFileError(
                    f"same bytes as {job.item.uri}, which failed ({type(error).__name__}: {error})"
                )
                self.archive.catalog.record_failure(copy.uri, reason, job.sha256)

    def _drop_sop_duplicates(
        self,
        decoded: list[DecodedFrame],
        report: IngestReport,
        outcomes: dict[str, BaseException | None] | None = None,
    ) -> list[DecodedFrame]:
        keys = [(d.image.metadata.sop_instance_uid or "", d.image.metadata.frame_index) for d in decoded]
        stored = self.archive.catalog.pixel_digests_by_sop({k for k in keys if k[0]})
        fresh: list[DecodedFrame] = []
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
                if outcomes is not None:
                    outcomes[d.sha256] = conflict
        return fresh

    def _embed(
        self, fresh: list[DecodedFrame], report: IngestReport, outcomes: dict[str, BaseException | None]
    ) -> tuple[list[DecodedFrame], np.ndarray]:
        """Embed a batch; when the batch fails (any error), embed one by one so only the bad image is recorded."""
        encoder = self.archive.encoder
        try:
            return fresh, encoder.embed([d.image.pixels for d in fresh])
        except Exception as exc:  # MemoryError or a model error on one odd image must not lose its batch
            log.warning(
                "a batch of %d images failed to embed (%s); retrying one by one",
                len(fresh),
                type(exc).__name__,
            )
        kept: list[DecodedFrame] = []
        vectors: list[np.ndarray] = []
        for d in fresh:
            try:
                vectors.append(encoder.embed([d.image.pixels])[0])
                kept.append(d)
            except Exception as exc:
                error = exc if isinstance(exc, EmbeddingsError) else _unexpected("embedding", exc)
                report.failed += 1
                outcomes[d.sha256] = error
                self.archive.catalog.record_failure(d.item.uri, error, d.sha256)
        return kept, (np.stack(vectors) if vectors else np.empty((0, encoder.dim), np.float32))


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
