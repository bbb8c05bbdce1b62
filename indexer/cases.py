"""Case management over an open archive: add (rows, then vectors), edit with history, delete everywhere."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imaging import load_image
from indexer.archive import Archive
from indexer.catalog import CaseEdit
from indexer.catalog.case_rows import CaseChange, joined_labels
from indexer.errors import NotFoundError
from indexer.governance.audit import case_edits
from indexer.ingest.local import Ingestor
from indexer.ingest.manifest import CaseInfo, Manifest
from indexer.storage.sources import SourceItem
from indexer.storage.stored import SourceUri, local_path

log = logging.getLogger(__name__)


class DuplicateImageError(ValueError):
    """An uploaded image is already in the archive."""


class CaseIngestError(ValueError):
    """An uploaded image could not be added (the reason is in `medcbir failures`)."""


def clean_labels(labels: Sequence[str]) -> list[str]:
    """Stripped, non-empty, distinct labels in their given order."""
    out: list[str] = []
    for label in labels:
        value = " ".join(label.split())[:256]
        if value and value not in out:
            out.append(value)
    return out


class CaseManager:
    """Adds, edits and deletes cases; `lock` serialises writes to the vector index with searches."""

    def __init__(self, archive: Archive, lock: threading.RLock, max_pixels: int | None = None) -> None:
        self.archive = archive
        self.lock = lock
        self.max_pixels = max_pixels

    @property
    def upload_dir(self) -> Path:
        """Where uploaded images are kept (paths from content hashes), so they can be re-rendered."""
        return self.archive.settings.data_dir / "uploads"

    def add_case(
        self,
        uploads: Sequence[bytes],
        report: str | None,
        labels: Sequence[str],
        username: str,
        predicted_label: str | None = None,
    ) -> int:
        """A new case from images + report + labels, searchable when this returns; its id."""
        for data in uploads:  # decode first: a bad image stores nothing (ImagingError -> 4xx)
            load_image(data, max_pixels=self.max_pixels)
        digests = [hashlib.sha256(d).hexdigest() for d in uploads]
        known = self.archive.catalog.known_sha256(digests)
        if known or len(set(digests)) != len(digests):
            raise DuplicateImageError("an uploaded image is already in the archive (or sent twice)")
        labels = clean_labels(labels)
        case_key = f"added:{uuid.uuid4().hex}"
        info = CaseInfo(case_key=case_key, patient_id=None, report=report or None, labels=labels)
        written: list[Path] = []
        try:
            items = [
                self._stored_item(data, digest, written)
                for data, digest in zip(uploads, digests, strict=True)
            ]
            manifest = Manifest({item.relative: info for item in items}, {})
            with self.lock:
                result = Ingestor(self.archive, manifest, workers=0, max_pixels=self.max_pixels).run(
                    items, total=len(items), progress=False
                )
            if result.indexed < len(items):
                raise CaseIngestError(
                    f"{len(items) - result.indexed} of {len(items)} images could not be added; "
                    "an admin can see why with `medcbir failures`"
                )
        except BaseException:
            self._remove_unstored(written)
            raise
        changes: list[CaseChange] = [("created", None, joined_labels(labels) or None)]
        if predicted_label:
            verdict = "confirmed" if predicted_label in labels else "corrected"
            changes.append((f"prediction {verdict}", predicted_label, joined_labels(labels)))
        return self.archive.catalog.record_case_changes(case_key, username, changes)

    def _remove_unstored(self, written: list[Path]) -> None:
        """A failed request leaves no upload behind, but for images it did store (named by their sha256)."""
        stored = self.archive.catalog.known_sha256([path.name for path in written])
        for path in written:
            if path.name not in stored:
                path.unlink(missing_ok=True)
                path.with_suffix(".tmp").unlink(missing_ok=True)

    def _stored_item(self, data: bytes, digest: str, written: list[Path]) -> SourceItem:
        path = self.upload_dir / digest[:2] / digest
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            written.append(path)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return SourceItem(
            uri=str(SourceUri.of_file(path.resolve())),
            relative=digest,
            reader=path.read_bytes,
            size=len(data),
        )

    def edit_case(
        self, case_id: int, *, report: str | None, diagnosis: list[str] | None, username: str
    ) -> None:
        """Replace the report and/or diagnosis labels; every change is kept in the edit history."""
        labels = clean_labels(diagnosis) if diagnosis is not None else None
        self.archive.catalog.edit_case(case_id, report=report, labels=labels, username=username)

    def delete_case(self, case_id: int, username: str) -> int:
        """Remove the case's rows, then its vectors, thumbnails and uploaded files; how many images."""
        with self.lock:
            deleted = self.archive.catalog.delete_case(case_id, username)
            # Rows first, vectors second: a crash in between leaves only ghosts the searcher skips.
            if deleted:
                self.archive.index.remove(np.asarray([image.id for image in deleted], dtype=np.int64))
                self.archive.save_index()
        uploads = self.upload_dir.resolve()
        for image in deleted:
            if image.thumbnail_path:
                (self.archive.settings.thumbnail_dir / image.thumbnail_path).unlink(missing_ok=True)
            uploaded = local_path(image.source_uri)
            if uploaded is not None and uploaded.is_relative_to(uploads):
                uploaded.unlink(missing_ok=True)
        log.info("deleted case %d with %d images", case_id, len(deleted))
        return len(deleted)

    def history(self, case_id: int) -> list[CaseEdit]:
        """The case's recorded changes, oldest first (kept after the case is deleted)."""
        edits: list[CaseEdit] = case_edits(self.archive.catalog, case_id)
        if not edits and self.archive.catalog.case(case_id) is None:
            raise NotFoundError(f"case {case_id} does not exist")
        return edits
