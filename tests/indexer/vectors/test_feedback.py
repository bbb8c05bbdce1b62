"""Rocchio's update and the refined list's order."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.vectors.feedback import FeedbackWeights, pin_positives, rocchio


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


def test_rocchio_moves_towards_positives_and_away_from_negatives() -> None:
    q = _unit([1, 1, 0])
    pos = np.stack([_unit([1, 0, 0]), _unit([1, 0, 0.2])])
    neg = _unit([0, 1, 0])[None, :]
    refined = rocchio(q, pos, neg, FeedbackWeights(1.0, 1.0, 0.5))
    assert np.isclose(np.linalg.norm(refined), 1.0, atol=1e-6)
    assert refined @ pos[0] > q @ pos[0]
    assert refined @ neg[0] < q @ neg[0]
    # by hand: a q + b mean(P) - c mean(N), renormalised
    by_hand = q + pos.mean(0) - 0.5 * neg[0]
    np.testing.assert_allclose(refined, by_hand / np.linalg.norm(by_hand), atol=1e-6)


def test_rocchio_without_marks_is_the_query_and_a_cancelled_update_keeps_it() -> None:
    q = _unit([0.3, 0.4, 0.5])
    np.testing.assert_allclose(rocchio(q, None, np.zeros((0, 3), np.float32)), q)
    cancelled = rocchio(q, None, q[None, :], FeedbackWeights(1.0, 0.0, 1.0))
    np.testing.assert_allclose(cancelled, q)


def test_weights_parse_and_refuse_nonsense() -> None:
    assert FeedbackWeights.parse("1, 0.75,0.15") == FeedbackWeights(1.0, 0.75, 0.15)
    with pytest.raises(ValueError, match="alpha,beta,gamma"):
        FeedbackWeights.parse("1,2")
    with pytest.raises(ValueError, match=">= 0"):
        FeedbackWeights(1.0, -1.0, 0.0)


def test_pin_positives_first_negatives_dropped_at_most_k() -> None:
    ranked = [5, 9, 1, 7, 3, 8]
    assert pin_positives(ranked, positives={3, 1}, negatives={9}, k=4) == [1, 3, 5, 7]
    # a positive the ranking does not hold (filtered out) is not brought back
    assert pin_positives(ranked, positives={42}, negatives=set(), k=3) == [5, 9, 1]
