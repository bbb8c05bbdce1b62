"""The test Orthanc itself: authentication on, DICOMweb answering, uploads visible through QIDO-RS."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import dicom_testfile
from tests.pacs import orthanc as orthanc_module
from tests.pacs.orthanc import OrthancServer


def test_orthanc_requires_its_account(orthanc: OrthancServer) -> None:
    assert httpx.get(f"{orthanc.http_url}/system", timeout=10).status_code == 401
    with orthanc.client() as client:
        assert client.get("/system").json()["DicomPort"] == orthanc.dicom_port


def test_uploaded_instance_is_found_by_qido(orthanc: OrthancServer) -> None:
    uploaded = orthanc.upload([dicom_testfile("CT_small.dcm")])
    assert len(uploaded) == 1
    with orthanc.client() as client:
        studies = client.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"}).json()
        modalities = client.get("/modalities").json()
    assert len(studies) == 1
    assert "medcbir" in modalities


def test_missing_orthanc_skips_or_fails_when_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orthanc_module, "DICOMWEB_PLUGIN_PATHS", (tmp_path / "absent.so",))
    monkeypatch.delenv(orthanc_module.REQUIRE_ENV, raising=False)
    missing = "apt-get install -y orthanc orthanc-dicomweb"
    with pytest.raises(pytest.skip.Exception, match=missing), orthanc_module.running_orthanc(tmp_path):
        pass
    monkeypatch.setenv(orthanc_module.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="must run"), orthanc_module.running_orthanc(tmp_path):
        pass
