"""A small real labeled archive for head and calibration tests: crops of real medical pictures, by patient."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

# Each class is one real medical picture (pydicom's chest radiograph, skimage's fundus photograph and
# immunohistochemistry slide); each "patient" gets its own random crops of it.
CLASSES = ("chest radiograph", "retina", "histology")


def _sources() -> dict[str, np.ndarray]:
    from skimage import data as skdata

    from imaging import load_image
    from tests.helpers import dicom_testfile

    chest = (load_image(dicom_testfile("RG1_UNCI.dcm")).pixels * 255).astype(np.uint8)
    return {
        "chest radiograph": chest,
        "retina": np.asarray(skdata.retina()),
        "histology": np.asarray(skdata.immunohistochemistry()),
    }


def build_labeled_archive(
    root: Path, patients_per_class: int = 6, images_per_patient: int = 2, seed: int = 0
) -> Path:
    """Write PNG crops and a manifest (filename, case_id, patient_id, report, diagnosis); returns the manifest."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, picture in _sources().items():
        for p in range(patients_per_class):
            patient = f"PAT-{label.replace(' ', '-').upper()}-{p}"
            for i in range(images_per_patient):
                h, w = picture.shape[:2]
                side = int(min(h, w) * rng.uniform(0.45, 0.8))
                top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                crop = PILImage.fromarray(picture[top : top + side, left : left + side]).resize((160, 160))
                name = f"{patient}-{i}.png"
                crop.save(root / name)
                rows.append((name, f"CASE-{patient}-{i}", patient, f"{label} report", label))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
        writer.writerows(rows)
    return manifest
