"""De-identifies one DICOM data set in place: the Basic Profile with the Modified Dates Option and UID remapping.

Options applied: Retain Longitudinal Temporal Information with Modified Dates (every date moves back
by one offset per patient, so intervals survive) and consistent UID remapping (one keyed hash per UID,
so a study's files still belong together). What happens to each attribute is the table in
indexer.governance.profile; private tags, overlays, curves and elements of unknown meaning are removed;
Patient Identity Removed is YES and De-identification Method (with its CID 7050 codes) says what was
done. Images flagged Burned In Annotation = YES are refused unless the caller says otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import date, timedelta

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from indexer.errors import IndexerError
from indexer.governance.profile import (
    DUMMY,
    DUMMY_TEXT,
    EMPTIED_VRS,
    EMPTY,
    KEEP_UIDS,
    METHOD,
    METHOD_CODES,
    REMOVE,
    REMOVED_VRS,
    STANDARD_UID_ROOT,
)
from indexer.governance.pseudonym import patient_reference

ANONYMOUS = "ANONYMOUS"
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})


class BurnedInAnnotationError(IndexerError):
    """The image says its pixels carry burned-in text (Burned In Annotation = YES)."""


def _removed_group(group: int) -> bool:
    """Overlay planes (60xx) and curves (50xx): their data and comments are removed with the whole group."""
    return (0x6000 <= group <= 0x60FF or 0x5000 <= group <= 0x50FF) and group % 2 == 0


def _emptied(element: DataElement) -> None:
    element.value = Sequence() if element.VR == "SQ" else ""


class Deidentifier:
    """Applies the profile with consistent remapping: the same input UID, patient or date offset
    always maps to the same output (keyed hashes with the archive's pseudonym key)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}:{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A new UID under 2.25 (a UUID-derived root that needs no registration); standard UIDs stay."""
        value = str(value).strip().rstrip("\x00")
        if not value or value.startswith(STANDARD_UID_ROOT):
            return value
        return "2.25." + str(int.from_bytes(self._digest("uid", value)[:16], "big"))

    def day_offset(self, patient: str) -> int:
        """Days every date of this patient moves back: 365-3,650, the same for all of their files."""
        return 365 + int.from_bytes(self._digest("date", patient)[:4], "big") % 3286

    def shift_date(self, value: str, offset: int) -> str:
        """A DA or DT value moved back by `offset` days (its time and zone kept); "" if it is no date."""
        text = str(value).strip()
        if len(text) < 8 or not text[:8].isdigit():
            return ""
        try:
            day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return ""
        return (day - timedelta(days=offset)).strftime("%Y%m%d") + text[8:]

    def apply(self, ds: Dataset, *, allow_burned_in: bool = False) -> Dataset:
        """De-identify `ds` in place and return it (its File Meta is not touched: writers make their own)."""
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES" and not allow_burned_in:
            raise BurnedInAnnotationError(
                "Burned In Annotation = YES: the pixels may show identifying text; "
                "re-run with --allow-burned-in after checking them"
            )
        patient = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
        pseudonym = patient_reference(self.key, patient) or ANONYMOUS
        self._walk(ds, self.day_offset(patient))
        ds.PatientName = pseudonym
        ds.PatientID = pseudonym
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        codes = []
        for value, meaning in METHOD_CODES:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        return ds

    def _walk(self, ds: Dataset, offset: int) -> None:
        for element in list(ds):
            tag = element.tag
            keyword = element.keyword
            if (
                tag.is_private
                or keyword in REMOVE
                or element.VR in REMOVED_VRS
                or _removed_group(tag.group)
                or (tag.element == 0 and tag.group > 2)  # group lengths: wrong once anything is removed
            ):
                del ds[tag]
            elif keyword in EMPTY:
                _emptied(element)
            elif keyword in DUMMY:
                if element.value and element.VR in _TEXT_VRS:
                    element.value = DUMMY_TEXT
            elif keyword == "PatientID":  # a patient named inside a sequence gets their own pseudonym
                element.value = patient_reference(self.key, str(element.value or "")) or ""
            elif element.VR == "SQ":
                for item in element.value or []:
                    self._walk(item, offset)
            elif element.VR in EMPTIED_VRS:
                _emptied(element)
            elif element.VR == "UI" and keyword not in KEEP_UIDS:
                element.value = (
                    [self.uid(v) for v in element.value] if element.VM > 1 else self.uid(element.value)
                )
            elif element.VR in ("DA", "DT") and element.value:
                values = element.value if element.VM > 1 else [element.value]
                shifted = [self.shift_date(str(v), offset) for v in values]
                element.value = shifted if element.VM > 1 else shifted[0]
