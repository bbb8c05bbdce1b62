"""End to end as a user runs it: `medcbir index` a folder, `medcbir serve`, query over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ARCHIVE_ROWS
from tests.helpers import dicom_testfile, free_port

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "covid-chestxray"


def _medcbir(*args: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MEDCBIR_DATA_DIR"] = str(data_dir)
    # These data folders have no accounts: `serve` on 127.0.0.1 in the explicit development mode.
    env["MEDCBIR_API_AUTH_DISABLED"] = "1"
    return env


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stdout.read() if process.stdout else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError("server did not start")


def _stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    try:
        out, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out or ""


def test_index_serve_query(small_archive: tuple[Path, Path], tmp_path: Path) -> None:
    folder, manifest = small_archive
    env = _env(tmp_path / "data")
    result = _medcbir("index", str(folder), "--manifest", str(manifest), "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    assert f"indexed {len(ARCHIVE_ROWS)}," in result.stdout
    again = _medcbir("index", str(folder), "--manifest", str(manifest), "--no-progress", env=env)
    assert f"indexed 0, already indexed {len(ARCHIVE_ROWS)}" in again.stdout
    stats = _medcbir("stats", env=env)
    assert f"images:        {len(ARCHIVE_ROWS)}" in stats.stdout
    assert _medcbir("verify", env=env).returncode == 0

    process, url = _serve(env)
    try:
        response = httpx.post(
            f"{url}/search",
            files={"file": ("q", dicom_testfile("US1_J2KI.dcm").read_bytes())},
            data={"k": "3"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        top = response.json()["hits"][0]
        assert top["source_uri"].endswith("US1_UNCI.dcm") and top["similarity"] >= 0.99
        assert top["report"] == "Ultrasound survey." and top["diagnosis"] == ["ultrasound finding"]
    finally:
        log = _stop(process)
    # reports and raw patient ids never reach the logs
    for _rel, _case, patient, report, _labels in ARCHIVE_ROWS:
        assert patient not in log and report not in log


def test_index_reports_a_missing_manifest_column_clearly(
    small_archive: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, manifest = small_archive
    result = _medcbir(
        "index", str(folder), "--manifest", str(manifest), "--report-column", "notes", env=_env(tmp_path)
    )
    assert result.returncode == 2
    assert "--report-column 'notes'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)  # indexes the 724-image collection with the real encoder: ~10 min on 2 busy cores
@pytest.mark.skipif(not SHARED.exists(), reason="../shared/datasets/covid-chestxray is absent")
def test_covid_chestxray_with_its_own_columns(tmp_path: Path) -> None:
    import csv

    env = _env(tmp_path / "data")
    result = _medcbir(
        "index", str(SHARED / "images"), "--manifest", str(SHARED / "metadata.csv"),
        "--path-column", "filename", "--patient-column", "patientid",
        "--report-column", "clinical_notes", "--diagnosis-column", "finding", "--ignore-label", "todo",
        "--no-progress", env=env, timeout=1700,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "failed 0" in result.stdout
    with (SHARED / "metadata.csv").open(newline="") as handle:
        rows = {r["filename"]: r for r in csv.DictReader(handle)}
    # query with a chest X-ray that has a finding and notes
    query = next(
        name for name, r in rows.items()
        if r["modality"] == "X-ray" and r["finding"] == "Pneumocystis" and r["clinical_notes"]
        and (SHARED / "images" / name).exists()
    )  # fmt: skip
    process, url = _serve(env)
    try:
        body = httpx.post(
            f"{url}/search",
            files={"file": (query, (SHARED / "images" / query).read_bytes())},
            data={"k": "10"},
            timeout=120,
        ).json()
    finally:
        log = _stop(process)
    hits = body["hits"]
    assert len(hits) == 10
    assert hits[0]["source_uri"].endswith(query) and hits[0]["similarity"] >= 0.999
    for hit in hits:
        row = rows[Path(hit["source_uri"]).name]
        assert hit["report"] == (row["clinical_notes"].strip() or None)
        expected = [x.strip() for x in row["finding"].split(",") if x.strip() and x.strip() != "todo"]
        assert hit["diagnosis"] == expected
    # neighbours are chest images: X-ray or CT from this chest collection with findings
    assert sum(1 for h in hits if rows[Path(h["source_uri"]).name]["modality"] == "X-ray") >= 7
    prediction = body["prediction"]
    # the prediction is the vote of these neighbours: its label is one of their findings, it leads its own
    # scores, and its confidence is that top score
    assert prediction["label"] in {label for h in hits for label in h["diagnosis"]}, prediction
    scores = prediction["scores"]
    assert scores[0]["label"] == prediction["label"] and scores[0]["score"] == pytest.approx(
        prediction["confidence"]
    )
    assert [s["score"] for s in scores] == sorted((s["score"] for s in scores), reverse=True)
    assert 0.0 < prediction["confidence"] <= 1.0
    assert rows[query]["clinical_notes"][:40] not in log


def test_dicom_patient_text_never_reaches_the_logs(tmp_path: Path) -> None:
    import pydicom

    folder = tmp_path / "in"
    folder.mkdir()
    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    canary_name = "CANARYSURNAME" * 6 + "^GIVEN"  # over 64 chars: pydicom warns about it, quoting it
    ds.PatientName = canary_name
    ds.PatientID = "CANARY-ID-4242"
    ds.StudyDescription = "<script>alert(1)</script> CANARYSTUDY"
    mode = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:  # invalid values that pydicom's reader warns about, quoting them
        ds.PatientSex = "canary-sex-secret"
        ds.PatientBirthDate = "CANARYDATE"
        ds.SOPInstanceUID = "1.2.CANARYUID"  # read as UI and checked: pydicom quotes it in a warning
        ds.save_as(folder / "canary.dcm")
    finally:
        pydicom.config.settings.writing_validation_mode = mode
    result = _medcbir("index", str(folder), env=_env(tmp_path / "data"))
    assert result.returncode == 0 and "indexed 1," in result.stdout, result.stderr
    for text in (
        "CANARYSURNAME",
        "CANARY-ID-4242",
        "CANARYSTUDY",
        "canary-sex-secret",
        "CANARYDATE",
        "CANARYUID",
    ):
        assert text not in result.stderr and text not in result.stdout
