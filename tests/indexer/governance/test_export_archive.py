"""The whole pydicom + pydicom-data archive, indexed then exported de-identified: every DICOM file is exported,
passes dciodvfy with no error its source did not have, and keeps no Basic Profile attribute."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from imaging import ImagingError, load_image, read_dicom
from indexer.governance.deidentify import Deidentifier
from indexer.governance.export import ExportReport, export_dataset, export_deidentified
from indexer.governance.profile import DUMMY_TEXT, STANDARD_UID_ROOT
from indexer.storage.stored import SourceUri
from tests.dicom_validation import dciodvfy_path, new_errors, validate_dicom
from tests.helpers import ThumbnailEncoder

KEY = b"export-test-key-".ljust(32, b"k")
# pydicom warns about the corpus's odd values while reading; dciodvfy judges what is written.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

# Attributes the Basic Profile removes (X): none may be left, at any depth.
MUST_BE_GONE = (
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "PatientAge", "PatientSize",
    "PatientWeight", "PatientBirthTime", "EthnicGroup", "Occupation", "AdditionalPatientHistory",
    "PatientComments", "MedicalAlerts", "Allergies", "IssuerOfPatientID", "AdmissionID", "ImageComments",
    "StudyComments", "StudyDescription", "SeriesDescription", "ProtocolName", "DerivationDescription",
    "AcquisitionComments", "RequestedProcedureDescription", "PerformedProcedureStepDescription",
    "ReasonForStudy", "RequestAttributesSequence", "DeviceUID", "ReferencedPatientSequence",
    "ReferencedStudySequence", "OperatorIdentificationSequence", "DigitalSignaturesSequence",
    "OriginalAttributesSequence", "ContributingEquipmentSequence", "IconImageSequence",
)  # fmt: skip
# Attributes the profile empties (Z): present only with an empty value.
MUST_BE_EMPTY = ("PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName", "OperatorsName")
# Source values that name someone or something: none may appear in any text value of the export.
IDENTIFYING = (
    "PatientID", "OtherPatientIDs", "AccessionNumber", "InstitutionName", "InstitutionAddress", "StationName",
    "DeviceSerialNumber", "StudyID", "StudyDescription", "SeriesDescription", "ImageComments", "ProtocolName",
)  # fmt: skip
INSTANCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
_TEXT_VRS = {"AE", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def corpus_roots() -> list[Path]:
    """pydicom's bundled test files and, when installed, pydicom-data."""
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        from pydicom.data.data_manager import external_data_sources

        roots += [Path(source.data_path) for source in external_data_sources().values()]
    except Exception:  # pydicom-data missing: the bundled files alone
        pass
    roots = [root for root in roots if root.is_dir()]
    assert len(roots) >= 2, (
        "pydicom-data is not installed: pip install -e '.[demo]' (or pip install pydicom-data)"
    )
    return roots


@dataclass(frozen=True)
class ExportedArchive:
    report: ExportReport
    sources: dict[int, Path]  # image id -> its source file
    data_dir: Path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportedArchive:
    """The corpus indexed in place (fake encoder: the CNN is not under test), then exported once."""
    from indexer.archive import Archive
    from indexer.catalog import Image
    from indexer.ingest.local import ingest_path
    from indexer.settings import IndexerSettings

    data = tmp_path_factory.mktemp("data")
    archive = Archive.open(IndexerSettings(data_dir=data), encoder=ThumbnailEncoder())
    try:
        for root in corpus_roots():
            ingest_path(archive, root, progress=False, workers=0)
        with archive.catalog.session() as session:
            rows = session.query(Image.id, Image.source_uri).all()
        report = export_deidentified(archive.catalog, KEY, tmp_path_factory.mktemp("export"))
    finally:
        archive.close()
    sources = {image_id: SourceUri.parse(uri).path for image_id, uri in rows}
    return ExportedArchive(report, sources, data)


@cache
def _source(path: Path) -> Dataset:
    return read_dicom(path.read_bytes())


def _elements(ds: Dataset) -> Iterator[pydicom.DataElement]:
    for element in ds:
        yield element
        if element.VR == "SQ":
            for item in element.value or []:
                yield from _elements(item)


def _texts(ds: Dataset) -> list[str]:
    values = []
    for element in _elements(ds):
        if element.VR in _TEXT_VRS and element.value not in (None, ""):
            value = element.value
            values += [str(v) for v in value] if element.VM > 1 else [str(value)]
    return values


def profile_leftovers(source: Dataset, written: Dataset) -> list[str]:
    """What the PS3.15 Basic Profile says must be removed or replaced, found in `written` (empty: none)."""
    found = []
    elements = list(_elements(written))
    keywords = {element.keyword for element in elements}
    found += [f"private tag {e.tag}" for e in elements if e.tag.is_private]
    found += [f"{keyword} left" for keyword in MUST_BE_GONE if keyword in keywords]
    found += [f"{e.keyword} not empty" for e in elements if e.keyword in MUST_BE_EMPTY and e.value]
    pseudonym = str(written.PatientID)
    if (not pseudonym.startswith("P-") and pseudonym != "ANONYMOUS") or str(written.PatientName) != pseudonym:
        found.append("PatientName / PatientID not the pseudonym")
    found += [
        f"person name in {e.keyword}"
        for e in elements
        if e.VR == "PN" and e.value and str(e.value) != pseudonym
    ]
    found += [
        f"{e.keyword} not a dummy"
        for e in elements
        if e.keyword == "DeviceSerialNumber" and e.value not in ("", DUMMY_TEXT)
    ]
    if written.get("PatientIdentityRemoved") != "YES" or len(str(written.get("DeidentificationMethod"))) > 64:
        found.append("Patient Identity Removed / De-identification Method")
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "AcquisitionDateTime"):
        before, after = str(source.get(keyword, "") or ""), str(written.get(keyword, "") or "")
        if before[:8].isdigit() and after and after[:8] == before[:8]:
            found.append(f"{keyword} not shifted")
    # A value carried over from an attribute the profile keeps (a manufacturer named like the
    # institution) is no leak; any other text that holds a source's identifying value is.
    kept = _kept_source_values(source) | {pseudonym}
    suspects = [value for value in _texts(written) if value not in kept]
    secrets = {str(e.value).strip() for e in _elements(source) if e.keyword in IDENTIFYING and e.VM == 1}
    secrets |= {str(e.value).strip() for e in _elements(source) if e.VR == "PN" and e.value}
    secrets |= {str(source.get(k)).strip() for k in INSTANCE_UIDS if source.get(k)}
    for secret in secrets:
        if len(secret) < 4 or secret.startswith(STANDARD_UID_ROOT):
            continue
        numeric = not secret.strip("0123456789. ")  # a number leaks only as a whole value
        if any(secret == value if numeric else secret in value for value in suspects):
            found.append(f"a source value of {len(secret)} characters is still in the text")
    return found


def _kept_source_values(source: Dataset) -> set[str]:
    """Source values of attributes the profile keeps (a model name may equal a station name)."""
    return {
        text
        for e in _elements(source)
        if e.keyword not in IDENTIFYING and e.VR not in ("PN", "UI") and e.VM == 1
        for text in [str(e.value)]
    }


def test_every_indexed_dicom_file_is_exported(exported: ExportedArchive) -> None:
    report = exported.report
    assert report.failures == [] and report.burned_in_refused == 0
    distinct_sources = set(exported.sources.values())
    assert report.exported == len(distinct_sources) > 60, report.summary()
    assert len(set(report.written.values())) == report.exported  # one file each, none overwritten
    # the corpus's odd kinds are there: no preamble / File Meta, big endian, deflated, compressed
    syntaxes = Counter(str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                       for p in report.written.values())  # fmt: skip
    assert {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.5",
    } <= set(syntaxes)
    assert any(p.read_bytes()[128:132] != b"DICM" for p in distinct_sources)


def test_the_cli_exports_the_whole_archive(exported: ExportedArchive, tmp_path: Path) -> None:
    from indexer.cli import app

    result = CliRunner().invoke(
        app, ["export", "--deidentify", "--out", str(tmp_path), "--data-dir", str(exported.data_dir)]
    )
    assert result.exit_code == 0, result.output
    count = exported.report.exported
    assert f"exported {count} of {count} DICOM files" in result.output
    assert len(list(tmp_path.rglob("*.dcm"))) == count


def test_exported_files_have_a_proper_file_meta(exported: ExportedArchive) -> None:
    for path in exported.report.written.values():
        written = pydicom.dcmread(path)
        meta = written.file_meta
        assert path.read_bytes()[128:132] == b"DICM"
        assert meta.MediaStorageSOPClassUID == written.SOPClassUID
        assert meta.MediaStorageSOPInstanceUID == written.SOPInstanceUID
        assert meta.ImplementationClassUID.startswith("2.25.") and meta.ImplementationVersionName
        implicit, little = written.original_encoding  # the syntax says how the data set is encoded
        assert (implicit, little) == (
            meta.TransferSyntaxUID.is_implicit_VR,
            meta.TransferSyntaxUID.is_little_endian,
        )


def test_exported_files_pass_dciodvfy_with_no_new_error(exported: ExportedArchive) -> None:
    dciodvfy_path()
    found = {}
    for image_id, path in exported.report.written.items():
        errors = new_errors(path, source=exported.sources[image_id])
        if errors:
            found[exported.sources[image_id].name] = errors
    assert not found, found


def test_no_basic_profile_attribute_is_left(exported: ExportedArchive) -> None:
    found = {}
    for image_id, path in exported.report.written.items():
        source = exported.sources[image_id]
        leftovers = profile_leftovers(_source(source), pydicom.dcmread(path))
        if leftovers:
            found[source.name] = leftovers
    assert not found, found


def test_every_image_file_of_the_corpus_exports_valid(tmp_path: Path) -> None:
    """Each image file on its own (the archive keeps one file per SOP Instance UID, so the copies of one
    image in other transfer syntaxes, JPEG-LS lossless among them, are only exported here)."""
    dciodvfy_path()
    deid = Deidentifier(KEY)
    found: dict[str, list[str]] = {}
    exported = 0
    for root in corpus_roots():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                load_image(path)  # what the ingest stores: images that decode
                ds = read_dicom(path.read_bytes())
            except ImagingError:
                continue
            if "SOPInstanceUID" not in ds:
                continue  # (no such image in the corpus) refused by the export as NO_IDENTITY
            source = read_dicom(path.read_bytes())
            written = export_dataset(ds, deid, tmp_path / path.stem, name=path.stem)
            exported += 1
            problems = new_errors(written, source=path) + profile_leftovers(source, pydicom.dcmread(written))
            if problems:
                found[path.name] = problems
    assert exported > 100
    assert not found, found


def test_validation_helper_reports_errors(tmp_path: Path) -> None:
    """The helper sees real errors: a written file without its Type 1 SOP Instance UID is refused."""
    from tests.helpers import dicom_testfile

    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    dciodvfy_path()
    assert validate_dicom(dicom_testfile("CT_small.dcm")).errors == frozenset()
    del ds.SOPInstanceUID
    ds.save_as(tmp_path / "broken.dcm")
    assert any(
        "SOPInstanceUID" in e
        for e in new_errors(tmp_path / "broken.dcm", source=dicom_testfile("CT_small.dcm"))
    )
