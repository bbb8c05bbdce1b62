"""The catalog's relevance-feedback marks: the neighbours a refine session marked, saved with a case."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.models import Case, FeedbackMark
from indexer.errors import NotFoundError


class FeedbackMarkRows:
    """Catalog methods for the feedback marks saved with a case."""

    _sessions: sessionmaker[Session]

    def save_feedback_marks(
        self,
        case_id: int,
        origin: str,
        *,
        positive: Sequence[int],
        negative: Sequence[int],
        round_number: int,
        username: str | None,
    ) -> list[FeedbackMark]:
        """Keep the marks of one refined search (`origin`) with the case, replacing the marks saved
        before for that search (a refine sends every mark so far); NotFoundError without the case."""
        with self._sessions() as session, session.begin():
            if session.get(Case, case_id) is None:
                raise NotFoundError(f"case {case_id} does not exist; save the marks with an existing case")
            session.execute(
                delete(FeedbackMark).where(FeedbackMark.case_id == case_id, FeedbackMark.origin == origin)
            )
            marks = [
                FeedbackMark(
                    case_id=case_id,
                    origin=origin,
                    image_id=image_id,
                    relevant=relevant,
                    round=round_number,
                    username=username,
                )
                for relevant, ids in ((True, positive), (False, negative))
                for image_id in dict.fromkeys(ids)
            ]
            session.add_all(marks)
        return marks

    def feedback_marks(self, case_id: int) -> list[FeedbackMark]:
        """The marks saved with a case, by search, then relevant first, then image id."""
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(FeedbackMark)
                    .where(FeedbackMark.case_id == case_id)
                    .order_by(FeedbackMark.origin, FeedbackMark.relevant.desc(), FeedbackMark.image_id)
                )
            )
