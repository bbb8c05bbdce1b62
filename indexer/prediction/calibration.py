"""Calibrated kNN-vote probabilities: a similarity temperature and a smoothing weight fitted on a val split.

The uncalibrated vote gives each of the k neighbours the weight max(cosine, 0), so its shares are rarely
honest probabilities (ten neighbours of one class give 1.0). The calibrated vote weights neighbour i
by exp((s_i - s_1) / T) and mixes in a uniform share (both votes: `indexer.prediction.vote`, the one
implementation that fitting, evaluation and serving share):

    p_c = (1 - eps) * sum_{i: label_i = c} w_i / sum_i w_i + eps / C

T and eps are chosen on the calibration (val) queries by minimising the negative log-likelihood over a
fixed grid (no test query is used); the expected calibration error (ECE, 10 equal-width bins of the
top-label confidence) is then measured on the test queries before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.prediction.vote import one_hot_shares, vote_probabilities

FloatArray = npt.NDArray[np.float64]

TEMPERATURES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 3.0, 10.0)
EPSILONS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class VoteCalibration:
    """The fitted temperature and uniform share, and the val negative log-likelihood they reach."""

    temperature: float
    epsilon: float
    val_nll: float


def tempered_vote(
    neighbor_labels: npt.ArrayLike,
    neighbor_sims: npt.ArrayLike,
    n_classes: int,
    k: int,
    *,
    temperature: float | None,
    epsilon: float = 0.0,
) -> FloatArray:
    """(Q, C) probabilities of the tempered vote (None: similarity weights) of the first k single-label neighbours."""
    return vote_probabilities(
        one_hot_shares(neighbor_labels, n_classes), neighbor_sims, k, temperature=temperature, epsilon=epsilon
    )


def negative_log_likelihood(true: npt.ArrayLike, probabilities: FloatArray) -> float:
    """Mean -log p(true class), with probabilities floored at 1e-12."""
    truth = np.asarray(true, dtype=np.int64)
    picked = probabilities[np.arange(len(truth)), truth]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def fit_vote_calibration(
    true: npt.ArrayLike, neighbor_labels: npt.ArrayLike, neighbor_sims: npt.ArrayLike, n_classes: int, k: int
) -> VoteCalibration:
    """The (temperature, epsilon) of the grids with the lowest NLL on these (calibration) queries."""
    best = VoteCalibration(temperature=TEMPERATURES[-1], epsilon=EPSILONS[-1], val_nll=float("inf"))
    for temperature in TEMPERATURES:
        for epsilon in EPSILONS:
            probabilities = tempered_vote(
                neighbor_labels, neighbor_sims, n_classes, k, temperature=temperature, epsilon=epsilon
            )
            nll = negative_log_likelihood(true, probabilities)
            if nll < best.val_nll - 1e-12:
                best = VoteCalibration(temperature=temperature, epsilon=epsilon, val_nll=nll)
    return best


def product_vote(
    neighbor_labels: npt.ArrayLike, neighbor_sims: npt.ArrayLike, n_classes: int, k: int
) -> FloatArray:
    """The search API's uncalibrated vote (max(cosine, 0) weights), uniform where no neighbour is labeled."""
    return vote_probabilities(one_hot_shares(neighbor_labels, n_classes), neighbor_sims, k)
