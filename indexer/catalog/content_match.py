"""Stored images that hold a query's content (file sha256 or pixel digest), their patients, and those patients' images."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import or_, select

from indexer.catalog.models import Case, Image, has_vector_from
from indexer.catalog.repository import Catalog


@dataclass(frozen=True)
class ContentMatch:
    """The stored images whose file or pixels equal a query's: ids, their patients, their cases without one."""

    image_ids: tuple[int, ...]
    patient_refs: tuple[str, ...]
    cases_without_patient: tuple[int, ...]

    @property
    def found(self) -> bool:
        """True when at least one stored image holds the query's content."""
        return bool(self.image_ids)


def match_content(catalog: Catalog, *, sha256: str, pixel_digest: str | None) -> ContentMatch:
    """Stored images whose file sha256 or pixel digest (`imaging.pixel_digest`, as ingest stores it) match."""
    conditions = [Image.sha256 == sha256]
    if pixel_digest:
        conditions.append(Image.pixel_digest == pixel_digest)
    with catalog.session() as session:
        rows = session.execute(
            select(Image.id, Case.id, Case.patient_ref)
            .join(Case, Case.id == Image.case_id)
            .where(or_(*conditions))
            .order_by(Image.id)
        ).all()
    return ContentMatch(
        image_ids=tuple(int(image_id) for image_id, _, _ in rows),
        patient_refs=tuple(sorted({str(ref) for _, _, ref in rows if ref})),
        cases_without_patient=tuple(sorted({int(case_id) for _, case_id, ref in rows if not ref})),
    )


def images_of_patients(
    catalog: Catalog, encoder: str, *, patient_refs: Collection[str], case_ids: Collection[int] = ()
) -> npt.NDArray[np.int64]:
    """Ids of the encoder's images whose case belongs to one of these patients or is one of these cases."""
    if not patient_refs and not case_ids:
        return np.zeros(0, dtype=np.int64)
    owners = select(Case.id).where(or_(Case.patient_ref.in_(list(patient_refs)), Case.id.in_(list(case_ids))))
    query = select(Image.id).where(has_vector_from(encoder), Image.case_id.in_(owners)).order_by(Image.id)
    with catalog.session() as session:
        return np.fromiter(session.scalars(query), dtype=np.int64)
