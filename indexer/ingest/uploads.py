"""Uploaded archives (zip, tar): kept under a content-hash path, then the same ingest as `medcbir index`."""

from __future__ import annotations

import hashlib
import os
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from indexer.archive import Archive
from indexer.catalog import Image, IngestFailure
from indexer.errors import IndexerError
from indexer.ingest.local import Ingestor, IngestReport
from indexer.ingest.manifest import Manifest
from indexer.storage.sources import count_items, iter_source
from indexer.storage.stored import SourceUri
from indexer.vectors.index import VectorIndex
from indexer.vectors.kinds import spec_for_kind

# Failures listed in an answer; the rest are counted (and all of them are in `medcbir failures`).
MAX_LISTED_FAILURES = 100


class UploadError(IndexerError, ValueError):
    """An uploaded file that is not a zip or tar archive of images."""


@dataclass(frozen=True)
class MemberFailure:
    """A member of the uploaded archive that was not added, and why (the exception's own message)."""

    member: str
    error_type: str
    reason: str


@dataclass
class UploadIngest:
    """What an uploaded archive's ingest did."""

    report: IngestReport
    failures: list[MemberFailure] = field(default_factory=list)


def upload_dir(archive: Archive) -> Path:
    """Where uploaded archives are kept, so their images can be re-read (render, reindex, finetune); apart
    from the images of cases added one by one (`uploads/`), which leave with their case."""
    return archive.settings.data_dir / "uploaded_archives"


def archive_suffix(path: Path) -> str:
    """`.zip` or `.tar` (any compression) from the file's bytes; anything else is refused."""
    if zipfile.is_zipfile(path):
        return ".zip"
    try:
        if tarfile.is_tarfile(path):
            return ".tar"
    except (OSError, tarfile.TarError):
        pass
    raise UploadError("the upload is neither a zip nor a tar archive: send a .zip, .tar or .tar.gz of images")


def keep_upload(archive: Archive, temporary: Path) -> Path:
    """Move an uploaded archive to its content-hash path (an identical upload reuses the kept file)."""
    suffix = archive_suffix(temporary)
    digest = hashlib.sha256()
    with temporary.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    name = digest.hexdigest()
    target = upload_dir(archive) / name[:2] / f"{name}{suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        temporary.unlink(missing_ok=True)
    else:
        os.replace(temporary, target)
    return target


# Requests of this process ingesting each kept upload: identical uploads share one kept file, so a failed
# request removes it only when no other request is still reading it.
_readers: dict[Path, int] = {}
_readers_lock = threading.Lock()


def keep_upload_for_ingest(archive: Archive, temporary: Path) -> Path:
    """keep_upload, counting this request among the kept file's readers (release with release_upload)."""
    with _readers_lock:  # atomic with the keep: no failed request can remove the file in between
        kept = keep_upload(archive, temporary)
        _readers[kept] = _readers.get(kept, 0) + 1
    return kept


def release_upload(archive: Archive, kept: Path, *, failed: bool) -> bool:
    """This request is done with the kept upload; after a failure it is removed unless another request
    still reads it or stored images read from it (rows a failed ingest committed before it stopped, or
    an earlier identical upload). True when removed."""
    with _readers_lock:
        left = _readers.get(kept, 1) - 1
        if left > 0:
            _readers[kept] = left
            return False
        _readers.pop(kept, None)
        if not failed or archive.catalog.has_images_under(SourceUri.members_prefix(kept.resolve())):
            return False
        kept.unlink(missing_ok=True)
        return True


def ingest_upload(
    archive: Archive,
    path: Path,
    manifest: Manifest | None,
    lock: threading.RLock,
    *,
    max_pixels: int | None = None,
) -> UploadIngest:
    """Ingest a kept archive with the bulk pipeline (decoding in a thread), holding `lock` so searches of the
    same archive see the new vectors as soon as this returns; failures are read back from the catalog."""
    catalog = archive.catalog
    with catalog.session() as session:
        last_failure = int(session.scalar(select(func.max(IngestFailure.id))) or 0)
    ingestor = Ingestor(archive, manifest, workers=0, max_pixels=max_pixels)
    with lock:
        report = ingestor.run(iter_source(path), total=count_items(path), progress=False)
    prefix = SourceUri.members_prefix(path.resolve())
    with catalog.session() as session:
        referenced = session.scalar(
            select(Image.id).where(Image.source_uri.startswith(prefix, autoescape=True)).limit(1)
        )
    if referenced is None:  # no image row points into it (e.g. every file was already stored)
        path.unlink(missing_ok=True)
    with catalog.session() as session:
        rows = session.scalars(
            select(IngestFailure)
            .where(
                IngestFailure.id > last_failure, IngestFailure.source_uri.startswith(prefix, autoescape=True)
            )
            .order_by(IngestFailure.id)
            .limit(MAX_LISTED_FAILURES)
        ).all()
        failures = [
            MemberFailure(
                member=row.source_uri.removeprefix(prefix),
                error_type=row.error_type,
                # The member's name (shown to admins only, like source paths) is kept out of the reason,
                # so a reason can be shown or counted on its own without a name that may carry PHI.
                reason=row.reason.replace(row.source_uri.removeprefix(prefix), "<member>"),
            )
            for row in rows
        ]
    return UploadIngest(report=report, failures=failures)


def rebuild_archive_index(archive: Archive, lock: threading.RLock, kind: str = "auto") -> VectorIndex:
    """Rebuild the archive's FAISS index from the catalog's stored vectors (no re-encoding), save it
    atomically and serve it; `lock` keeps searches and ingests out while it is swapped."""
    encoder = archive.encoder
    with lock:
        spec = None
        if kind != "auto":
            size = int(archive.catalog.image_ids_where(encoder=encoder.name).size)
            spec = spec_for_kind(kind, size, encoder.dim)
        generation = archive.catalog.generation()  # the build reads rows at least this new
        served = archive.index.postprocess  # kept (refitted) unless MEDCBIR_INDEX_POSTPROCESS says otherwise
        post = archive.settings.index_postprocess or (str(served.spec) if served else None)
        index = VectorIndex.build_from_catalog(
            archive.catalog, encoder=encoder.name, dim=encoder.dim, spec=spec, postprocess=post
        )
        index.generation = generation
        archive.index = index
        archive.save_index()
    return index
