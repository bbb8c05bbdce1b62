"""Similar prior cases written back into the PACS: a Key Object Selection document (highdicom) stored with STOW-RS."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import Dataset, dcmread

from indexer.errors import IndexerError
from indexer.extras import require_extra
from indexer.storage.dicomweb import DicomwebPacs, PacsInstance
from indexer.storage.stored import PacsInstanceUri

log = logging.getLogger(__name__)

KOS_SERIES_NUMBER = 9901  # a series of its own, far from the modality's numbers
MANUFACTURER = "medcbir"


class WriteBackDisabledError(IndexerError):
    """Writing into this PACS was not allowed when it was configured."""


@dataclass(frozen=True)
class SimilarCase:
    """One neighbour to list: its rank and similarity, its diagnoses, and its DICOM identity when it has one."""

    rank: int
    similarity: float
    diagnoses: Sequence[str]
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    pacs: str | None = None  # the PACS it was ingested from, when it was

    @property
    def referable(self) -> bool:
        """True when the KOS can reference the image itself (it is a DICOM instance)."""
        return bool(
            self.study_instance_uid
            and self.series_instance_uid
            and self.sop_instance_uid
            and self.sop_class_uid
        )

    def referable_in(self, pacs: str) -> bool:
        """True when a KOS stored in PACS `pacs` can reference it: a DICOM instance that PACS holds."""
        return self.referable and self.pacs == pacs

    def reference(self) -> Dataset:
        """The minimal data set a KOS reference needs."""
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds


def summary_text(cases: Sequence[SimilarCase]) -> str:
    """The document's text: one line per similar case (rank, similarity, diagnoses, and its Study / SOP
    Instance UIDs when it is a DICOM instance; no names, no reports)."""
    lines = ["Similar prior cases found by medcbir (content-based retrieval; decision support only):"]
    for case in cases:
        diagnoses = "; ".join(case.diagnoses) if case.diagnoses else "no diagnosis recorded"
        where = (
            f" [study {case.study_instance_uid}, instance {case.sop_instance_uid}]" if case.referable else ""
        )
        lines.append(f"{case.rank}. similarity {case.similarity:.3f} - {diagnoses}{where}")
    return "\n".join(lines)


def similar_cases_kos(query: Dataset, cases: Sequence[SimilarCase], pacs: str | None = None) -> Dataset:
    """A Key Object Selection document in the query's study: "Of Interest", referencing the query and
    every similar case that is an instance of PACS `pacs` (whatever its study), with every similar case
    listed in its description.

    PS3.3 C.17.6.2.1: the Current Requested Procedure Evidence Sequence holds the full set of instances the
    content references, study by study, other studies included. The document is stored in the query's
    study only (never in the neighbours' studies, which belong to other patients), so no Identical
    Documents Sequence is required. highdicom builds the content and the document, but refuses evidence
    from more than one other study (and drops it from one), so the document is built on the query's own
    study first and then given the whole content and evidence with highdicom's `collect_evidence`."""
    hd = require_extra("highdicom", "pacs", needed_for="writing a KOS needs highdicom")
    codes = require_extra("pydicom.sr.codedict", "pacs").codes
    collect_evidence = require_extra("highdicom.sr.utils", "pacs").collect_evidence
    study = query.StudyInstanceUID
    chosen = [c for c in cases if (c.referable_in(pacs) if pacs else c.referable)]
    seen = {str(query.SOPInstanceUID)}
    referenced = [query]
    for case in chosen:
        if case.sop_instance_uid not in seen:
            seen.add(str(case.sop_instance_uid))
            referenced.append(case.reference())
    local = [r for r in referenced if r.StudyInstanceUID == study]

    def content(objects: list[Dataset]) -> Any:
        return hd.ko.KeyObjectSelection(
            document_title=codes.DCM.OfInterest, referenced_objects=objects, description=summary_text(cases)
        )

    document = hd.ko.KeyObjectSelectionDocument(
        evidence=local,
        content=content(local),
        series_instance_uid=hd.UID(),
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
    )
    if len(referenced) == len(local):
        return document
    whole = content(referenced)
    for tag, value in whole[0].items():
        document[tag] = value
    same_study, other_studies = collect_evidence(referenced, whole[0], study_instance_uid=study)
    document.CurrentRequestedProcedureEvidenceSequence = [*same_study, *other_studies]
    return hd.ko.KeyObjectSelectionDocument.from_dataset(document)  # its reference table rebuilt


def write_similar_cases(pacs: DicomwebPacs, query: PacsInstanceUri, cases: Sequence[SimilarCase]) -> str:
    """Store a KOS listing `cases` in the query's study (STOW-RS); its SOP Instance UID.

    Raises WriteBackDisabledError unless the PACS was added with --write-back.
    """
    if not pacs.connection.write_back:
        raise WriteBackDisabledError(
            f"PACS {pacs.connection.name!r} does not allow write-back: re-add it with --write-back --replace "
            "to let medcbir store similar-case documents in it"
        )
    data = pacs.retrieve(PacsInstance(query.study, query.series, query.sop))
    header = dcmread(BytesIO(data), stop_before_pixels=True, force=True)
    document = similar_cases_kos(header, cases, pacs.connection.name)
    pacs.store([document])
    log.info("PACS %s: stored a similar-cases KOS referencing %d cases", pacs.connection.name, len(cases))
    return str(document.SOPInstanceUID)
