"""Loaders: folder per class, folder + manifest (patients, filters, splits), MedMNIST npz; de-duplication."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.evaluation.datasets import (
    DatasetError,
    ManifestSpec,
    drop_exact_duplicates,
    drop_rare_classes,
    load_dataset,
    load_folder_dataset,
    load_manifest_dataset,
    load_npz_dataset,
    normalise_split,
)
from tests.indexer.evaluation.conftest import SHARED_DATASETS, make_npz, write_png


def test_folder_per_class(class_folders: Path) -> None:
    dataset = load_folder_dataset(class_folders)
    assert dataset.class_names == ["dark", "light"]
    assert dataset.class_counts() == {"dark": 3, "light": 3}
    assert all(not uri.startswith(".hidden") for uri in dataset.uris)
    pixels = dataset.image(0)
    assert pixels.dtype == np.float32 and pixels.shape == (16, 16, 3)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert dataset.patients is None and dataset.splits is None


def test_folder_without_images_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        load_folder_dataset(tmp_path / "empty")


def test_manifest_with_patients_filters_and_ignored_labels(manifest_dataset: tuple[Path, Path]) -> None:
    root, manifest = manifest_dataset
    spec = ManifestSpec(
        path_column="filename",
        label_column="finding",
        patient_column="patientid",
        include=(("modality", "X-ray"),),
        ignore_labels=("todo",),
    )
    dataset = load_manifest_dataset(root, manifest, spec)
    assert len(dataset) == 12  # CT row filtered, todo row ignored, missing file skipped
    assert dataset.class_names == ["normal", "pneumonia"]
    assert dataset.patients is not None and sorted(set(dataset.patients)) == [f"P{i}" for i in range(6)]


def test_manifest_unknown_column_names_the_columns(manifest_dataset: tuple[Path, Path]) -> None:
    root, manifest = manifest_dataset
    with pytest.raises(DatasetError, match="finding"):
        load_manifest_dataset(root, manifest, ManifestSpec(path_column="filename", label_column="diagnosis"))


def test_manifest_split_column_and_hash_column(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_png(root / "a.png", 30, seed=1)
    write_png(root / "b.png", 220, seed=2)
    shutil.copyfile(root / "a.png", root / "a_copy.png")
    (root / "labels.csv").write_text(
        "path,label,split,md5\na.png,x,Training,h1\nb.png,y,Testing,h2\na_copy.png,x,Testing,h1\n"
    )
    spec = ManifestSpec(split_column="split", hash_column="md5")
    dataset = load_manifest_dataset(root, root / "labels.csv", spec)
    assert dataset.splits == ["train", "test", "test"]
    assert dataset.content_keys == ["h1", "h2", "h1"]
    unique = drop_exact_duplicates(dataset)
    # The train copy is kept, the test copy of the same bytes is dropped.
    assert unique.uris == ["a.png", "b.png"] and unique.splits == ["train", "test"]


def test_normalise_split_aliases() -> None:
    assert [normalise_split(v) for v in ("Training", "TEST", "validation", "val")] == [
        "train",
        "test",
        "val",
        "val",
    ]
    with pytest.raises(DatasetError):
        normalise_split("holdout")


def test_npz_grey_and_rgb(tmp_path: Path) -> None:
    grey = load_npz_dataset(make_npz(tmp_path / "g.npz", per_split={"train": 4, "test": 2}))
    assert len(grey) == 6 and grey.splits == ["train"] * 4 + ["test"] * 2
    assert grey.image(0).shape == (28, 28, 3) and grey.image(0).dtype == np.float32
    assert np.allclose(grey.image(0)[..., 0], grey.image(0)[..., 2])
    rgb = load_npz_dataset(
        make_npz(tmp_path / "c.npz", per_split={"train": 2, "val": 2, "test": 2}, grey=False)
    )
    assert rgb.image(5).shape == (28, 28, 3) and rgb.class_names == ["0", "1"]
    assert load_dataset(tmp_path / "c.npz").name == "c"


def test_npz_without_medmnist_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(DatasetError, match="train_images"):
        load_npz_dataset(tmp_path / "x.npz")


def test_drop_rare_classes_reindexes(class_folders: Path) -> None:
    write_png(class_folders / "rare" / "r.png", 120, seed=50)
    dataset = load_folder_dataset(class_folders)
    kept = drop_rare_classes(dataset, 2)
    assert kept.class_names == ["dark", "light"] and len(kept) == 6
    assert set(kept.labels.tolist()) == {0, 1}


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="../shared/datasets is absent")
def test_real_medmnist_and_brain_manifest_load() -> None:
    retina = load_npz_dataset(SHARED_DATASETS / "medmnist" / "retinamnist.npz")
    assert len(retina) == 1600 and retina.splits is not None and retina.splits.count("test") == 400
    brain_root = SHARED_DATASETS / "brain-tumor-mri"
    spec = ManifestSpec(split_column="split", hash_column="md5")
    brain = drop_exact_duplicates(load_manifest_dataset(brain_root, brain_root / "labels.csv", spec))
    assert len(brain) == 6593  # the README's unique count
    assert len(set(brain.content_keys)) == len(brain)
