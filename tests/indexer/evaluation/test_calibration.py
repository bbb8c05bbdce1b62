"""The tempered kNN vote and its fit on calibration queries."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.evaluation import metrics
from indexer.prediction import calibration


def test_tempered_vote_by_hand() -> None:
    labels = np.array([[0, 1, -1]])
    sims = np.array([[0.9, 0.8, np.nan]])
    # weights exp(0) = 1 and exp(-0.1 / 0.1) = e^-1
    p = calibration.tempered_vote(labels, sims, 2, 3, temperature=0.1)
    assert p[0].tolist() == pytest.approx([1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))])
    # A very high temperature gives plain counts; epsilon mixes in the uniform share.
    flat = calibration.tempered_vote(labels, sims, 2, 3, temperature=1e6, epsilon=0.2)
    assert flat[0].tolist() == pytest.approx([0.5, 0.5])
    smoothed = calibration.tempered_vote(
        np.array([[1, 1]]), np.array([[0.5, 0.4]]), 2, 2, temperature=0.1, epsilon=0.2
    )
    assert smoothed[0].tolist() == pytest.approx([0.1, 0.9])
    # No neighbour at all: uniform.
    assert (
        calibration.tempered_vote(np.array([[-1]]), np.array([[np.nan]]), 4, 1, temperature=0.1)[0].tolist()
        == [0.25] * 4
    )


def test_fit_lowers_nll_and_ece_on_overconfident_votes() -> None:
    # Neighbours all agree, but the vote is right only 70 % of the time: the raw vote says 1.0.
    rng = np.random.default_rng(0)
    n, k = 400, 5
    truth = rng.integers(0, 2, n)
    agreed = np.where(rng.random(n) < 0.7, truth, 1 - truth)
    labels = np.repeat(agreed[:, None], k, axis=1)
    sims = np.sort(rng.uniform(0.5, 0.9, (n, k)), axis=1)[:, ::-1]
    fitted = calibration.fit_vote_calibration(truth[:200], labels[:200], sims[:200], 2, k)
    assert fitted.epsilon > 0
    raw = calibration.product_vote(labels[200:], sims[200:], 2, k)
    tuned = calibration.tempered_vote(
        labels[200:], sims[200:], 2, k, temperature=fitted.temperature, epsilon=fitted.epsilon
    )
    assert (
        metrics.expected_calibration_error(truth[200:], tuned)
        < metrics.expected_calibration_error(truth[200:], raw) - 0.2
    )
    assert calibration.negative_log_likelihood(truth[200:], tuned) < calibration.negative_log_likelihood(
        truth[200:], raw
    )
