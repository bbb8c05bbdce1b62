"""The pydicom-data corpus as Orthanc keeps it: the files it accepted (one per SOP Instance UID), copied to disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_files

from tests.pacs.orthanc import OrthancServer


def corpus_files() -> list[Path]:
    """Every file of pydicom's bundled test data and pydicom-data, sorted by name."""
    found = {Path(str(p)) for p in get_testdata_files("*")}
    return sorted((p for p in found if p.is_file()), key=lambda p: (p.name, str(p)))


def upload_corpus(orthanc: OrthancServer, files: list[Path], folder: Path) -> list[Path]:
    """Upload `files`; copy the ones Orthanc stored as new (not refused, not a second copy of a SOP
    Instance UID it already had) into `folder`: the same instances, on disk.

    A file whose Study / Series / SOP Instance UIDs repeat an uploaded one's is not uploaded: DICOMweb
    addresses an instance by those three UIDs only, so a PACS cannot hand out both (pydicom-data has one
    such pair, under two patients)."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    addressed: set[tuple[str, str, str]] = set()
    with orthanc.client() as client:
        for number, path in enumerate(files):
            key = _uids(path)
            if key is not None and key in addressed:
                continue
            response = client.post("/instances", content=path.read_bytes())
            if response.status_code == 200 and response.json().get("Status") == "Success":
                target = folder / f"{number:03d}_{path.name}"
                shutil.copyfile(path, target)
                kept.append(target)
                if key is not None:
                    addressed.add(key)
    return kept


def _uids(path: Path) -> tuple[str, str, str] | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    except Exception:
        return None
