"""A small real labeled archive for head and calibration tests: crops of real medical pictures, by patient."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from indexer.prediction.labeled import LabeledEmbeddings

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


def overlapping_classes(
    seed: int, patients: tuple[int, ...] = (80, 80, 80, 80), spread: float = 2.0, per_patient: int = 3
) -> LabeledEmbeddings:
    """Synthetic embeddings whose classes overlap: unit vectors around class centres, each patient its own
    offset from its class centre (`spread`), each image noise around its patient; `patients` per class."""
    rng = np.random.default_rng(seed)
    dim = 32
    centres = rng.normal(size=(len(patients), dim))
    vectors, groups, classes = [], [], []
    for c, n in enumerate(patients):
        for p in range(n):
            patient = centres[c] + spread * rng.normal(size=dim)
            for _ in range(per_patient):
                vectors.append(patient + 0.5 * rng.normal(size=dim))
                groups.append(f"P{c}-{p}")
                classes.append(c)
    v = np.asarray(vectors, dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    labels = [f"class-{c}" for c in range(len(patients))]
    return LabeledEmbeddings(
        ids=np.arange(len(v), dtype=np.int64),
        vectors=v,
        groups=groups,
        classes=np.asarray(classes, dtype=np.int64),
        labels=labels,
        multi_label_images=0,
        left_out_classes={},
        label_sets=[(labels[c],) for c in classes],
    )
