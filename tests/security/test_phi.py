"""PHI: a canary patient's name, id and report, ingested, searched, viewed and edited, never reach the logs;
answers carry only the pseudonymous patient reference; de-identified export per PS3.15 Basic Profile."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pydicom
import pytest
from typer.testing import CliRunner

from indexer.cli import app as cli
from indexer.governance.export import BurnedInAnnotationError, Deidentifier
from tests.helpers import dicom_testfile
from tests.security.conftest import CANARY_ID, CANARY_NAME, CANARY_REPORT, SecuredApi

CANARIES = (CANARY_NAME, CANARY_NAME.split("^")[0], CANARY_ID, CANARY_REPORT, "quokka-xylophone")


def test_canary_patient_never_reaches_the_logs(secured_api: SecuredApi) -> None:
    api = secured_api
    rad, admin = api.headers("radiologist"), api.headers("admin")
    canary_file = api.files[3].read_bytes()
    api.logs.attach()
    start = len(api.logs.lines)
    # search with the canary's own image, view its case, thumbnail, history, edit it, fail on it
    body = httpx.post(
        f"{api.url}/search", files={"file": ("c.dcm", canary_file)}, data={"k": "4"}, headers=rad
    ).json()
    top = body["hits"][0]
    assert top["report"] == CANARY_REPORT  # the radiologist sees the report in the answer
    case_id = top["case_id"]
    for path in (f"/cases/{case_id}", f"/cases/{case_id}/history", f"/images/{top['image_id']}/thumbnail"):
        assert httpx.get(f"{api.url}{path}", headers=rad).status_code == 200
    httpx.post(f"{api.url}/search/by-image/{top['image_id']}", data={"k": "2"}, headers=rad)
    edited = httpx.patch(
        f"{api.url}/cases/{case_id}", json={"report": CANARY_REPORT + " (amended)"}, headers=rad
    )
    assert edited.status_code == 200
    httpx.post(f"{api.url}/cases", files=[("files", ("c.dcm", canary_file))], headers=rad)  # 409: stored
    httpx.post(f"{api.url}/search", files={"file": ("c.dcm", canary_file[:600])}, headers=rad)  # truncated
    httpx.post(f"{api.url}/token", data={"username": CANARY_NAME, "password": CANARY_ID})  # nonsense login
    httpx.get(f"{api.url}/audit", headers=admin)
    logging.getLogger("medcbir.test").info("canary run done")
    logs = "\n".join(api.logs.lines[start:])
    assert "canary run done" in logs and "POST /search" in logs  # the capture sees the server's lines
    for canary in CANARIES:
        assert canary not in logs, f"{canary!r} reached the logs"
    # answers name the patient only by pseudonym
    for hit in body["hits"]:
        assert hit["patient_ref"] is None or hit["patient_ref"].startswith("P-")
    text = httpx.post(
        f"{api.url}/search", files={"file": ("c.dcm", canary_file)}, data={"k": "4"}, headers=rad
    ).text
    assert CANARY_NAME not in text and CANARY_ID not in text
    assert body["query"]["patient_ref"].startswith("P-")


def _phi_dataset(
    path: Path, burned_in: str | None = None, study: str = "1.2.3.4.5.6", sop: str = "1.2.3.4.5.6.7"
) -> Path:
    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = CANARY_NAME, CANARY_ID, "19610704"
    ds.InstitutionName, ds.InstitutionAddress = "St Canary Hospital", "1 Canary Road"
    ds.ReferringPhysicianName, ds.PerformingPhysicianName, ds.OperatorsName = "Dr^Who", "Dr^Perf", "Op^Erator"
    ds.StationName, ds.AccessionNumber, ds.StudyID = "CT-STATION-9", "ACC-5551", "STUDY-9"
    ds.StudyDate, ds.SeriesDate, ds.ContentDate = "20200315", "20200315", "20200316"
    ds.StudyInstanceUID, ds.SOPInstanceUID = study, sop
    ds.ImageComments = CANARY_REPORT
    ds.add_new(0x00091001, "LO", "private canary " + CANARY_ID)
    if burned_in:
        ds.BurnedInAnnotation = burned_in
    ds.save_as(path)
    return path


def test_deidentifier_applies_the_basic_profile(tmp_path: Path) -> None:
    key = b"k" * 32
    ds = pydicom.dcmread(_phi_dataset(tmp_path / "a.dcm"))
    original_sop_class = ds.SOPClassUID
    out = Deidentifier(key).apply(ds)
    text = str(out)
    for value in (
        *CANARIES,
        "St Canary",
        "Canary Road",
        "Dr^Who",
        "Dr^Perf",
        "Op^Erator",
        "CT-STATION-9",
        "ACC-5551",
    ):
        assert value not in text, value
    assert str(out.PatientName).startswith("P-") and out.PatientID == str(out.PatientName)
    assert out.PatientBirthDate == "" and out.AccessionNumber == "" and out.StudyID == ""
    assert "InstitutionName" not in out and "ImageComments" not in out and out.OperatorsName == ""
    assert not any(element.tag.is_private for element in out)
    assert out.PatientIdentityRemoved == "YES"
    assert "Basic Profile" in out.DeidentificationMethod and len(out.DeidentificationMethod) <= 64  # LO
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert out.SOPClassUID == original_sop_class  # standard UIDs identify nobody
    assert out.StudyInstanceUID.startswith("2.25.") and out.StudyInstanceUID != "1.2.3.4.5.6"
    # dates move back by one offset per patient: the interval between them survives
    assert out.StudyDate != "20200315" and out.StudyDate == out.SeriesDate
    assert int(out.ContentDate) - int(out.StudyDate) in (
        1,
        70,
        71,
        8870,
        8871,
    )  # one day later (any month end)
    # consistent: a second file of the same study and patient gets the same study UID and date shift
    second = Deidentifier(key).apply(pydicom.dcmread(_phi_dataset(tmp_path / "b.dcm", sop="1.2.3.4.5.6.8")))
    assert second.StudyInstanceUID == out.StudyInstanceUID and second.StudyDate == out.StudyDate
    assert second.SOPInstanceUID != out.SOPInstanceUID and second.PatientID == out.PatientID


def test_burned_in_annotation_is_refused_unless_allowed(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_phi_dataset(tmp_path / "c.dcm", burned_in="YES"))
    with pytest.raises(BurnedInAnnotationError, match="--allow-burned-in"):
        Deidentifier(b"k" * 32).apply(ds)
    assert Deidentifier(b"k" * 32).apply(ds, allow_burned_in=True).PatientIdentityRemoved == "YES"


def test_cli_export_deidentify(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    _phi_dataset(source / "a.dcm")
    _phi_dataset(source / "b.dcm", burned_in="YES", study="1.2.3.9", sop="1.2.3.9.1")
    data = tmp_path / "data"
    from indexer.archive import Archive
    from indexer.ingest.local import ingest_path
    from indexer.settings import IndexerSettings
    from tests.helpers import ThumbnailEncoder

    archive = Archive.open(IndexerSettings(data_dir=data), encoder=ThumbnailEncoder())
    assert ingest_path(archive, source, progress=False, workers=0).indexed == 2
    archive.close()
    runner = CliRunner()
    refused = runner.invoke(cli, ["export", "--out", str(tmp_path / "x"), "--data-dir", str(data)])
    assert refused.exit_code != 0 and "--deidentify" in refused.output
    out = tmp_path / "out"
    result = runner.invoke(cli, ["export", "--deidentify", "--out", str(out), "--data-dir", str(data)])
    assert result.exit_code == 1, result.output  # not every DICOM file was exported
    assert "exported 1 of 2 DICOM files" in result.output and "refused 1 with burned-in" in result.output
    files = list(out.rglob("*.dcm"))
    assert len(files) == 1 and all(part.startswith("2.25.") for part in files[0].relative_to(out).parts[:1])
    written = pydicom.dcmread(files[0])
    assert written.PatientIdentityRemoved == "YES" and CANARY_ID not in str(written)
    allowed = runner.invoke(
        cli, ["export", "--deidentify", "--allow-burned-in", "--out", str(out), "--data-dir", str(data)]
    )
    assert allowed.exit_code == 0 and "exported 2 of 2" in allowed.output
    audit = runner.invoke(cli, ["audit", "--action", "export", "--data-dir", str(data)])
    assert audit.exit_code == 0 and audit.output.count("export") >= 2
