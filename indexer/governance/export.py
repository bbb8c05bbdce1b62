"""De-identified DICOM export per PS3.15 Annex E, Basic Application Level Confidentiality Profile.

Options applied: Retain Longitudinal Temporal Information with Modified Dates (every date is shifted
by one offset per patient, so intervals survive) and consistent UID remapping (one keyed hash per
UID, so a study's files still belong together). Names, ids, institution and physician fields,
free-text comments, overlays and private tags are removed or replaced; Patient Identity Removed is
set to YES and De-identification Method says what was done. Images flagged Burned In Annotation
= YES are refused unless the caller says otherwise (the pixels may show the name).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from sqlalchemy import select

from indexer.catalog import Catalog, Image
from indexer.errors import IndexerError
from indexer.governance.pseudonym import patient_reference
from indexer.storage.stored import read_stored_if_present

log = logging.getLogger(__name__)

METHOD = (
    "DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile; "
    "Retain Longitudinal Temporal Information with Modified Dates; medcbir"
)
# PS3.16 CID 7050 codes of the profile and the option.
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
# UIDs defined by the standard (SOP classes, transfer syntaxes, coding schemes) identify nobody.
STANDARD_UID_ROOT = "1.2.840.10008."
KEEP_UIDS = {"SOPClassUID", "ReferencedSOPClassUID", "TransferSyntaxUID", "MediaStorageSOPClassUID"}

# Attributes that the profile removes (X) or empties (Z): names, ids, institution, physicians,
# devices, free text. Person names (PN) and free-text VRs (LT, ST, UT) are removed wherever they are.
REMOVE = {
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation",
    "PatientAge", "PatientSize", "PatientWeight", "PatientBirthTime", "EthnicGroup", "Occupation",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "AdditionalPatientHistory",
    "PatientComments", "PatientInsurancePlanCodeSequence", "PatientReligiousPreference", "CountryOfResidence",
    "RegionOfResidence", "ResponsiblePerson", "ResponsibleOrganization", "PatientState", "MedicalAlerts",
    "Allergies", "SmokingStatus", "PregnancyStatus", "LastMenstrualDate", "SpecialNeeds",
    "InstitutionName", "InstitutionAddress", "InstitutionCodeSequence", "InstitutionalDepartmentName",
    "InstitutionalDepartmentTypeCodeSequence", "StationName", "DeviceSerialNumber", "DeviceUID",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorsName", "OperatorIdentificationSequence",
    "RequestingPhysician", "RequestingService", "ScheduledPerformingPhysicianName",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "AdmissionID", "IssuerOfAdmissionID",
    "ServiceEpisodeID", "ServiceEpisodeDescription", "PerformedLocation", "ScheduledStudyLocation",
    "CurrentPatientLocation", "PatientInstitutionResidence", "ImageComments", "StudyComments",
    "InterpretationText", "InterpretationAuthor", "InterpretationRecorder", "InterpretationApproverSequence",
    "DerivationDescription", "StudyDescription", "SeriesDescription", "PerformedProcedureStepDescription",
    "RequestedProcedureDescription", "ProtocolName", "AcquisitionComments", "ReasonForStudy",
    "RequestAttributesSequence", "ReferencedPatientSequence", "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence", "OriginalAttributesSequence", "ContentSequence",
    "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "PersonName", "TextValue",
    "PerformedProcedureStepID", "ScheduledProcedureStepID", "RequestedProcedureID", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "DigitalSignaturesSequence", "ContributingEquipmentSequence",
}  # fmt: skip
EMPTY = {"AccessionNumber", "StudyID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName"}
FREE_TEXT_VRS = {"LT", "ST", "UT"}


class BurnedInAnnotationError(IndexerError):
    """The image says its pixels carry burned-in text (Burned In Annotation = YES)."""


@dataclass
class ExportReport:
    """What one export did."""

    exported: int = 0
    not_dicom: int = 0
    burned_in_refused: int = 0
    unreachable: int = 0
    out_dir: Path | None = None


class Deidentifier:
    """Applies the profile with consistent remapping: the same input UID, patient or date offset
    always maps to the same output (keyed hashes with the archive's pseudonym key)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}:{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A new UID under 2.25 (a UUID-derived root that needs no registration)."""
        value = str(value).strip()
        if not value or value.startswith(STANDARD_UID_ROOT):
            return value
        return "2.25." + str(int.from_bytes(self._digest("uid", value)[:16], "big"))

    def day_offset(self, patient: str) -> int:
        """Days every date of this patient moves back: 365-3,650, the same for all of their files."""
        return 365 + int.from_bytes(self._digest("date", patient)[:4], "big") % 3286

    def shift_date(self, value: str, offset: int) -> str:
        text = str(value).strip()
        if len(text) < 8 or not text[:8].isdigit():
            return ""
        try:
            day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return ""
        return (day - timedelta(days=offset)).strftime("%Y%m%d") + text[8:]

    def apply(self, ds: Dataset, *, allow_burned_in: bool = False) -> Dataset:
        """De-identify `ds` in place and return it."""
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES" and not allow_burned_in:
            raise BurnedInAnnotationError(
                "Burned In Annotation = YES: the pixels may show identifying text; "
                "re-run with --allow-burned-in after checking them"
            )
        patient = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
        pseudonym = patient_reference(self.key, patient) or "ANONYMOUS"
        offset = self.day_offset(patient)
        ds.remove_private_tags()
        self._walk(ds, offset)
        ds.PatientName = pseudonym
        ds.PatientID = pseudonym
        for keyword in EMPTY:
            if keyword in ds:
                setattr(ds, keyword, "")
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        codes = []
        for value, meaning in METHOD_CODES:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    def _walk(self, ds: Dataset, offset: int) -> None:
        for element in list(ds):
            tag: BaseTag = element.tag
            keyword = element.keyword
            group = tag.group
            if keyword in REMOVE or (0x6000 <= group <= 0x60FF and group % 2 == 0) or group in (0x5000,):
                del ds[tag]
            elif element.VR == "SQ":
                for item in element.value or []:
                    self._walk(item, offset)
            elif element.VR == "PN" or element.VR in FREE_TEXT_VRS:
                if keyword not in ("PatientName", "ReferringPhysicianName"):
                    del ds[tag]
            elif element.VR == "UI" and keyword not in KEEP_UIDS:
                element.value = (
                    [self.uid(v) for v in element.value] if element.VM > 1 else self.uid(element.value)
                )
            elif element.VR in ("DA", "DT") and element.value:
                values = element.value if element.VM > 1 else [element.value]
                shifted = [self.shift_date(str(v), offset) for v in values]
                element.value = shifted if element.VM > 1 else shifted[0]


def export_deidentified(
    catalog: Catalog,
    key: bytes,
    out_dir: Path,
    *,
    case_ids: Iterable[int] | None = None,
    allow_burned_in: bool = False,
) -> ExportReport:
    """Write each archived DICOM image (of the given cases, or all), de-identified, under out_dir.

    Output paths come from the remapped UIDs only. Non-DICOM images and unreachable sources are
    counted and skipped; burned-in images are refused unless allow_burned_in.
    """
    report = ExportReport(out_dir=out_dir)
    deid = Deidentifier(key)
    query = select(Image.id, Image.source_uri, Image.format).order_by(Image.id)
    wanted = list(case_ids) if case_ids is not None else None
    if wanted is not None:
        query = query.where(Image.case_id.in_(wanted))
    with catalog.session() as session:
        rows = session.execute(query).all()
    done: set[str] = set()
    for image_id, uri, fmt in rows:
        if fmt != "dicom":
            report.not_dicom += 1
            continue
        if uri in done:  # several frames of one file (one source uri): export the file once
            continue
        data = read_stored_if_present(uri)  # a file, or a member of an archive such as an upload
        if data is None:
            report.unreachable += 1
            continue
        done.add(uri)
        ds = pydicom.dcmread(BytesIO(data))
        try:
            deid.apply(ds, allow_burned_in=allow_burned_in)
        except BurnedInAnnotationError:
            log.warning("image %d refused: Burned In Annotation = YES", image_id)
            report.burned_in_refused += 1
            continue
        study = str(ds.get("StudyInstanceUID", "") or "no-study")
        name = str(ds.get("SOPInstanceUID", "") or f"image-{image_id}")
        target = out_dir / study / f"{name}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=False)
        report.exported += 1
    log.info(
        "export: %d de-identified, %d not DICOM, %d burned-in refused, %d unreachable (%s)",
        report.exported,
        report.not_dicom,
        report.burned_in_refused,
        report.unreachable,
        datetime.now().isoformat(timespec="seconds"),
    )
    return report
