"""The protocol: grouped splits never leak a patient; retrieval never returns a query's patient or duplicate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.evaluation.datasets import LabeledDataset, ManifestSpec, load_manifest_dataset
from indexer.evaluation.protocol import (
    Split,
    banned_neighbours,
    evaluate_vectors,
    grouped_split,
    make_split,
    retrieve,
    score_retrieval,
)


@pytest.mark.parametrize("seed", range(5))
def test_grouped_split_never_leaks_a_patient(seed: int) -> None:
    rng = np.random.default_rng(seed)
    patients = [f"P{p}" for p in rng.integers(0, 40, size=300)]
    train, val, test = grouped_split(patients, seed=seed, test_fraction=0.2, val_fraction=0.1)
    parts = [{patients[i] for i in part} for part in (train, val, test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(300))
    assert 0.15 < len(test) / 300 < 0.35


def test_grouped_split_is_reproducible() -> None:
    patients = [f"P{i // 3}" for i in range(60)]
    first = grouped_split(patients, seed=3)
    second = grouped_split(patients, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_make_split_uses_patients_from_a_manifest(manifest_dataset: tuple[Path, Path]) -> None:
    root, manifest = manifest_dataset
    spec = ManifestSpec(path_column="filename", label_column="finding", patient_column="patientid")
    dataset = load_manifest_dataset(root, manifest, spec)
    split = make_split(dataset, seed=1)
    assert dataset.patients is not None
    train_patients = {dataset.patients[i] for i in split.train}
    assert not train_patients & {dataset.patients[i] for i in split.test}
    assert "patient-grouped" in split.how


def _dataset(labels: list[int], patients: list[str] | None, keys: list[str]) -> LabeledDataset:
    return LabeledDataset(
        name="synthetic",
        labels=np.array(labels, dtype=np.int64),
        class_names=["a", "b"],
        content_keys=keys,
        uris=[str(i) for i in range(len(labels))],
        patients=patients,
    )


def test_retrieve_drops_banned_and_keeps_k() -> None:
    database = np.eye(4, dtype=np.float32)
    query = np.array([[1.0, 0.5, 0.1, 0.0]], dtype=np.float32)
    plain = retrieve(database, query, 2)
    assert plain.positions.tolist() == [[0, 1]]
    banned = retrieve(database, query, 2, banned=[{0}])
    assert banned.positions.tolist() == [[1, 2]]
    short = retrieve(database, query, 4, banned=[{0, 1}])
    assert short.positions.tolist() == [[2, 3, -1, -1]]


def test_query_never_retrieves_its_patient_or_a_duplicate() -> None:
    # Items 0-3 database, 4-5 queries. Query 4 is patient P1 (same as db item 1, its nearest);
    # query 5 has no patient match but is byte-identical (key "k0") to db item 0.
    vectors = np.array([[1, 0], [0.8, 0.6], [0, 1], [0.6, 0.8], [0.8, 0.6], [1, 0]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dataset = _dataset(
        labels=[0, 1, 1, 0, 1, 0],
        patients=["P0", "P1", "P2", "P3", "P1", "P5"],
        keys=["k0", "k1", "k2", "k3", "k4", "k0"],
    )
    split = Split(train=np.arange(4), test=np.array([4, 5]), val=np.zeros(0, np.int64), how="test")
    assert banned_neighbours(dataset, split) == [{1}, {0}]
    result = evaluate_vectors(dataset, vectors, split, k=3)
    assert result.info["excluded_pairs"] == 2
    assert result.info["query_images"] == 2 and result.info["database_images"] == 4


def test_score_retrieval_plain_names_and_per_class() -> None:
    query_labels = np.array([0, 1])
    neighbor_labels = np.array([[0] * 10, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    sims = np.linspace(0.9, 0.5, 10)[None, :].repeat(2, axis=0).astype(np.float32)
    result = score_retrieval(query_labels, neighbor_labels, sims, ["a", "b"], k=10)
    for name in ("precision@1", "precision@5", "precision@10", "map@5", "map@10", "acc@1", "mmv@10"):
        assert name in result.metrics
    assert result.metrics["precision@1"] == pytest.approx(0.5)
    assert result.metrics["precision@10"] == pytest.approx((1.0 + 0.9) / 2)
    assert result.metrics["knn_vote_accuracy"] == 1.0
    assert result.confusion.tolist() == [[1, 0], [0, 1]]
    assert [row["queries"] for row in result.per_class] == [1, 1]
