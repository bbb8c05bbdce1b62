"""A secured live API over a small archive with a fast encoder, its accounts, and its captured logs."""

from __future__ import annotations

import csv
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import uvicorn
from fastapi import FastAPI

from indexer.archive import Archive
from indexer.governance.accounts import create_api_key, create_user
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from search_api.app import create_app
from search_api.settings import ApiSettings
from tests.helpers import ThumbnailEncoder, dicom_testfile, start_server

PASSWORD = "a long test password 42"
# A patient whose name, id and report must never reach a log line or an API answer.
CANARY_NAME = "Zebulon^Canarywing"
CANARY_ID = "CANARY-77341"
CANARY_REPORT = "Canary report text: quokka-xylophone finding"
USERS = {"admin": "sec-admin", "radiologist": "sec-radiologist", "disabled": "sec-disabled"}
LOGIN_LIMIT = 5
MAX_UPLOAD = 300_000
MAX_PIXELS = 60_000


def write_dicoms(root: Path) -> list[Path]:
    """Four CT variants (different pixels, studies, patients), the last one the canary patient's."""
    paths = []
    for i in range(4):
        ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
        arr = np.roll(ds.pixel_array, 9 * i, axis=1)
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.7.{i}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.7.{i}.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7.{i}.1.1"
        ds.PatientName = CANARY_NAME if i == 3 else f"Test^Patient{i}"
        ds.PatientID = CANARY_ID if i == 3 else f"PID-{i}"
        path = root / f"ct{i}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


class LogCapture(logging.Handler):
    """Every log record of the process, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")

    def attach(self) -> None:
        """(Re)attach to the root and uvicorn loggers at DEBUG: a later uvicorn.Config elsewhere in the
        session re-configures uvicorn's loggers (its handlers, levels, no propagation)."""
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            if self not in logger.handlers:
                logger.addHandler(self)
            logger.setLevel(logging.DEBUG)
            logger.disabled = False

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class SecuredApi:
    """A running secured API: URL, app, archive, a token per role, a service API key, the logs."""

    url: str
    app: FastAPI
    archive: Archive
    tokens: dict[str, str]
    service_key: str
    logs: LogCapture
    files: list[Path]

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def serve_logged(app: FastAPI) -> tuple[str, uvicorn.Server, threading.Thread]:
    """uvicorn on a free loopback port with its access log on (its records reach the root logger)."""
    return start_server(app, log_config=None, access_log=True, log_level="info")


def build_secured_archive(root: Path) -> tuple[Archive, list[Path]]:
    """The small CT archive (manifest with reports, the canary's included), fast encoder."""
    source = root / "source"
    source.mkdir()
    files = write_dicoms(source)
    manifest = source / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
        for i, path in enumerate(files):
            canary = i == 3
            writer.writerow(
                [
                    path.name,
                    f"SEC-{i}",
                    CANARY_ID if canary else f"PID-{i}",
                    CANARY_REPORT if canary else f"Report {i}.",
                    "nodule" if i % 2 else "normal",
                ]
            )
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=ThumbnailEncoder())
    report = ingest_path(
        archive, source, load_manifest(manifest, ManifestColumns()), progress=False, workers=0
    )
    assert report.indexed == len(files), report
    return archive, files


@pytest.fixture(scope="session")
def secured_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredApi]:
    """The secured API with an admin, a radiologist, a disabled user and a service account."""
    logs = LogCapture()
    loggers = [logging.getLogger(n) for n in LogCapture.LOGGERS]
    previous_levels = [lg.level for lg in loggers]
    logs.attach()
    archive, files = build_secured_archive(tmp_path_factory.mktemp("secured"))
    catalog = archive.catalog
    create_user(catalog, USERS["admin"], PASSWORD, "admin")
    create_user(catalog, USERS["radiologist"], PASSWORD, "radiologist")
    create_user(catalog, USERS["disabled"], PASSWORD, "radiologist")
    create_user(catalog, "sec-service", None, "radiologist", service=True)
    service_key = create_api_key(catalog, "sec-service")
    settings = ApiSettings(
        login_attempts_per_minute=LOGIN_LIMIT, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, max_k=20
    )
    app = create_app(archive=archive, api_settings=settings)
    url, server, thread = serve_logged(app)
    tokens = {}
    for role, username in USERS.items():
        response = httpx.post(f"{url}/token", data={"username": username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        tokens[role] = response.json()["access_token"]
    try:
        yield SecuredApi(url, app, archive, tokens, service_key, logs, files)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        for lg, level in zip(loggers, previous_levels, strict=True):
            lg.removeHandler(logs)
            lg.setLevel(level)
