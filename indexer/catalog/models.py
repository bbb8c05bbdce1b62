"""The catalog's tables (SQLAlchemy models): cases, diagnoses, images, embeddings, failures, accounts, audit."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    DDL,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
)
from sqlalchemy.sql.elements import ColumnElement


def _utcnow() -> datetime:
    return datetime.now(UTC)


# SQLite reuses the highest rowid after a delete unless a table says AUTOINCREMENT: a deleted case's id
# (and its image ids, which are FAISS ids) would come back for the next case, with the old case's
# history and audit rows. PostgreSQL sequences never go back. Migration 0005 rebuilds older tables.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    """Declarative base of the catalog schema."""


class Case(Base):
    """A case: one patient encounter (a study, or a manifest row), with its report and diagnoses."""

    __tablename__ = "cases"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    case_key: Mapped[str] = mapped_column(String(256), unique=True)
    patient_ref: Mapped[str | None] = mapped_column(String(64), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(128))
    report: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)

    diagnoses: Mapped[list[Diagnosis]] = relationship(
        back_populates="case", cascade="all, delete-orphan", order_by="Diagnosis.id"
    )
    images: Mapped[list[Image]] = relationship(back_populates="case", order_by="Image.id")

    @property
    def labels(self) -> list[str]:
        """The diagnosis labels in the order they were given."""
        return [d.label for d in self.diagnoses]


class Diagnosis(Base):
    """One diagnosis label of a case (a case may carry several)."""

    __tablename__ = "diagnoses"
    __table_args__ = (UniqueConstraint("case_id", "label"), NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(256), index=True)

    case: Mapped[Case] = relationship(back_populates="diagnoses")


class Image(Base):
    """A stored image: where it came from, what its header says, and its embedding."""

    __tablename__ = "images"
    # One row per embedded frame: a file is unique by its content hash and frame number, so the
    # every-frame policy can store several frames of one multi-frame object.
    __table_args__ = (
        Index("ix_images_encoder_modality", "encoder", "modality"),
        UniqueConstraint("sha256", "frame_index", name="uq_images_sha256_frame"),
        Index("ix_images_sop_frame", "sop_instance_uid", "frame_index"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    source_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    pixel_digest: Mapped[str | None] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(16))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(128))
    study_instance_uid: Mapped[str | None] = mapped_column(String(128), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(128))
    modality: Mapped[str | None] = mapped_column(String(32))
    body_part: Mapped[str | None] = mapped_column(String(64))
    study_description: Mapped[str | None] = mapped_column(Text)
    series_description: Mapped[str | None] = mapped_column(Text)
    view_position: Mapped[str | None] = mapped_column(String(32))
    laterality: Mapped[str | None] = mapped_column(String(8))
    pixel_spacing_row: Mapped[float | None]
    pixel_spacing_column: Mapped[float | None]
    study_date: Mapped[str | None] = mapped_column(String(8))
    sop_class_uid: Mapped[str | None] = mapped_column(String(128))
    rows: Mapped[int | None]
    columns: Mapped[int | None]
    frames: Mapped[int] = mapped_column(default=1)
    frame_index: Mapped[int] = mapped_column(default=0)
    window_center: Mapped[float | None]
    window_width: Mapped[float | None]
    thumbnail_path: Mapped[str | None] = mapped_column(Text)
    encoder: Mapped[str] = mapped_column(String(128))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)

    case: Mapped[Case] = relationship(back_populates="images")

    def vector(self) -> npt.NDArray[np.float32]:
        """The stored embedding as a float32 vector."""
        return np.frombuffer(self.embedding, dtype=np.float32)


class ImageEmbedding(Base):
    """An image's vector from an encoder other than the one that ingested it (`medcbir reindex`).

    The ingesting encoder's vector stays on the image row; each further encoder keeps its own here,
    so two encoders' indexes can be served and rebuilt side by side.
    """

    __tablename__ = "image_embeddings"
    __table_args__ = (
        UniqueConstraint("image_id", "encoder", name="uq_image_embeddings_image_encoder"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    encoder: Mapped[str] = mapped_column(String(128), index=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


def has_vector_from(encoder: str) -> ColumnElement[bool]:
    """SQL condition: the image has a vector from `encoder` (on its row or in image_embeddings)."""
    extra = select(ImageEmbedding.image_id).where(ImageEmbedding.encoder == encoder)
    return or_(Image.encoder == encoder, Image.id.in_(extra))


class IngestFailure(Base):
    """A file that could not be ingested, with the reason; the run went on without it."""

    __tablename__ = "ingest_failures"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    source_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    error_type: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class User(Base):
    """A person or service account of the API; passwords are stored only as argon2 hashes."""

    __tablename__ = "users"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(32))
    disabled: Mapped[bool] = mapped_column(default=False)
    service: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    # Bumped by every password change; a token carries the generation it was issued in, so tokens
    # issued before the change are refused.
    token_generation: Mapped[int] = mapped_column(default=0, server_default="0")


# `alice` and `Alice` are one person: names are unique whatever their case (migration 0004).
Index("uq_users_username_lower", func.lower(User.username), unique=True)


class ApiKey(Base):
    """A service account's API key, stored as the sha256 of the key (the key is shown once)."""

    __tablename__ = "api_keys"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    revoked: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class AuditEvent(Base):
    """One audited action (allowed or denied): append-only, never updated or deleted."""

    __tablename__ = "audit_events"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=_utcnow, index=True)
    username: Mapped[str | None] = mapped_column(String(64), index=True)
    role: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64), index=True)
    object: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    status: Mapped[int | None]
    client: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))


class RevokedToken(Base):
    """A signed-out JWT (its `jti`), refused until it would have expired anyway; then it may be purged."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime] = mapped_column(default=_utcnow)


class CaseEdit(Base):
    """One change to a case's report or diagnosis (or a confirmed/corrected prediction), kept after deletion."""

    __tablename__ = "case_edits"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(index=True)
    at: Mapped[datetime] = mapped_column(default=_utcnow)
    username: Mapped[str | None] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(32))
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)


@event.listens_for(AuditEvent, "before_update")
@event.listens_for(AuditEvent, "before_delete")
def _audit_is_append_only(_mapper: object, _connection: object, _target: object) -> None:
    raise PermissionError("audit rows are append-only: they are never updated or deleted")


# The database refuses too (SQLite; migration 0002 adds the same triggers).
AUDIT_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END",
)
for _trigger in AUDIT_TRIGGERS:
    event.listen(AuditEvent.__table__, "after_create", DDL(_trigger).execute_if(dialect="sqlite"))

# PostgreSQL: one trigger function raising on UPDATE and DELETE (and TRUNCATE); migration 0003 adds
# the same to catalogs whose table already exists.
AUDIT_TRIGGERS_POSTGRES = (
    "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'audit rows are append-only'; END $$",
    "DROP TRIGGER IF EXISTS audit_events_no_change ON audit_events",
    "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
)
for _trigger in AUDIT_TRIGGERS_POSTGRES:
    event.listen(AuditEvent.__table__, "after_create", DDL(_trigger).execute_if(dialect="postgresql"))


class PacsConnection(Base):
    """A PACS medcbir reads from: where it answers and how to link into its viewer (never its credentials)."""

    __tablename__ = "pacs_connections"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(Text)  # the DICOMweb root, e.g. http://host:8042/dicom-web
    kind: Mapped[str] = mapped_column(String(16), default="dicomweb")  # dicomweb | orthanc
    viewer_url_template: Mapped[str | None] = mapped_column(Text)
    verify_tls: Mapped[bool] = mapped_column(default=True)
    write_back: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)


class PacsCursor(Base):
    """How far a PACS change feed has been read, committed in the transaction of the rows it produced."""

    __tablename__ = "pacs_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(default=_utcnow, onupdate=_utcnow)


class FeedbackMark(Base):
    """A relevance mark of a refine session, saved with a case: a neighbour marked relevant or not."""

    __tablename__ = "feedback_marks"
    __table_args__ = (UniqueConstraint("case_id", "origin", "image_id"), NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    origin: Mapped[str] = mapped_column(String(64))  # the refined search: query:<query_id> or image:<id>
    image_id: Mapped[int]  # the marked neighbour (no foreign key: the mark outlives that image)
    relevant: Mapped[bool]
    round: Mapped[int] = mapped_column(default=1)
    username: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=_utcnow)
