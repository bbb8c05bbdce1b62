"""Session fixtures: the real default encoder, a small real archive with a manifest, and a live API."""

from __future__ import annotations

import csv
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.helpers import ThumbnailEncoder, dicom_testfile, run_demo, serve_app

# Files of the small archive used by the API, end-to-end and UI tests, with the manifest rows
# written for them: (file, case id, patient id, report, diagnosis cell).
ARCHIVE_ROWS = [
    ("dicom/RG1_UNCI.dcm", "C-CHEST-1", "PAT-A", "Chest radiograph. Lungs clear.", "normal chest"),
    (
        "dicom/MR2_UNCI.dcm",
        "C-MR-1",
        "PAT-B",
        "MR head. Small lesion, follow-up advised.",
        "lesion;follow-up",
    ),
    ("dicom/US1_UNCI.dcm", "C-US-1", "PAT-C", "Ultrasound survey.", "ultrasound finding"),
    ("dicom/CT_small.dcm", "C-CT-1", "PAT-D", "CT slice.", "ct finding"),
    ("dicom/MR_small.dcm", "C-MR-2", "PAT-E", "MR small.", "lesion"),
    ("raster/retina.png", "C-FUNDUS-1", "PAT-F", "Fundus photograph.", "retina"),
    ("raster/ihc.jpg", "C-IHC-1", "PAT-G", "Immunohistochemistry slide.", "histology"),
]


def build_small_archive(root: Path) -> Path:
    """Write the small real archive (DICOM from pydicom-data, skimage pictures) and its manifest."""
    from skimage import data as skdata

    (root / "dicom").mkdir(parents=True, exist_ok=True)
    (root / "raster").mkdir(parents=True, exist_ok=True)
    for name in ("RG1_UNCI.dcm", "MR2_UNCI.dcm", "US1_UNCI.dcm", "CT_small.dcm", "MR_small.dcm"):
        shutil.copyfile(dicom_testfile(name), root / "dicom" / name)
    PILImage.fromarray(np.asarray(skdata.retina())).resize((512, 512)).save(root / "raster" / "retina.png")
    PILImage.fromarray(np.asarray(skdata.immunohistochemistry())).save(
        root / "raster" / "ihc.jpg", quality=92
    )
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
        writer.writerows(ARCHIVE_ROWS)
    return manifest


@pytest.fixture(scope="session")
def real_encoder():  # type: ignore[no-untyped-def]
    """The default offline encoder with its real ImageNet weights, loaded once per session."""
    from embeddings import create_encoder

    return create_encoder("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def built_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """(data dir, the first run's output) of `medcbir demo --no-serve`, built once per session."""
    data_dir = tmp_path_factory.mktemp("demo")
    return data_dir, run_demo(data_dir)


@pytest.fixture()
def fake_encoder() -> ThumbnailEncoder:
    return ThumbnailEncoder()


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(folder, manifest) of the small real archive."""
    root = tmp_path_factory.mktemp("archive")
    return root, build_small_archive(root)


@pytest.fixture(scope="session")
def indexed_archive(tmp_path_factory: pytest.TempPathFactory, small_archive: tuple[Path, Path], real_encoder):  # type: ignore[no-untyped-def]
    """The small archive indexed with the real encoder into a fresh data folder."""
    from indexer.archive import Archive
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest
    from indexer.settings import IndexerSettings

    folder, manifest = small_archive
    settings = IndexerSettings(data_dir=tmp_path_factory.mktemp("data"))
    archive = Archive.open(settings, encoder=real_encoder)
    report = ingest_path(archive, folder, load_manifest(manifest, ManifestColumns()), progress=False)
    assert report.indexed == len(ARCHIVE_ROWS), report
    return archive


# Accounts of the live API (authentication is always on): one per role, with a chosen password.
TEST_PASSWORD = "correct horse battery staple"
TEST_USERS = {"radiologist": "test-radiologist", "admin": "test-admin"}


@pytest.fixture(scope="session")
def live_api_url(indexed_archive) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A real uvicorn server serving the real app over the indexed small archive, with test accounts."""
    from indexer.governance.accounts import create_user
    from search_api.app import create_app

    for role, username in TEST_USERS.items():
        create_user(indexed_archive.catalog, username, TEST_PASSWORD, role)
    with serve_app(create_app(archive=indexed_archive)) as url:
        yield url


@pytest.fixture(scope="session")
def api_tokens(live_api_url: str) -> dict[str, str]:
    """A bearer token per role, from the live API's POST /token."""
    import httpx

    tokens = {}
    for role, username in TEST_USERS.items():
        response = httpx.post(f"{live_api_url}/token", data={"username": username, "password": TEST_PASSWORD})
        assert response.status_code == 200, response.text
        tokens[role] = response.json()["access_token"]
    return tokens


@pytest.fixture(scope="session")
def radiologist_headers(api_tokens: dict[str, str]) -> dict[str, str]:
    """Authorization headers of the live API's radiologist."""
    return {"Authorization": f"Bearer {api_tokens['radiologist']}"}


@pytest.fixture(scope="session")
def admin_headers(api_tokens: dict[str, str]) -> dict[str, str]:
    """Authorization headers of the live API's admin."""
    return {"Authorization": f"Bearer {api_tokens['admin']}"}
