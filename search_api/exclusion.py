"""Who the query's patient is (sent reference, DICOM PatientID, stored copy of its content) and which images to leave out."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from imaging import DecodedImage, pixel_digest
from indexer.archive import Archive
from indexer.catalog.content_match import ContentMatch, images_of_patients, match_content
from indexer.governance.pseudonym import patient_reference
from search_api.schemas import Exclusion, ExclusionSource

# A pseudonymous reference as the API shows it (indexer.governance.pseudonym); anything else is a patient id.
_PSEUDONYM = re.compile(r"^P-[0-9a-f]{16}$")

NO_PATIENT_REASON = (
    "the query's patient is unknown: the upload has no DICOM PatientID, no stored image has the same "
    "file or pixels (a re-encoded, resized or lossy copy does not match), and no patient_ref was sent; "
    "send patient_ref (the patient's ID or its P-... reference) to leave that patient out"
)


@dataclass(frozen=True)
class QueryPatient:
    """The patients a query belongs to, how each was recognised, and its stored copies' cases without one."""

    patient_refs: tuple[str, ...] = ()
    sources: tuple[ExclusionSource, ...] = ()
    cases_without_patient: tuple[int, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def known(self) -> bool:
        """True when the query's patient (or at least its stored case) is known."""
        return bool(self.patient_refs or self.cases_without_patient)

    @property
    def patient_ref(self) -> str | None:
        """The one patient reference to show for the query, or None when there is none (or several)."""
        return self.patient_refs[0] if len(self.patient_refs) == 1 else None


def sent_patient_ref(key: bytes, value: str | None) -> str | None:
    """A sent patient reference as stored: a P-... pseudonym is kept, a patient id is pseudonymised."""
    text = (value or "").strip()
    if not text:
        return None
    return text if _PSEUDONYM.match(text) else patient_reference(key, text)


def upload_patient(archive: Archive, data: bytes, decoded: DecodedImage, sent: str | None) -> QueryPatient:
    """The uploaded query's patient: the sent reference, its DICOM PatientID and its stored copies' patients."""
    refs: list[str] = []
    sources: list[ExclusionSource] = []
    explicit = sent_patient_ref(archive.pseudonym_key, sent)
    if explicit:
        refs.append(explicit)
        sources.append("patient_ref")
    from_header = patient_reference(archive.pseudonym_key, decoded.metadata.patient_id)
    if from_header:
        refs.append(from_header)
        sources.append("dicom_patient_id")
    match: ContentMatch = match_content(
        archive.catalog, sha256=hashlib.sha256(data).hexdigest(), pixel_digest=pixel_digest(decoded.pixels)
    )
    notes: list[str] = []
    if match.found:
        refs.extend(match.patient_refs)
        sources.append("content_match")
        if match.cases_without_patient:
            notes.append("a stored copy of the query has no patient reference: only its case was left out")
    return QueryPatient(
        patient_refs=tuple(dict.fromkeys(refs)),
        sources=tuple(sources),
        cases_without_patient=match.cases_without_patient,
        notes=tuple(notes),
    )


def archived_patient(patient_ref: str | None, case_id: int) -> QueryPatient:
    """An archived query image's patient (its case stands in when it has no patient reference)."""
    if patient_ref:
        return QueryPatient(patient_refs=(patient_ref,), sources=("archived_image",))
    return QueryPatient(
        sources=("archived_image",),
        cases_without_patient=(case_id,),
        notes=("the query image's case has no patient reference: only its case was left out",),
    )


def excluded_ids(
    archive: Archive, patient: QueryPatient, requested: bool
) -> tuple[npt.NDArray[np.int64] | None, Exclusion]:
    """The image ids to leave out (None: nothing to leave out) and the answer's account of it."""
    if not requested:
        return None, Exclusion()
    if not patient.known:
        return None, Exclusion(requested=True, applied=False, reason=NO_PATIENT_REASON)
    ids = images_of_patients(
        archive.catalog,
        archive.encoder.name,
        patient_refs=patient.patient_refs,
        case_ids=patient.cases_without_patient,
    )
    return ids, Exclusion(
        requested=True,
        applied=True,
        sources=list(patient.sources),
        excluded_images=len(ids),
        reason="; ".join(patient.notes) or None,
    )
