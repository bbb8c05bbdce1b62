"""indexer.prediction.heads: the linear head, its patient-grouped split and versions, and the kNN vote's calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.errors import HeadError
from indexer.prediction.heads import LinearHead, train_head
from indexer.prediction.labeled import grouped_split, load_labeled_embeddings
from indexer.prediction.versions import latest_head, latest_vote_calibration, train_predictors
from indexer.prediction.vote_fit import fit_vote
from tests.prediction_archive import CLASSES, build_labeled_archive


@pytest.fixture(scope="module")
def labeled_archive(tmp_path_factory: pytest.TempPathFactory, real_encoder):  # type: ignore[no-untyped-def]
    """Three classes of real medical pictures, 6 patients each, 2 images per patient, real encoder."""
    from indexer.archive import Archive
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest
    from indexer.settings import IndexerSettings

    source = tmp_path_factory.mktemp("labeled")
    manifest = build_labeled_archive(source)
    archive = Archive.open(IndexerSettings(data_dir=tmp_path_factory.mktemp("data")), encoder=real_encoder)
    report = ingest_path(archive, source, load_manifest(manifest, ManifestColumns()), progress=False)
    assert report.indexed == 36, report
    return archive


def test_grouped_split_keeps_each_patient_on_one_side_and_holds_out_every_class() -> None:
    groups = [f"p{i // 3}" for i in range(60)]  # 20 patients, 3 images each
    classes = np.array([(i // 3) % 4 for i in range(60)])
    held = grouped_split(groups, classes, 0.25, seed=1)
    for patient in set(groups):
        sides = {bool(h) for g, h in zip(groups, held, strict=True) if g == patient}
        assert len(sides) == 1, patient
    assert set(classes[held]) == {0, 1, 2, 3} and set(classes[~held]) == {0, 1, 2, 3}
    assert 0.15 < held.mean() < 0.4
    # deterministic for a seed, different for another
    assert np.array_equal(held, grouped_split(groups, classes, 0.25, seed=1))
    assert not np.array_equal(held, grouped_split(groups, classes, 0.25, seed=2))


def test_train_predictors_saves_new_versions_and_the_head_beats_chance(
    labeled_archive, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    name = labeled_archive.encoder.name
    first = train_predictors(labeled_archive.catalog, name, tmp_path)
    second = train_predictors(labeled_archive.catalog, name, tmp_path, seed=1)
    assert first.directory != second.directory and first.directory.is_dir() and second.directory.is_dir()
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == sorted(
        [first.directory.name, second.directory.name]
    )
    assert {p.name for p in first.directory.iterdir()} == {"head.npz", "card.json", "vote_calibration.json"}
    assert first.head is not None and second.head is not None
    assert first.directory.name == first.head.version == first.vote.version

    head = latest_head(tmp_path, name)
    assert head is not None and head.version == second.head.version
    assert latest_head(tmp_path, "another-encoder") is None
    vote = latest_vote_calibration(tmp_path, name)
    assert vote is not None and vote.version == second.vote.version

    card = first.head.card
    assert sorted(first.head.labels) == sorted(CLASSES)
    assert card["n_train"] + card["n_val"] == 36 and card["n_val"] >= 3
    assert card["val_accuracy"] > card["chance_accuracy"] + 0.3
    assert card["skipped_multi_label_images"] == 0 and card["left_out_classes"] == {}

    # saved and loaded heads give the same probabilities, rows summing to one
    loaded = LinearHead.load(first.directory)
    data = load_labeled_embeddings(labeled_archive.catalog, name)
    probabilities = loaded.predict_proba(data.vectors)
    assert probabilities.shape == (36, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(probabilities, first.head.predict_proba(data.vectors), atol=1e-9)
    # the head predicts the stored images' own classes
    assert (probabilities.argmax(axis=1) == data.classes).mean() > 0.9


def test_validation_patients_never_appear_in_training(labeled_archive) -> None:  # type: ignore[no-untyped-def]
    data = load_labeled_embeddings(labeled_archive.catalog, labeled_archive.encoder.name)
    held = grouped_split(data.groups, data.classes, 0.2, seed=0)
    train_patients = {g for g, h in zip(data.groups, held, strict=True) if not h}
    val_patients = {g for g, h in zip(data.groups, held, strict=True) if h}
    assert val_patients and train_patients and not train_patients & val_patients
    head = train_head(labeled_archive.catalog, labeled_archive.encoder.name, seed=0, data=data)
    assert head.card["n_val_patients"] == len(val_patients)
    assert head.card["n_val"] == int(held.sum())


def test_vote_calibration_gives_an_ood_threshold_below_in_archive_similarities(labeled_archive) -> None:  # type: ignore[no-untyped-def]
    vote = fit_vote(labeled_archive.catalog, labeled_archive.encoder.name)
    assert 0.0 < vote.ood_similarity < vote.card["top1_similarity_median"] <= 1.0
    assert vote.card["holdout_ece_after"] <= vote.card["holdout_ece_before"] + 0.05
    assert vote.temperature > 0 and 0.0 <= vote.epsilon < 1.0


def test_multi_label_and_single_image_classes_are_left_out(indexed_archive) -> None:  # type: ignore[no-untyped-def]
    # the small archive: seven patients, one image each; one case is "lesion;follow-up"
    data = load_labeled_embeddings(indexed_archive.catalog, indexed_archive.encoder.name)
    assert data.multi_label_images == 1
    assert data.labels == [] and "lesion" in data.left_out_classes
    with pytest.raises(HeadError, match="at least two diagnosis labels"):
        train_head(indexed_archive.catalog, indexed_archive.encoder.name, data=data)
    vote = fit_vote(indexed_archive.catalog, indexed_archive.encoder.name, data=data)
    assert "note" in vote.card and 0.0 < vote.ood_similarity < 1.0
