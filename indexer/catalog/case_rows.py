"""The catalog's case edits: change or delete a case's rows across its tables, keeping the edit history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from indexer.catalog.models import Case, CaseEdit, Diagnosis, Image, ImageEmbedding
from indexer.errors import NotFoundError

# One change of a case as the history keeps it: (field, old value, new value).
CaseChange = tuple[str, str | None, str | None]


def joined_labels(labels: Sequence[str]) -> str:
    """Diagnosis labels as the edit history records them."""
    return "; ".join(labels)


@dataclass(frozen=True)
class DeletedImage:
    """What a deleted image row pointed at: its id (the vector to remove) and the files it leaves behind."""

    id: int
    thumbnail_path: str | None
    source_uri: str


class CaseRows:
    """Catalog methods that edit cases; every change is also kept as a CaseEdit row (kept after deletion)."""

    _sessions: sessionmaker[Session]

    def record_case_changes(self, case_key: str, username: str | None, changes: Sequence[CaseChange]) -> int:
        """Keep changes of the case with this key in its history; its id."""
        with self._sessions() as session, session.begin():
            case_id = session.scalars(select(Case.id).where(Case.case_key == case_key)).one()
            for field, old, new in changes:
                _add_edit(session, case_id, username, field, old, new)
            return int(case_id)

    def edit_case(
        self, case_id: int, *, report: str | None, labels: Sequence[str] | None, username: str | None
    ) -> None:
        """Replace the report and/or the diagnosis labels (given cleaned); each change enters the history."""
        with self._sessions() as session, session.begin():
            case = session.scalars(
                select(Case).where(Case.id == case_id).options(selectinload(Case.diagnoses))
            ).first()
            if case is None:
                raise NotFoundError(f"case {case_id} does not exist")
            if report is not None and report != (case.report or ""):
                _add_edit(session, case_id, username, "report", case.report, report)
                case.report = report or None
            if labels is not None:
                wanted = list(labels)
                old = case.labels
                if wanted != old:
                    _add_edit(
                        session, case_id, username, "diagnosis", joined_labels(old), joined_labels(wanted)
                    )
                    for stale in [d for d in case.diagnoses if d.label not in wanted]:
                        case.diagnoses.remove(stale)
                    session.flush()
                    for label in wanted:
                        if label not in old:
                            case.diagnoses.append(Diagnosis(label=label))

    def delete_case(self, case_id: int, username: str | None) -> list[DeletedImage]:
        """Delete the case, its diagnoses, images and their extra embeddings in one transaction.

        Returns the deleted images, so the caller can remove their vectors and files next.
        """
        with self._sessions() as session, session.begin():
            if session.get(Case, case_id) is None:
                raise NotFoundError(f"case {case_id} does not exist")
            rows = session.execute(
                select(Image.id, Image.thumbnail_path, Image.source_uri).where(Image.case_id == case_id)
            ).all()
            deleted = [DeletedImage(int(r[0]), r[1], str(r[2])) for r in rows]
            ids = [image.id for image in deleted]
            session.execute(delete(ImageEmbedding).where(ImageEmbedding.image_id.in_(ids)))
            session.execute(delete(Image).where(Image.case_id == case_id))
            session.execute(delete(Diagnosis).where(Diagnosis.case_id == case_id))
            session.execute(delete(Case).where(Case.id == case_id))
            _add_edit(session, case_id, username, "deleted", None, f"{len(ids)} images")
        return deleted


def _add_edit(
    session: Session, case_id: int, username: str | None, field: str, old: str | None, new: str | None
) -> None:
    session.add(CaseEdit(case_id=case_id, username=username, field=field, old_value=old, new_value=new))
