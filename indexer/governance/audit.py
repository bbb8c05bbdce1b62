"""The audit trail and case-edit history: append-only rows of who did what, when, from where, with what outcome."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from indexer.catalog import AuditEvent, CaseEdit, Catalog


@dataclass(frozen=True)
class AuditRecord:
    """One audit row as read back."""

    id: int
    at: datetime
    username: str | None
    role: str | None
    action: str
    object: str | None
    outcome: str
    status: int | None
    client: str | None
    request_id: str | None


def record_audit(
    catalog: Catalog,
    *,
    action: str,
    outcome: str,
    username: str | None = None,
    role: str | None = None,
    object: str | None = None,
    status: int | None = None,
    client: str | None = None,
    request_id: str | None = None,
) -> None:
    """Append one audit row (UTC time); rows are never updated or deleted."""
    with catalog.session() as session:
        session.add(
            AuditEvent(
                at=datetime.now(UTC),
                username=username[:64] if username else None,
                role=role,
                action=action,
                object=object,
                outcome=outcome,
                status=status,
                client=client[:64] if client else None,
                request_id=request_id,
            )
        )


# Actions that change the archive or its accounts: their intent is recorded before they run (outcome
# "started"), and their outcome after, in a second row with the same request id (rows are append-only).
# A "started" row with no outcome row is an interrupted action (a killed server, a lost connection).
CHANGING_ACTIONS = frozenset(
    {"add_case", "edit_case", "delete_case", "ingest", "rebuild_index", "create_user", "update_user"}
)
STARTED = "started"


def incomplete_actions(catalog: Catalog, *, limit: int = 100) -> list[AuditRecord]:
    """Intents ("started" rows) that have no outcome row: actions interrupted before they answered, newest first."""
    finished = select(AuditEvent.request_id).where(
        AuditEvent.outcome != STARTED, AuditEvent.request_id.is_not(None)
    )
    query = (
        select(AuditEvent)
        .where(AuditEvent.outcome == STARTED, AuditEvent.request_id.not_in(finished))
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    )
    with catalog.session() as session:
        return [_record(r) for r in session.scalars(query)]


def _record(r: AuditEvent) -> AuditRecord:
    return AuditRecord(
        r.id, r.at, r.username, r.role, r.action, r.object, r.outcome, r.status, r.client, r.request_id
    )


def audit_records(
    catalog: Catalog,
    *,
    limit: int = 100,
    offset: int = 0,
    username: str | None = None,
    action: str | None = None,
) -> tuple[int, list[AuditRecord]]:
    """(total matching, newest first page) of the audit trail."""
    query = select(AuditEvent)
    if username:
        query = query.where(AuditEvent.username == username)
    if action:
        query = query.where(AuditEvent.action == action)
    with catalog.session() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)).all()
        return int(total), [
            AuditRecord(
                r.id,
                r.at,
                r.username,
                r.role,
                r.action,
                r.object,
                r.outcome,
                r.status,
                r.client,
                r.request_id,
            )
            for r in rows
        ]


# -- case edit history -------------------------------------------------------------------------


def record_case_edit(
    session: Session, case_id: int, username: str | None, field: str, old: str | None, new: str | None
) -> None:
    """Keep one change of a case, in the caller's transaction."""
    session.add(
        CaseEdit(
            case_id=case_id,
            at=datetime.now(UTC),
            username=username,
            field=field,
            old_value=old,
            new_value=new,
        )
    )


def case_edits(catalog: Catalog, case_id: int) -> list[CaseEdit]:
    """A case's changes, oldest first."""
    with catalog.session() as session:
        return list(
            session.scalars(select(CaseEdit).where(CaseEdit.case_id == case_id).order_by(CaseEdit.id))
        )
