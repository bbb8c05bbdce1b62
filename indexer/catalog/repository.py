"""The Catalog: every query and write against the catalog database goes through here."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    create_engine,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    Session,
    selectinload,
    sessionmaker,
)

from indexer.catalog.case_rows import CaseRows
from indexer.catalog.feedback_marks import FeedbackMarkRows
from indexer.catalog.generation import sqlite_reuses_ids
from indexer.catalog.models import (
    Base,
    Case,
    Diagnosis,
    Image,
    ImageEmbedding,
    IngestFailure,
    has_vector_from,
)
from indexer.catalog.pacs_rows import PacsRows
from indexer.catalog.vectors import StoredVectors
from indexer.extras import require_extra
from indexer.storage.private import make_catalog_private

log = logging.getLogger(__name__)

# Words of a case search (`list_cases(text=...)`) beyond this many are ignored.
MAX_CASE_SEARCH_WORDS = 8


@dataclass(frozen=True)
class CatalogStats:
    """Counts of what the catalog holds."""

    cases: int
    images: int
    labeled_cases: int
    failures: int
    images_by_modality: dict[str, int]
    images_by_encoder: dict[str, int]
    labels: dict[str, int]


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: object, _record: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def postgres_driver_url(url: str) -> str:
    """PostgreSQL URLs use psycopg 3 (the `postgres` extra); a missing driver names the extra to install."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("postgresql+psycopg://"):
        require_extra("psycopg", "postgres", needed_for="a PostgreSQL catalog needs psycopg")
    return url


class Catalog(StoredVectors, CaseRows, PacsRows, FeedbackMarkRows):
    """The source of truth: a thin typed repository over a SQLAlchemy engine."""

    def __init__(self, url: str) -> None:
        url = postgres_driver_url(url)
        connect_args = {"check_same_thread": False} if url.startswith("sqlite") else {}
        self.url = url
        make_catalog_private(url)  # reports and password hashes: owner-only, -wal/-shm included
        self.engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if url.startswith("sqlite"):
            _configure_sqlite(self.engine)
        Base.metadata.create_all(self.engine)  # with the generation counter's triggers (generation.py)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        with self.engine.connect() as connection:
            if sqlite_reuses_ids(connection):
                log.warning(
                    "this catalog reuses the ids of deleted cases and images: run `medcbir db upgrade`"
                )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with self._sessions() as session:
                session.execute(select(1))
            return True
        except Exception:
            log.exception("catalog ping failed")
            return False

    # -- reads ---------------------------------------------------------------------------------

    def known_sha256(self, digests: Iterable[str]) -> set[str]:
        """The subset of the given content hashes that are already stored."""
        wanted = list(set(digests))
        found: set[str] = set()
        with self._sessions() as session:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                found.update(session.scalars(select(Image.sha256).where(Image.sha256.in_(chunk))))
        return found

    def all_sha256(self) -> Iterator[str]:
        """Every stored content hash, streamed (the Ray engine sends them to its decode tasks)."""
        with self._sessions() as session:
            yield from session.scalars(select(Image.sha256))

    def pixel_digests_by_sop(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str | None]:
        """Stored pixel digests keyed by (SOP Instance UID, frame index), for the given keys only."""
        wanted = list(set(keys))
        found: dict[tuple[str, int], str | None] = {}
        with self._sessions() as session:
            for start in range(0, len(wanted), 500):
                uids = list({uid for uid, _ in wanted[start : start + 500]})
                for uid, frame, digest in session.execute(
                    select(Image.sop_instance_uid, Image.frame_index, Image.pixel_digest).where(
                        Image.sop_instance_uid.in_(uids)
                    )
                ):
                    found[(str(uid), int(frame))] = digest
        return {key: found[key] for key in wanted if key in found}

    def images_by_ids(self, ids: Sequence[int]) -> dict[int, Image]:
        """Images (with case and diagnoses loaded) keyed by id; missing ids are absent."""
        if not ids:
            return {}
        with self._sessions() as session:
            rows = session.scalars(
                select(Image)
                .where(Image.id.in_(list(ids)))
                .options(selectinload(Image.case).selectinload(Case.diagnoses))
            ).all()
        return {row.id: row for row in rows}

    def image(self, image_id: int) -> Image | None:
        """One image, or None."""
        return self.images_by_ids([image_id]).get(image_id)

    def case(self, case_id: int) -> Case | None:
        """One case with its diagnoses and images, or None."""
        with self._sessions() as session:
            return session.scalars(
                select(Case)
                .where(Case.id == case_id)
                .options(selectinload(Case.diagnoses), selectinload(Case.images))
            ).first()

    def image_ids_where(self, *, encoder: str, modality: str | None = None) -> npt.NDArray[np.int64]:
        """Ids of the encoder's images, optionally only one modality (case-insensitive)."""
        query = select(Image.id).where(has_vector_from(encoder))
        if modality is not None:
            query = query.where(func.upper(Image.modality) == modality.upper())
        with self._sessions() as session:
            return np.fromiter(session.scalars(query), dtype=np.int64)

    def encoders(self) -> dict[str, int]:
        """Image counts per encoder name."""
        with self._sessions() as session:
            counts = {
                str(name): int(count)
                for name, count in session.execute(
                    select(Image.encoder, func.count()).group_by(Image.encoder)
                )
            }
            for name, count in session.execute(
                select(ImageEmbedding.encoder, func.count())
                .join(Image, Image.id == ImageEmbedding.image_id)
                .where(Image.encoder != ImageEmbedding.encoder)
                .group_by(ImageEmbedding.encoder)
            ):
                counts[str(name)] = counts.get(str(name), 0) + int(count)
            return counts

    def modalities(self) -> list[str]:
        """Distinct modalities stored, sorted."""
        with self._sessions() as session:
            values = session.scalars(select(Image.modality).where(Image.modality.is_not(None)).distinct())
            return sorted({v.upper() for v in values if v})

    def body_parts(self) -> list[str]:
        """Distinct body parts stored (BodyPartExamined), upper-cased and sorted."""
        with self._sessions() as session:
            values = session.scalars(select(Image.body_part).where(Image.body_part.is_not(None)).distinct())
            return sorted({v.upper() for v in values if v})

    def filtered_image_ids(
        self,
        *,
        encoder: str,
        modality: str | None = None,
        body_part: str | None = None,
        label: str | None = None,
        exclude_patient_ref: str | None = None,
    ) -> npt.NDArray[np.int64]:
        """Ids of the encoder's images matching every given filter (text compared case-insensitively).

        `label` keeps images whose case carries that diagnosis; `exclude_patient_ref` drops the
        images of that (pseudonymous) patient, keeping those without a patient reference.
        """
        query = select(Image.id).where(has_vector_from(encoder))
        if modality:
            query = query.where(func.upper(Image.modality) == modality.upper())
        if body_part:
            query = query.where(func.upper(Image.body_part) == body_part.upper())
        if label:
            query = query.where(
                Image.case_id.in_(
                    select(Diagnosis.case_id).where(func.lower(Diagnosis.label) == label.lower())
                )
            )
        if exclude_patient_ref:
            query = query.where(
                Image.case_id.in_(
                    select(Case.id).where(
                        (Case.patient_ref.is_(None)) | (Case.patient_ref != exclude_patient_ref)
                    )
                )
            )
        with self._sessions() as session:
            return np.fromiter(session.scalars(query.order_by(Image.id)), dtype=np.int64)

    def list_cases(
        self, *, limit: int = 50, offset: int = 0, text: str | None = None
    ) -> tuple[int, list[Case]]:
        """(total number of matching cases, one page of them in id order with diagnoses and images loaded).

        `text`: every word must occur (case-insensitive) in the case's key, report, a diagnosis label, or an
        image's modality, body part, study or series description.
        """
        query = select(Case)
        for word in (text or "").lower().split()[:MAX_CASE_SEARCH_WORDS]:
            pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"

            def like(column: Any, pattern: str = pattern) -> Any:
                return func.lower(column).like(pattern, escape="\\")

            query = query.where(
                or_(
                    like(Case.case_key),
                    like(Case.report),
                    Case.diagnoses.any(like(Diagnosis.label)),
                    Case.images.any(
                        or_(
                            like(Image.modality),
                            like(Image.body_part),
                            like(Image.study_description),
                            like(Image.series_description),
                        )
                    ),
                )
            )
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            cases = session.scalars(
                query.order_by(Case.id)
                .limit(limit)
                .offset(offset)
                .options(selectinload(Case.diagnoses), selectinload(Case.images))
            ).all()
        return int(total), list(cases)

    def failures(self, limit: int = 100) -> list[IngestFailure]:
        """The most recent ingest failures."""
        with self._sessions() as session:
            return list(session.scalars(select(IngestFailure).order_by(IngestFailure.id.desc()).limit(limit)))

    def last_failure_id(self) -> int:
        """The newest ingest failure's id (0 when none): failures recorded after it belong to a later run."""
        with self._sessions() as session:
            return int(session.scalar(select(func.max(IngestFailure.id))) or 0)

    def failures_under(self, uri_prefix: str, *, after_id: int, limit: int) -> list[IngestFailure]:
        """Failures recorded after `after_id` whose source uri starts with the prefix, oldest first."""
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(IngestFailure)
                    .where(
                        IngestFailure.id > after_id,
                        IngestFailure.source_uri.startswith(uri_prefix, autoescape=True),
                    )
                    .order_by(IngestFailure.id)
                    .limit(limit)
                )
            )

    def has_images_under(self, uri_prefix: str) -> bool:
        """True when some image's source uri starts with the prefix (e.g. a member of a kept upload)."""
        with self._sessions() as session:
            found = session.scalar(
                select(Image.id).where(Image.source_uri.startswith(uri_prefix, autoescape=True)).limit(1)
            )
        return found is not None

    def stats(self) -> CatalogStats:
        """Counts for `medcbir stats` and /health."""
        with self._sessions() as session:
            cases = session.scalar(select(func.count()).select_from(Case)) or 0
            images = session.scalar(select(func.count()).select_from(Image)) or 0
            labeled = session.scalar(select(func.count(func.distinct(Diagnosis.case_id)))) or 0
            failures = session.scalar(select(func.count()).select_from(IngestFailure)) or 0
            by_modality = {
                str(m or "unknown"): int(c)
                for m, c in session.execute(select(Image.modality, func.count()).group_by(Image.modality))
            }
            labels = {
                str(lbl): int(c)
                for lbl, c in session.execute(
                    select(Diagnosis.label, func.count())
                    .group_by(Diagnosis.label)
                    .order_by(func.count().desc())
                )
            }
        return CatalogStats(
            cases=int(cases),
            images=int(images),
            labeled_cases=int(labeled),
            failures=int(failures),
            images_by_modality=by_modality,
            images_by_encoder=self.encoders(),
            labels=labels,
        )

    # -- writes --------------------------------------------------------------------------------

    def get_or_create_case(
        self,
        session: Session,
        case_key: str,
        *,
        patient_ref: str | None,
        study_instance_uid: str | None,
        report: str | None,
        labels: Sequence[str],
    ) -> Case:
        """The case with this key, created with the given fields when new; new labels are added."""
        case = session.scalars(
            select(Case).where(Case.case_key == case_key).options(selectinload(Case.diagnoses))
        ).first()
        if case is None:
            case = Case(
                case_key=case_key,
                patient_ref=patient_ref,
                study_instance_uid=study_instance_uid,
                report=report,
            )
            session.add(case)
        else:
            case.patient_ref = case.patient_ref or patient_ref
            case.study_instance_uid = case.study_instance_uid or study_instance_uid
            case.report = case.report or report
        have = {d.label for d in case.diagnoses}
        for label in labels:
            if label not in have:
                case.diagnoses.append(Diagnosis(label=label))
                have.add(label)
        session.flush()
        return case

    def image_sources(self, batch: int = 1000) -> Iterator[list[tuple[int, str, int, str]]]:
        """Every image as (id, source uri, frame index, encoder of its row vector), in id order, in batches."""
        last = 0
        while True:
            with self._sessions() as session:
                rows = session.execute(
                    select(Image.id, Image.source_uri, Image.frame_index, Image.encoder)
                    .where(Image.id > last)
                    .order_by(Image.id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            last = int(rows[-1][0])
            yield [(int(r[0]), str(r[1]), int(r[2] or 0), str(r[3])) for r in rows]

    def record_failure(self, source_uri: str, error: BaseException, sha256: str | None = None) -> None:
        """Store why a file was skipped; the message is the exception's own (no patient text)."""
        with self.session() as session:
            session.add(
                IngestFailure(
                    source_uri=source_uri,
                    sha256=sha256,
                    error_type=type(error).__name__,
                    reason=str(error)[:2000],
                )
            )
