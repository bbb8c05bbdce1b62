"""Oracle relevance feedback: rounds raise precision where the plain search mixes classes."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.evaluation.datasets import DatasetError, LabeledDataset
from indexer.evaluation.feedback import _Query, evaluate_feedback, feedback_markdown, oracle_rounds
from indexer.evaluation.protocol import Split
from indexer.vectors.feedback import FeedbackWeights


def _mixed(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[_Query]]:
    """Two classes that differ along one axis only, hidden under a shared nuisance direction.

    The queries lean on the nuisance axis, so the plain search mixes the classes; the class axis is
    what the marked positives and negatives share.
    """
    rng = np.random.default_rng(seed)
    n, dim = 200, 16
    labels = np.arange(n) % 2
    base = rng.normal(0, 1.0, (n, dim)).astype(np.float32)
    base[:, 0] += np.where(labels == 0, 1.5, -1.5)
    database = base / np.linalg.norm(base, axis=1, keepdims=True)
    queries = []
    for i in range(20):
        label = i % 2
        v = rng.normal(0, 1.0, dim).astype(np.float32)
        v[0] = 0.6 if label == 0 else -0.6
        queries.append(_Query((v / np.linalg.norm(v)).astype(np.float32), label, set()))
    return database, labels.astype(np.int64), queries


def test_a_round_of_oracle_marks_raises_precision_and_drops_negatives() -> None:
    database, labels, queries = _mixed()
    report = oracle_rounds(database, labels, queries, rounds=2, k=10, weights=FeedbackWeights(1, 1, 0.5))
    shown = report["shown"]
    assert shown[0]["round"] == 0 and shown[0]["marked"] == 0
    assert shown[1]["precision@10"] > shown[0]["precision@10"] + 0.1
    # more than pinning the marked positives does: the same marks with the query left as it was
    control = oracle_rounds(database, labels, queries, rounds=2, k=10, weights=FeedbackWeights(1, 0, 0))
    assert shown[1]["precision@10"] > control["shown"][1]["precision@10"] + 0.05
    assert shown[2]["precision@10"] >= shown[1]["precision@10"]
    assert shown[2]["map@10"] > shown[0]["map@10"]
    # the residual list (never-shown images) is better than the plain search's next images
    last = report["residual"][-1]
    assert last["refined"]["precision@10"] > last["no_feedback"]["precision@10"]
    assert "| 2 |" in feedback_markdown(report)


def test_zero_weights_on_marks_change_nothing_but_the_pinning() -> None:
    database, labels, queries = _mixed(1)
    report = oracle_rounds(database, labels, queries, rounds=1, k=10, weights=FeedbackWeights(1, 0, 0))
    # the query is unchanged: the list is the plain one with positives first, negatives gone
    assert report["residual"][0]["refined"] == report["residual"][0]["no_feedback"]


def test_evaluate_feedback_tunes_on_val_and_refuses_zero_rounds() -> None:
    database, labels, _ = _mixed(2)
    dataset = LabeledDataset(
        name="toy",
        labels=labels,
        class_names=["a", "b"],
        content_keys=[str(i) for i in range(len(labels))],
        uris=[f"toy:{i}" for i in range(len(labels))],
    )
    split = Split(
        train=np.arange(0, 160, dtype=np.int64),
        test=np.arange(160, 180, dtype=np.int64),
        val=np.arange(180, 200, dtype=np.int64),
        how="toy",
    )
    report = evaluate_feedback(dataset, database, split, rounds=2, k=5)
    assert report["queries"] == 20 and len(report["shown"]) == 3
    assert len(report["pin_only"]) == 3
    assert report["val_grid"]["rounds"] == 2 and len(report["val_grid"]["rows"]) > 3
    with pytest.raises(DatasetError, match="at least 1"):
        evaluate_feedback(dataset, database, split, rounds=0)
