"""De-identified DICOM export: each archived DICOM source read back as ingested, de-identified, written as Part 10.

Every stored source is read through indexer.storage.stored (files, archive members; DICOM with or
without preamble and File Meta, as the ingest read it), de-identified by indexer.governance.deidentify,
and written with a new File Meta (the transfer syntax the data set is encoded in, Media Storage SOP
Class / Instance = the data set's, medcbir's Implementation Class UID and Version Name). A source that
is gone, unreadable or cannot be written is a failure of that file, counted with its reason; the run
goes on. Output paths come from the remapped UIDs (hashes), never from DICOM text.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select

from imaging import ImagingError
from indexer.catalog import Catalog, Image
from indexer.errors import IndexerError
from indexer.governance.deidentify import BurnedInAnnotationError, Deidentifier
from indexer.storage.stored import StoredSourceGoneError, UnreadableSourceUriError, load_stored_dataset

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "BurnedInAnnotationError",
    "Deidentifier",
    "ExportFailure",
    "ExportReport",
    "MissingSopIdentityError",
    "export_deidentified",
    "write_part10",
]

log = logging.getLogger(__name__)

# medcbir's Implementation Class UID: a UUID-derived 2.25 UID (uuid5 of the project's url), fixed forever.
IMPLEMENTATION_CLASS_UID = "2.25.97149746178950360376516582447825244282"
IMPLEMENTATION_VERSION_NAME = "MEDCBIR_1"  # SH: at most 16 characters
_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FILE_NAME = re.compile(r"^[0-9][0-9.]{0,63}$")

# Why a stored DICOM source was not exported: a fixed wording per reason (no path, no DICOM text).
GONE = "source gone"
UNREADABLE_SOURCE = "source not readable from here"
NOT_READABLE_DICOM = "not a readable DICOM file"
NO_IDENTITY = "no SOP Class or Instance UID"
UNWRITABLE = "could not be written"
_WHAT_TO_DO = {
    GONE: "put the file back where it was indexed from, or delete the case",
    UNREADABLE_SOURCE: "check that its PACS or archive is reachable, or re-index it from where it lives now",
    NOT_READABLE_DICOM: "the stored file changed or is damaged: check it, then delete and re-index the case",
    NO_IDENTITY: "the object has no identity to write a DICOM file with: fix it at the source",
    UNWRITABLE: "check free space and permissions of --out; otherwise report the image id",
}


class MissingSopIdentityError(IndexerError, ValueError):
    """A data set without SOP Class UID or SOP Instance UID cannot be written as a DICOM file."""


@dataclass(frozen=True)
class ExportFailure:
    """One stored DICOM source that was not exported: the image id, a fixed reason, what to do."""

    image_id: int
    reason: str

    @property
    def what_to_do(self) -> str:
        return _WHAT_TO_DO.get(self.reason, "")


@dataclass
class ExportReport:
    """What one export did: DICOM sources exported, refused, failed (by reason); raster images skipped."""

    exported: int = 0
    not_dicom: int = 0
    burned_in_refused: int = 0
    failures: list[ExportFailure] = field(default_factory=list)
    out_dir: Path | None = None
    written: dict[int, Path] = field(default_factory=dict)  # image id (of the file's first frame) -> file
    written_paths: set[Path] = field(default_factory=set)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def unreachable(self) -> int:
        """Sources that are gone or whose uri cannot be read back here."""
        return sum(1 for f in self.failures if f.reason in (GONE, UNREADABLE_SOURCE))

    @property
    def dicom_sources(self) -> int:
        """Every DICOM source of the selection (each file once, however many frames it has)."""
        return self.exported + self.burned_in_refused + self.failed

    @property
    def complete(self) -> bool:
        """True when every DICOM source of the selection was exported."""
        return self.exported == self.dicom_sources

    def reasons(self) -> dict[str, int]:
        """Failures counted by reason, the most frequent first."""
        return dict(Counter(f.reason for f in self.failures).most_common())

    def failure_lines(self, most_ids: int = 20) -> list[str]:
        """Per reason: how many, which image ids (the first `most_ids`), and what to do."""
        lines = []
        for reason, count in self.reasons().items():
            ids = [str(f.image_id) for f in self.failures if f.reason == reason]
            shown = ", ".join(ids[:most_ids]) + (", ..." if len(ids) > most_ids else "")
            lines.append(f"{count} {reason} (image ids {shown}): {_WHAT_TO_DO[reason]}")
        return lines

    def summary(self) -> str:
        """One line: how many were exported, and why the others were not."""
        parts = [f"exported {self.exported} of {self.dicom_sources} DICOM files"]
        if self.failures:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.reasons().items())
            parts.append(f"{self.failed} failed ({reasons})")
        if self.burned_in_refused:
            parts.append(f"refused {self.burned_in_refused} with burned-in annotation")
        parts.append(f"skipped {self.not_dicom} non-DICOM images")
        return "; ".join(parts)


def _written_syntax(ds: Dataset) -> UID:
    """The transfer syntax the data set is encoded in: compressed and deflated syntaxes as the File Meta
    says, otherwise the VR and byte order that pydicom found while reading."""
    meta = getattr(ds, "file_meta", None)
    declared = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else UID("")
    if declared and (declared.is_encapsulated or declared.is_deflated):
        return declared
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return declared or ExplicitVRLittleEndian
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def write_part10(ds: Dataset, target: Path, *, transfer_syntax: str | None = None) -> Path:
    """Write `ds` as a DICOM Part 10 file (128-byte zero preamble, new File Meta) to `target`, atomically.

    The File Meta is made here: Media Storage SOP Class / Instance UID from the data set, the
    transfer syntax given or the one the data set is encoded in, and medcbir's implementation
    identity; nothing of the source's File Meta (source AE title, private information) is kept.
    Raises MissingSopIdentityError, or what pydicom and the file system raise.
    """
    sop_class, sop_instance = str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
    if not sop_class or not sop_instance:
        raise MissingSopIdentityError(
            "the data set has no SOP Class UID or SOP Instance UID: it cannot be written as a DICOM file"
        )
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax) if transfer_syntax else _written_syntax(ds)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        ds.save_as(partial, enforce_file_format=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _file_name(value: object, fallback: str) -> str:
    text = str(value or "")
    return text if _FILE_NAME.match(text) else fallback


def export_dataset(
    ds: Dataset,
    deid: Deidentifier,
    out_dir: Path,
    *,
    name: str,
    allow_burned_in: bool = False,
    taken: Container[Path] = (),
) -> Path:
    """De-identify one data set and write it under out_dir/<study>/<instance>.dcm (remapped UIDs).

    `name` stands in for a UID that cannot be a file name, and is appended to the file name when
    the path is `taken` (already written by this export: two archived files with one SOP Instance UID).
    Raises BurnedInAnnotationError, MissingSopIdentityError, or what writing raises."""
    syntax = _written_syntax(ds)  # before anything changes the data set
    deid.apply(ds, allow_burned_in=allow_burned_in)
    study = _file_name(ds.get("StudyInstanceUID"), "no-study")
    target = out_dir / study / f"{_file_name(ds.get('SOPInstanceUID'), name)}.dcm"
    if target in taken:
        target = target.with_name(f"{target.stem}-{name}.dcm")
    return write_part10(ds, target, transfer_syntax=syntax)


def export_deidentified(
    catalog: Catalog,
    key: bytes,
    out_dir: Path,
    *,
    case_ids: Iterable[int] | None = None,
    allow_burned_in: bool = False,
) -> ExportReport:
    """Write each archived DICOM source (of the given cases, or all), de-identified, under out_dir.

    Each source file is exported once, however many frames of it are indexed. Raster images are
    counted and skipped; burned-in images are refused unless allow_burned_in; a source that cannot
    be read back or written is recorded in the report's failures and the export goes on.
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
        done.add(uri)
        reason = _export_one(image_id, uri, deid, out_dir, allow_burned_in, report)
        if reason is not None:
            report.failures.append(ExportFailure(image_id, reason))
            log.warning("image %d not exported: %s", image_id, reason)
    log.info("export: %s", report.summary())
    return report


def _export_one(
    image_id: int, uri: str, deid: Deidentifier, out_dir: Path, allow_burned_in: bool, report: ExportReport
) -> str | None:
    """Export one source; the failure reason, or None when it was exported or refused as burned in."""
    try:
        ds = load_stored_dataset(uri)
    except StoredSourceGoneError:
        return GONE
    except ImagingError:  # the bytes changed since the ingest, or were damaged
        return NOT_READABLE_DICOM
    except (UnreadableSourceUriError, IndexerError, OSError):  # a uri, PACS or archive not readable here
        return UNREADABLE_SOURCE
    if not any(keyword in ds for keyword in _PIXEL_DATA):  # it was an image when it was indexed
        return NOT_READABLE_DICOM
    try:
        path = export_dataset(
            ds,
            deid,
            out_dir,
            name=f"image-{image_id}",
            allow_burned_in=allow_burned_in,
            taken=report.written_paths,
        )
    except BurnedInAnnotationError:
        log.warning("image %d refused: Burned In Annotation = YES", image_id)
        report.burned_in_refused += 1
        return None
    except MissingSopIdentityError:
        return NO_IDENTITY
    except Exception as exc:  # hostile values or a full disk: this file fails, the export goes on
        log.warning("image %d could not be written (%s)", image_id, type(exc).__name__)
        return UNWRITABLE
    report.exported += 1
    report.written[image_id] = path
    report.written_paths.add(path)
    return None
