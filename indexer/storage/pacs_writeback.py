"""Similar prior cases written back into the PACS: a Key Object Selection document (highdicom) stored with STOW-RS."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

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

    @property
    def referable(self) -> bool:
        """True when the KOS can reference the image itself (it is a DICOM instance)."""
        return bool(
            self.study_instance_uid
            and self.series_instance_uid
            and self.sop_instance_uid
            and self.sop_class_uid
        )

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


def similar_cases_kos(query: Dataset, cases: Sequence[SimilarCase]) -> Dataset:
    """A Key Object Selection document in the query's study: "Of Interest", referencing the query and the
    neighbours of the same study, with every similar case listed in its description.

    highdicom (like most viewers) keeps a KOS to one study, so neighbours from other studies are listed
    by their UIDs in the text rather than referenced."""
    hd = require_extra("highdicom", "pacs", needed_for="writing a KOS needs highdicom")
    codes = require_extra("pydicom.sr.codedict", "pacs").codes
    same_study = [c for c in cases if c.referable and c.study_instance_uid == query.StudyInstanceUID]
    referenced = [query] + [c.reference() for c in same_study if c.sop_instance_uid != query.SOPInstanceUID]
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest, referenced_objects=referenced, description=summary_text(cases)
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=referenced,
        content=content,
        series_instance_uid=hd.UID(),
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
    )


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
    document = similar_cases_kos(header, cases)
    pacs.store([document])
    log.info("PACS %s: stored a similar-cases KOS referencing %d cases", pacs.connection.name, len(cases))
    return str(document.SOPInstanceUID)
