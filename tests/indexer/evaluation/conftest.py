"""Tiny labeled datasets written on the fly: class folders, a manifest with patients, a MedMNIST npz."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

SHARED_DATASETS = Path(__file__).resolve().parents[3].parent / "shared" / "datasets"


def write_png(path: Path, value: int, size: int = 16, seed: int = 0) -> None:
    """A grey PNG around `value` with a little seeded noise (distinct bytes per seed)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(value + rng.integers(-8, 9, (size, size)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(pixels).save(path)


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    root = tmp_path / "folders"
    for i in range(3):
        write_png(root / "dark" / f"d{i}.png", 40, seed=i)
        write_png(root / "light" / "nested" / f"l{i}.png", 210, seed=10 + i)
    (root / "light" / "notes.txt").write_text("not an image")
    write_png(root / ".hidden" / "x.png", 100)
    return root


@pytest.fixture
def manifest_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """12 images of 6 patients (2 each), two classes, a modality column and one unlabeled row."""
    root = tmp_path / "manifest-data"
    rows = []
    for patient in range(6):
        label = "pneumonia" if patient % 2 else "normal"
        for image in range(2):
            name = f"p{patient}_{image}.png"
            write_png(root / "images" / name, 60 + 120 * (patient % 2), seed=patient * 10 + image)
            rows.append([name, f"P{patient}", label, "X-ray"])
    write_png(root / "images" / "ct.png", 90, seed=99)
    rows.append(["ct.png", "P9", "normal", "CT"])
    write_png(root / "images" / "todo.png", 90, seed=98)
    rows.append(["todo.png", "P8", "todo", "X-ray"])
    rows.append(["missing.png", "P7", "normal", "X-ray"])
    manifest = root / "meta.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "patientid", "finding", "modality"])
        writer.writerows(rows)
    return root / "images", manifest


def make_npz(path: Path, *, per_split: dict[str, int], grey: bool = True, size: int = 28) -> Path:
    """A MedMNIST-format npz with two classes: dark images (0) and light ones (1)."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split, n in per_split.items():
        labels = np.arange(n) % 2
        base = np.where(labels == 1, 200, 50)[:, None, None]
        shape = (n, size, size) if grey else (n, size, size, 3)
        noise = rng.integers(-30, 31, shape)
        images = np.clip(base.reshape((n,) + (1,) * (len(shape) - 1)) + noise, 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    return make_npz(tmp_path / "tinymnist.npz", per_split={"train": 20, "val": 6, "test": 8})
