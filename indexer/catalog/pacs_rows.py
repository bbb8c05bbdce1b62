"""The catalog's PACS rows: connections (where each PACS answers) and the cursors of their change feeds."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.models import Image, PacsConnection, PacsCursor
from indexer.errors import IndexerError, NotFoundError


class PacsConnectionExistsError(IndexerError):
    """A PACS connection with that name is already configured."""


@dataclass(frozen=True)
class PacsConnectionRow:
    """A configured PACS, as the catalog keeps it (credentials are never stored here)."""

    name: str
    url: str
    kind: str
    viewer_url_template: str | None
    verify_tls: bool
    write_back: bool


def _row(connection: PacsConnection) -> PacsConnectionRow:
    return PacsConnectionRow(
        name=connection.name,
        url=connection.url,
        kind=connection.kind,
        viewer_url_template=connection.viewer_url_template,
        verify_tls=connection.verify_tls,
        write_back=connection.write_back,
    )


def _source_uri_starts(prefix: str) -> ColumnElement[bool]:
    """Images whose source uri starts with `prefix` (LIKE, with the prefix's own wildcards escaped)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return Image.source_uri.like(f"{escaped}%", escape="\\")


class PacsRows:
    """Catalog methods for PACS connections and feed cursors."""

    _sessions: sessionmaker[Session]

    def add_pacs_connection(self, row: PacsConnectionRow, *, replace: bool = False) -> None:
        """Store a connection; PacsConnectionExistsError when the name is taken (unless `replace`)."""
        with self._sessions() as session, session.begin():
            existing = session.scalars(select(PacsConnection).where(PacsConnection.name == row.name)).first()
            if existing is not None and not replace:
                raise PacsConnectionExistsError(
                    f"a PACS named {row.name!r} is already configured: pick another name, or pass --replace"
                )
            target = existing or PacsConnection(name=row.name)
            target.url = row.url
            target.kind = row.kind
            target.viewer_url_template = row.viewer_url_template
            target.verify_tls = row.verify_tls
            target.write_back = row.write_back
            session.add(target)
            try:
                session.flush()
            except IntegrityError as exc:
                raise PacsConnectionExistsError(f"a PACS named {row.name!r} is already configured") from exc

    def pacs_connections(self) -> list[PacsConnectionRow]:
        """Every configured PACS, by name."""
        with self._sessions() as session:
            return [_row(c) for c in session.scalars(select(PacsConnection).order_by(PacsConnection.name))]

    def pacs_connection(self, name: str) -> PacsConnectionRow:
        """One configured PACS; NotFoundError (naming the command that lists them) when there is none."""
        with self._sessions() as session:
            found = session.scalars(select(PacsConnection).where(PacsConnection.name == name)).first()
        if found is None:
            raise NotFoundError(
                f"no PACS named {name!r} is configured: see `medcbir pacs list`, or `pacs add`"
            )
        return _row(found)

    def pacs_cursor(self, name: str) -> int:
        """Where the change feed of PACS `name` was last read up to (0: from the start)."""
        with self._sessions() as session:
            found = session.get(PacsCursor, name)
            return 0 if found is None else found.position

    @staticmethod
    def set_pacs_cursor(session: Session, name: str, position: int) -> None:
        """Move a feed's cursor inside the caller's session, so it commits with the rows it produced."""
        found = session.get(PacsCursor, name)
        if found is None:
            session.add(PacsCursor(name=name, position=position))
        else:
            found.position = position

    def stored_sop_instance_uids(self, uids: set[str]) -> set[str]:
        """The subset of the given SOP Instance UIDs that some stored image already has."""
        wanted = sorted(uids)
        found: set[str] = set()
        with self._sessions() as session:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                found.update(
                    str(uid)
                    for uid in session.scalars(
                        select(Image.sop_instance_uid).where(Image.sop_instance_uid.in_(chunk))
                    )
                )
        return found

    def study_case_ids(self, prefix: str) -> dict[str, set[int]]:
        """Case ids by Study Instance UID of the stored images whose source uri starts with `prefix`."""
        found: dict[str, set[int]] = {}
        with self._sessions() as session:
            rows = session.execute(
                select(Image.study_instance_uid, Image.case_id).where(_source_uri_starts(prefix))
            )
            for study, case_id in rows:
                if study:
                    found.setdefault(str(study), set()).add(int(case_id))
        return found

    def instance_counts(self, prefix: str) -> dict[str, int]:
        """Distinct source uris (instances, whatever frames they gave) by Study Instance UID, of the stored
        images whose source uri starts with `prefix`."""
        with self._sessions() as session:
            rows = session.execute(
                select(Image.study_instance_uid, func.count(func.distinct(Image.source_uri)))
                .where(_source_uri_starts(prefix))
                .group_by(Image.study_instance_uid)
            )
            return {str(study): int(count) for study, count in rows if study}

    def image_ids_with_source_uri(self, uri: str) -> list[int]:
        """Ids of the stored images read from exactly this source uri (one per frame kept)."""
        with self._sessions() as session:
            return [
                int(i)
                for i in session.scalars(select(Image.id).where(Image.source_uri == uri).order_by(Image.id))
            ]

    def source_uris_with_prefix(self, prefix: str) -> set[str]:
        """Stored images' source uris that start with `prefix` (e.g. every instance of one PACS)."""
        with self._sessions() as session:
            return set(session.scalars(select(Image.source_uri).where(_source_uri_starts(prefix))))
