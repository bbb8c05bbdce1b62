"""Distributed bulk embedding on Ray Data: decode in tasks, embed in an actor pool, write on the driver."""

from __future__ import annotations

import hashlib
import logging
import pickle
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from tqdm import tqdm

from imaging import DecodedImage, ImageMetadata
from indexer.archive import Archive
from indexer.catalog import Image
from indexer.cleanup import parse_cleanup
from indexer.errors import IndexerError
from indexer.extras import extra_hint
from indexer.ingest.local import _SAVE_EVERY_BATCHES, FramePolicy, Ingestor, IngestReport
from indexer.ingest.manifest import Manifest
from indexer.ingest.ray_cluster import RayClusterError, RayNotInstalledError, ensure_ray, import_ray
from indexer.ingest.ray_tasks import _COLUMNS, EmbedRows, EncoderFactory, decode_rows, encoder_factory
from indexer.ingest.writer import DecodedFrame, write_rows
from indexer.storage.sources import SourceItem, UnsafeSourceError, count_items, iter_folder, iter_source

log = logging.getLogger(__name__)

RAY_HINT = extra_hint("ray")
# Archive members are read on the driver and shipped through the object store; at most this many
# bytes are held per Ray Dataset, so a large zip or tar never sits in memory whole.
DEFAULT_WINDOW_BYTES = 512 * 1024**2
EMBED_ACTOR_MEMORY = 1024**3
_NO_PIXELS = np.zeros((0, 0, 3), dtype=np.float32)


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine runs: which cluster, how many embedding actors, and batch sizes."""

    address: str | None = None
    actors: int | None = None
    batch_size: int | None = None
    decode_batch: int = 8
    window_bytes: int = DEFAULT_WINDOW_BYTES


def _is_packed(root: Path) -> bool:
    if not root.is_file():
        return False
    if zipfile.is_zipfile(root):
        return True
    try:
        return tarfile.is_tarfile(root)
    except OSError:
        return False


def _folder_rows(root: Path) -> tuple[list[dict[str, Any]], list[tuple[SourceItem, OSError]]]:
    """References to every file under root (workers read them from the same path: a shared filesystem),
    and the folders that could not be listed, with why."""
    resolved = root.expanduser().resolve()
    rows: list[dict[str, Any]] = []
    unreadable: list[tuple[SourceItem, OSError]] = []
    for item in iter_folder(resolved):
        if item.size is None:  # a folder that could not be listed: its reader says why
            try:
                item.read_bytes()
            except OSError as exc:
                unreadable.append((item, exc))
                continue
        path = str(resolved if resolved.is_file() else resolved / item.relative)
        rows.append({"uri": item.uri, "relative": item.relative, "path": path, "data": b""})
    return rows, unreadable


class RayIngestor:
    """Runs decode and embedding as Ray Data `map_batches` and writes on the driver, as `Ingestor` does.

    The driver is the single writer: it consumes the embedded rows in source order and sends them
    through the local engine's own SOP Instance UID policy, row writer and index update, so the
    catalog, the FAISS index, failures and re-run behaviour are the same as with `--engine local`.
    Folders are passed to the workers as paths (every node must see them at the same path); zip and
    tar members are read on the driver, windowed, and shipped as bytes.
    """

    def __init__(
        self,
        archive: Archive,
        manifest: Manifest | None = None,
        *,
        options: RayOptions | None = None,
        factory: EncoderFactory | None = None,
        max_pixels: int | None = None,
        frames: FramePolicy = "representative",
    ) -> None:
        self.archive = archive
        self.options = options or RayOptions()
        self.batch_size = max(1, self.options.batch_size or archive.settings.batch_size)
        self.factory = factory or encoder_factory(archive.settings, self.batch_size)
        self.max_pixels = max_pixels
        self.frames = frames
        self.writer = Ingestor(archive, manifest, workers=0, max_pixels=max_pixels, frames=frames)
        self.writer.batch_size = self.batch_size
        self._claimed: dict[str, str] = {}  # content sha256 -> the uri that first carried it in this run
        self._batches_since_save = 0

    def run(self, root: Path, *, progress: bool = True) -> IngestReport:
        """Ingest every file under root (folder, zip or tar, or one file); a re-run is a no-op."""
        packed = _is_packed(root.expanduser())

        def feed(ray: ModuleType, report: IngestReport, bar: tqdm[Any]) -> None:
            if packed:
                for rows in self._windows(iter_source(root), report, bar):
                    self._consume(ray, rows, frozenset(), report, bar)
                return
            rows, unreadable = _folder_rows(root)
            for item, error in unreadable:
                report.seen += 1
                report.failed += 1
                self.archive.catalog.record_failure(item.uri, error)
                bar.update(1)
            if rows:
                self._consume(ray, rows, self._stored_digests(), report, bar)

        return self._ingest(feed, count_items(root), progress)

    def run_items(
        self, items: Iterable[SourceItem], *, total: int | None = None, progress: bool = True
    ) -> IngestReport:
        """Ingest items whose bytes the driver reads (e.g. instances fetched from a PACS), shipped to the
        decode tasks in windows of `window_bytes`; each window is written before the next is read, so a
        run killed at any moment keeps what was written. An item whose reader raises OSError is recorded
        as a failure; any other error stops the run."""

        def feed(ray: ModuleType, report: IngestReport, bar: tqdm[Any]) -> None:
            for rows in self._windows(items, report, bar):
                self._consume(ray, rows, frozenset(), report, bar)

        return self._ingest(feed, total, progress)

    def _ingest(
        self,
        feed: Callable[[ModuleType, IngestReport, tqdm[Any]], None],
        total: int | None,
        progress: bool,
    ) -> IngestReport:
        ray = import_ray()
        started_here = ensure_ray(ray, self.options.address)
        try:
            report = IngestReport()
            start = time.perf_counter()
            self._claimed = {}
            self._batches_since_save = 0
            with tqdm(
                total=total, unit="file", desc="indexing (ray)", disable=not progress, smoothing=0.05
            ) as bar:
                feed(ray, report, bar)
                bar.set_postfix(indexed=report.indexed, skipped=report.already_indexed, failed=report.failed)
            if report.indexed:
                self.archive.save_index()
            if self.writer.manifest is not None:
                report.manifest_unmatched = self.writer.manifest.unmatched_count()
            report.elapsed_s = time.perf_counter() - start
            report.log_done("ray ingest")
            return report
        finally:
            if started_here:
                ray.shutdown()

    def _stored_digests(self) -> frozenset[bytes]:
        """Content hashes already in the catalog, sent once to the decode tasks so stored files are not decoded."""
        with self.archive.catalog.session() as session:
            return frozenset(bytes.fromhex(sha) for sha in session.scalars(select(Image.sha256)))

    def _windows(
        self, items: Iterable[SourceItem], report: IngestReport, bar: tqdm[Any]
    ) -> Iterator[list[dict[str, Any]]]:
        """Read items on the driver (zip/tar members with the same safety checks as local), skip stored
        ones, window by bytes."""
        window: list[dict[str, Any]] = []
        size = 0
        for item in items:
            try:
                data = item.read_bytes()
            except (OSError, UnsafeSourceError) as exc:
                report.seen += 1
                report.failed += 1
                self.archive.catalog.record_failure(item.uri, exc)
                bar.update(1)
                continue
            window.append({"uri": item.uri, "relative": item.relative, "path": "", "data": data})
            size += len(data)
            if size >= self.options.window_bytes:
                yield self._drop_stored(window, report, bar)
                window, size = [], 0
        if window:
            yield self._drop_stored(window, report, bar)

    def _drop_stored(
        self, window: list[dict[str, Any]], report: IngestReport, bar: tqdm[Any]
    ) -> list[dict[str, Any]]:
        shas = [hashlib.sha256(row["data"]).hexdigest() for row in window]
        stored = self.archive.catalog.known_sha256(shas)
        kept = []
        for row, sha in zip(window, shas, strict=True):
            if sha in stored:
                report.seen += 1
                report.already_indexed += 1
                bar.update(1)
            else:
                kept.append(row)
        return kept

    def _consume(
        self,
        ray: ModuleType,
        rows: list[dict[str, Any]],
        stored: frozenset[bytes],
        report: IngestReport,
        bar: tqdm[Any],
    ) -> None:
        if not rows:
            return
        dataset = self._dataset(ray, rows, stored)
        for batch in dataset.iter_batches(
            batch_size=self.batch_size, batch_format="numpy", prefetch_batches=2
        ):
            self._write(batch, report, bar)
            if self._batches_since_save >= _SAVE_EVERY_BATCHES:
                self.archive.save_index()
                self._batches_since_save = 0

    def _dataset(self, ray: ModuleType, rows: list[dict[str, Any]], stored: frozenset[bytes]) -> Any:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the same file order, hence ids, as the local engine
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        cpus = float(ray.cluster_resources().get("CPU", 1))
        actors = self.options.actors or (int(gpus) if gpus >= 1 else max(1, int(cpus) // 2))
        # small blocks keep every decode slot busy from the start (order is preserved block by block)
        decode_blocks = max(1, min(len(rows) // (2 * self.options.decode_batch) + 1, 2000))
        return (
            ray.data.from_items(rows, override_num_blocks=decode_blocks)
            .map_batches(
                decode_rows,
                batch_size=self.options.decode_batch,
                batch_format="numpy",
                fn_kwargs={"stored": stored, "max_pixels": self.max_pixels, "frames": self.frames},
                num_cpus=1,
            )
            .map_batches(
                EmbedRows,
                batch_size=self.batch_size,
                batch_format="numpy",
                fn_constructor_kwargs={
                    "factory": self.factory,
                    "encoder_name": self.archive.encoder.name,
                    "cleanup": parse_cleanup(self.archive.settings.image_cleanup),
                },
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                num_gpus=1 if gpus >= 1 else 0,
                num_cpus=1,
                # room for the model and a batch; a resource the decode tasks do not ask for, which
                # also keeps Ray from fusing decode into the actors (decoding would scale with actors only)
                memory=EMBED_ACTOR_MEMORY,
            )
        )

    def _write(self, batch: dict[str, npt.NDArray[Any]], report: IngestReport, bar: tqdm[Any]) -> None:
        """Count, record failures, and hand the embedded frames to the local engine's writer."""
        catalog = self.archive.catalog
        fresh_sha = {str(s) for s in batch["sha256"] if s}
        concurrent = catalog.known_sha256(s for s in fresh_sha if s not in self._claimed)
        decoded: list[DecodedFrame] = []
        vectors: list[npt.NDArray[np.float32]] = []
        for uri, relative, sha, status, payload, vector, last in zip(
            *(batch[name] for name in _COLUMNS), strict=True
        ):
            uri, relative, sha, status = str(uri), str(relative), str(sha), str(status)
            if last and self.writer.manifest is not None:
                self.writer.manifest.note_file(relative)
            # a copy of a failed file failed too (each copy is decoded): it is recorded, never a duplicate
            verdict = (
                "new" if status in ("failed", "not_image") else self._verdict(uri, sha, status, concurrent)
            )
            if verdict == "duplicate":
                if last:
                    report.already_indexed += 1
            elif status == "failed":
                report.failed += 1
                catalog.record_failure(uri, pickle.loads(payload), sha or None)
            elif status == "not_image":
                report.not_images += 1
            elif status == "embedded":
                metadata, thumbnail, pixel_digest = pickle.loads(payload)
                item = SourceItem(uri, relative, reader=bytes)
                image = DecodedImage(pixels=_NO_PIXELS, metadata=_metadata(metadata))
                decoded.append(DecodedFrame(item, sha, image, thumbnail, pixel_digest))
                vectors.append(np.frombuffer(vector, dtype=np.float32))
            if last:
                report.seen += 1
                bar.update(1)
        self._write_decoded(decoded, vectors, report)
        bar.set_postfix(indexed=report.indexed, skipped=report.already_indexed, failed=report.failed)

    def _verdict(self, uri: str, sha: str, status: str, concurrent: set[str]) -> str:
        """'duplicate' for stored content or a second copy in this run (the first copy claims it), else 'new'."""
        if status == "stored":
            return "duplicate"
        if not sha:
            return "new"
        owner = self._claimed.get(sha)
        if owner is None:
            if sha in concurrent:  # written by someone else since the run started
                return "duplicate"
            self._claimed[sha] = uri
            return "new"
        return "new" if owner == uri else "duplicate"

    def _write_decoded(
        self, decoded: list[DecodedFrame], vectors: list[npt.NDArray[np.float32]], report: IngestReport
    ) -> None:
        if not decoded:
            return
        by_frame = {id(d): v for d, v in zip(decoded, vectors, strict=True)}
        fresh = self.writer._drop_sop_duplicates(decoded, report)
        if not fresh:
            return
        matrix = np.stack([by_frame[id(d)] for d in fresh]).astype(np.float32, copy=False)
        ids = write_rows(self.archive, self.writer.manifest, fresh, matrix)
        # row first, vector second, as the local engine
        self.archive.index.add(np.asarray(ids, dtype=np.int64), matrix)
        report.indexed += len(fresh)
        self._batches_since_save += 1


def _metadata(value: object) -> ImageMetadata:
    if not isinstance(value, ImageMetadata):
        raise IndexerError(
            "a Ray worker returned unexpected metadata: run the same medcbir version on every node"
        )
    return value


def ingest_path_ray(
    archive: Archive,
    root: Path,
    manifest: Manifest | None = None,
    *,
    options: RayOptions | None = None,
    progress: bool = True,
    frames: FramePolicy = "representative",
    factory: EncoderFactory | None = None,
) -> IngestReport:
    """Index every file under root with Ray Data into the archive's catalog and index."""
    return RayIngestor(archive, manifest, options=options, factory=factory, frames=frames).run(
        root, progress=progress
    )


__all__: Sequence[str] = [
    "RAY_HINT",
    "EmbedRows",
    "RayClusterError",
    "RayIngestor",
    "RayNotInstalledError",
    "RayOptions",
    "decode_rows",
    "encoder_factory",
    "import_ray",
    "ingest_path_ray",
]
