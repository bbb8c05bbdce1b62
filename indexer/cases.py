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
from sqlalchemy import delete, select
from sqlalchemy.orm import selectinload

from imaging import load_image
from indexer.archive import Archive
from indexer.catalog import Case, CaseEdit, Diagnosis, Image, ImageEmbedding
from indexer.errors import NotFoundError
from indexer.governance.audit import case_edits, record_case_edit
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


def _joined(labels: Sequence[str]) -> str:
    return "; ".join(labels)


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
        items = [self._stored_item(data, digest) for data, digest in zip(uploads, digests, strict=True)]
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
        with self.archive.catalog.session() as session:
            case = session.scalars(select(Case).where(Case.case_key == case_key)).one()
            record_case_edit(session, case.id, username, "created", None, _joined(labels) or None)
            if predicted_label:
                verdict = "confirmed" if predicted_label in labels else "corrected"
                record_case_edit(
                    session, case.id, username, f"prediction {verdict}", predicted_label, _joined(labels)
                )
            return case.id

    def _stored_item(self, data: bytes, digest: str) -> SourceItem:
        path = self.upload_dir / digest[:2] / digest
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
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
        with self.archive.catalog.session() as session:
            case = session.scalars(
                select(Case).where(Case.id == case_id).options(selectinload(Case.diagnoses))
            ).first()
            if case is None:
                raise NotFoundError(f"case {case_id} does not exist")
            if report is not None and report != (case.report or ""):
                record_case_edit(session, case_id, username, "report", case.report, report)
                case.report = report or None
            if diagnosis is not None:
                wanted = clean_labels(diagnosis)
                old = case.labels
                if wanted != old:
                    record_case_edit(session, case_id, username, "diagnosis", _joined(old), _joined(wanted))
                    for stale in [d for d in case.diagnoses if d.label not in wanted]:
                        case.diagnoses.remove(stale)
                    session.flush()
                    for label in wanted:
                        if label not in old:
                            case.diagnoses.append(Diagnosis(label=label))

    def delete_case(self, case_id: int, username: str) -> int:
        """Remove the case's rows, then its vectors, thumbnails and uploaded files; how many images."""
        catalog = self.archive.catalog
        with self.lock:
            with catalog.session() as session:
                case = session.get(Case, case_id)
                if case is None:
                    raise NotFoundError(f"case {case_id} does not exist")
                rows = session.execute(
                    select(Image.id, Image.thumbnail_path, Image.source_uri).where(Image.case_id == case_id)
                ).all()
                ids = [int(r[0]) for r in rows]
                session.execute(delete(ImageEmbedding).where(ImageEmbedding.image_id.in_(ids)))
                session.execute(delete(Image).where(Image.case_id == case_id))
                session.execute(delete(Diagnosis).where(Diagnosis.case_id == case_id))
                session.execute(delete(Case).where(Case.id == case_id))
                record_case_edit(session, case_id, username, "deleted", None, f"{len(ids)} images")
            # Rows first, vectors second: a crash in between leaves only ghosts the searcher skips.
            if ids:
                self.archive.index.remove(np.asarray(ids, dtype=np.int64))
                self.archive.save_index()
        for _image_id, thumbnail, source_uri in rows:
            if thumbnail:
                (self.archive.settings.thumbnail_dir / thumbnail).unlink(missing_ok=True)
            uploaded = local_path(source_uri)
            if uploaded is not None and uploaded.is_relative_to(self.upload_dir.resolve()):
                uploaded.unlink(missing_ok=True)
        log.info("deleted case %d with %d images", case_id, len(ids))
        return len(ids)

    def history(self, case_id: int) -> list[CaseEdit]:
        """The case's recorded changes, oldest first (kept after the case is deleted)."""
        edits: list[CaseEdit] = case_edits(self.archive.catalog, case_id)
        if not edits and self.archive.catalog.case(case_id) is None:
            raise NotFoundError(f"case {case_id} does not exist")
        return edits
