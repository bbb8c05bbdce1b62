"""A real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) started on loopback for the tests marked `pacs`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

REQUIRE_ENV = "MEDCBIR_TEST_REQUIRE_ORTHANC"
ORTHANC_BINARY = "/usr/sbin/Orthanc"
# Where Debian's orthanc-dicomweb puts the plugin (its /usr/lib/orthanc/ file is versioned).
DICOMWEB_PLUGIN_PATHS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)
USERNAME = "medcbir-test"
PASSWORD = "orthanc-test-secret-7f3a"  # also the canary the credential tests look for in logs
STABLE_AGE_S = 2
RECEIVER_AET = "MEDCBIR"
_START_TIMEOUT_S = 60


@dataclass(frozen=True)
class OrthancServer:
    """A running test Orthanc: its REST and DICOMweb roots, DICOM port and the account it requires."""

    http_url: str
    dicom_port: int
    receiver_port: int  # where its modality "medcbir" sends (the receiver under test listens there)
    username: str
    password: str
    aet: str = "ORTHANC"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    def client(self) -> httpx.Client:
        """An authenticated REST client on the Orthanc API."""
        return httpx.Client(base_url=self.http_url, auth=(self.username, self.password), timeout=60)

    def upload(self, paths: list[Path]) -> list[dict[str, str]]:
        """POST each file to /instances; returns Orthanc's answers (files it refuses are left out)."""
        answers = []
        with self.client() as client:
            for path in paths:
                response = client.post("/instances", content=path.read_bytes())
                if response.status_code == 200:
                    answers.append(response.json())
        return answers

    def clear(self) -> None:
        """Delete every patient (and so every study) stored in the server."""
        with self.client() as client:
            for patient in client.get("/patients").json():
                client.delete(f"/patients/{patient}")


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's shared library, when the package is installed."""
    return next((path for path in DICOMWEB_PLUGIN_PATHS if path.is_file()), None)


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set, so the PACS tests must run)")
    pytest.skip(reason)


def write_config(folder: Path, http_port: int, dicom_port: int, receiver_port: int, plugin: Path) -> Path:
    """The test configuration: loopback only, authentication on, DICOMweb on, a short StableAge."""
    config = {
        "Name": "medcbir-test-orthanc",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USERNAME: PASSWORD},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        "StableAge": STABLE_AGE_S,
        "DicomModalities": {"medcbir": [RECEIVER_AET, "127.0.0.1", receiver_port]},
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "HttpTimeout": 60,
        "ConcurrentJobs": 2,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@contextmanager
def running_orthanc(folder: Path) -> Iterator[OrthancServer]:
    """Start Orthanc with a fresh test configuration in `folder`; stop it after. Skips (or fails when
    MEDCBIR_TEST_REQUIRE_ORTHANC is set) when Orthanc or its DICOMweb plugin is missing or will not start."""
    binary = shutil.which("Orthanc") or (ORTHANC_BINARY if Path(ORTHANC_BINARY).is_file() else None)
    plugin = dicomweb_plugin()
    if binary is None or plugin is None:
        _unavailable(
            "Orthanc with its DICOMweb plugin is not installed: apt-get install -y orthanc orthanc-dicomweb"
        )
    assert binary is not None and plugin is not None
    http_port, dicom_port, receiver_port = free_port(), free_port(), free_port()
    config = write_config(folder, http_port, dicom_port, receiver_port, plugin)
    log_path = folder / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = OrthancServer(f"http://127.0.0.1:{http_port}", dicom_port, receiver_port, USERNAME, PASSWORD)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                _unavailable(f"Orthanc exited at start (code {process.returncode}): {tail}")
            try:
                with server.client() as client:
                    if client.get("/system", timeout=2).status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                _unavailable(f"Orthanc did not answer on {server.http_url} within {_START_TIMEOUT_S} s")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
