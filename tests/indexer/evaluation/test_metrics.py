"""The retrieval metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from indexer.evaluation import metrics

# Query label 1; neighbours ranked [1, 0, 1, 1, 0]: relevant at ranks 1, 3, 4.
QUERY = np.array([1])
NEIGHBOURS = np.array([[1, 0, 1, 1, 0]])


def test_precision_at_k_by_hand() -> None:
    relevant = metrics.relevance(QUERY, NEIGHBOURS)
    assert metrics.precision_at_k(relevant, 1)[0] == 1.0
    assert metrics.precision_at_k(relevant, 3)[0] == pytest.approx(2 / 3)
    assert metrics.precision_at_k(relevant, 5)[0] == pytest.approx(3 / 5)


def test_average_precision_at_k_is_mahbods_definition() -> None:
    relevant = metrics.relevance(QUERY, NEIGHBOURS)
    # P@1 = 1, P@3 = 2/3, P@4 = 3/4, averaged over the 3 hits: (1 + 2/3 + 3/4) / 3 = 0.80556
    assert metrics.average_precision_at_k(relevant, 5)[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # Mahbod et al.'s docstring example: map_k([1], [[1, 1, 0, 1, 0]], k=5) = 0.916...
    example = metrics.relevance(np.array([1]), np.array([[1, 1, 0, 1, 0]]))
    assert metrics.average_precision_at_k(example, 5)[0] == pytest.approx((1 + 1 + 3 / 4) / 3)
    # No hit at all: 0, and padding (-1) never counts.
    none = metrics.relevance(np.array([2]), np.array([[1, 0, -1]]))
    assert metrics.average_precision_at_k(none, 3)[0] == 0.0


def test_map_is_mean_over_queries() -> None:
    relevant = metrics.relevance(np.array([0, 1]), np.array([[0, 1], [0, 1]]))
    # query 0: hit at 1 -> AP 1; query 1: hit at 2 -> P@2 = 1/2 -> AP 0.5
    assert metrics.average_precision_at_k(relevant, 2).mean() == pytest.approx(0.75)


def test_hit_at_k_and_k_checks() -> None:
    relevant = metrics.relevance(np.array([1, 1]), np.array([[0, 1], [0, 0]]))
    assert metrics.hit_at_k(relevant, 1).tolist() == [0.0, 0.0]
    assert metrics.hit_at_k(relevant, 2).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError):
        metrics.precision_at_k(relevant, 3)
    with pytest.raises(ValueError):
        metrics.precision_at_k(relevant, 0)


def test_vote_scores_weighted_and_unweighted() -> None:
    labels = np.array([[0, 1, 1, -1]])
    sims = np.array([[0.9, 0.3, 0.2, np.nan]])
    counts = metrics.vote_scores(labels, np.nan_to_num(sims), 3, 4, weighted=False)
    assert counts[0].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    weighted = metrics.vote_scores(labels, np.nan_to_num(sims), 3, 4, weighted=True)
    assert weighted[0].tolist() == pytest.approx([0.9 / 1.4, 0.5 / 1.4, 0.0])
    # All similarities <= 0: falls back to counts, like the search API.
    negative = metrics.vote_scores(np.array([[0, 1, 1]]), np.array([[-0.1, -0.2, -0.3]]), 2, 3, weighted=True)
    assert negative[0].tolist() == pytest.approx([1 / 3, 2 / 3])


def test_majority_vote_breaks_ties_by_similarity() -> None:
    labels = np.array([[0, 1, 1, 0], [2, 2, 1, 0]])
    sims = np.array([[0.5, 0.9, 0.8, 0.4], [0.1, 0.1, 0.9, 0.9]])
    # Row 0: 2 votes each; class 1 has more similarity (1.7 vs 0.9). Row 1: class 2 has 2 votes.
    assert metrics.majority_vote(labels, sims, 3, 4).tolist() == [1, 2]
    assert metrics.majority_vote(labels, sims, 3, 1).tolist() == [0, 2]
    assert metrics.majority_vote(np.array([[-1, -1]]), np.zeros((1, 2)), 2, 2).tolist() == [-1]


def test_confusion_prf_and_macro_f1() -> None:
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, -1])
    matrix = metrics.confusion_matrix(true, pred, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    precision, recall, f1 = metrics.per_class_prf(matrix)
    assert precision.tolist() == pytest.approx([1.0, 2 / 3, 0.0])
    assert recall.tolist() == pytest.approx([0.5, 1.0, 0.0])
    # F1: class 0 = 2/3, class 1 = 0.8; class 2's only query got no prediction: a miss, F1 0.
    assert f1.tolist() == pytest.approx([2 / 3, 0.8, 0.0])
    assert metrics.macro_f1(true, pred, 3) == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)


def test_roc_auc_by_hand_with_ties() -> None:
    # positives score 0.9 and 0.4; negatives 0.4 and 0.1. Pairs: (0.9>0.4) 1, (0.9>0.1) 1,
    # (0.4=0.4) 0.5, (0.4>0.1) 1 -> 3.5 / 4
    assert metrics.roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))
    scores = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    aucs = metrics.per_class_auc([0, 1, 1], scores)
    assert aucs.tolist() == pytest.approx([1.0, 1.0])
    assert metrics.macro_auc([0, 1, 1], scores) == pytest.approx(1.0)


def test_precision_recall_curve_and_average_precision() -> None:
    precision, recall = metrics.precision_recall_curve([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert recall.tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0])
    # AP = 0.5 * 1 + 0.5 * 2/3
    assert metrics.ranking_average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 1 / 3)


def test_expected_calibration_error_by_hand() -> None:
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    true = np.array([0, 1, 0, 1])
    # bin (0.8, 0.9]: 2 items, conf 0.9, accuracy 0.5 -> 0.5 * 0.4; bin (0.5, 0.6]: 2 items,
    # conf 0.6, accuracy 1.0 -> 0.5 * 0.4. ECE = 0.4
    assert metrics.expected_calibration_error(true, probabilities, bins=10) == pytest.approx(0.4)
