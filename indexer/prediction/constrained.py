"""The vote's calibration under an accuracy constraint, class-balanced scoring, balanced accuracy and per-class recall.

Minimising ECE + NLL alone can pick a (T, eps) that collapses the vote onto the nearest neighbour
(T = 0.01 on the COVID-19 collection: held-out accuracy 0.805 -> 0.735, one constant confidence). Here a
(T, eps) is eligible only when its accuracy AND balanced accuracy on the fit queries are within
`tolerance` of the uncalibrated vote's; the uncalibrated weights (T = None, max(cosine, 0)) with a
uniform share eps are candidates too, so the constraint can always be met. Among the eligible, the lowest
ECE + 0.1 * NLL wins, NLL weighted so that every class counts equally (``balanced=True``): a majority
class cannot buy calibration with the minority classes' likelihood.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.evaluation.metrics import expected_calibration_error
from indexer.prediction.calibration import EPSILONS, TEMPERATURES
from indexer.prediction.vote import vote_probabilities

FloatArray = npt.NDArray[np.float64]

# How much fit-split accuracy (and balanced accuracy) calibration may cost, in absolute points.
ACCURACY_TOLERANCE = 0.01

# The cross-fitted ECE gain a calibration must show to replace the uncalibrated vote. The ECE of a few
# hundred queries moves by ~0.01-0.02 from one patient split to another: on overlapping synthetic classes
# cross-fitted gains of 0.006-0.013 came with held-out ECE 0.004-0.010 worse, i.e. noise.
MIN_ECE_GAIN = 0.015


def per_class_recall(true: npt.ArrayLike, predicted: npt.ArrayLike, n_classes: int) -> FloatArray:
    """Recall of each class (NaN for a class with no true example)."""
    truth = np.asarray(true, dtype=np.int64)
    guess = np.asarray(predicted, dtype=np.int64)
    support = np.bincount(truth, minlength=n_classes).astype(np.float64)
    hits = np.bincount(truth[guess == truth], minlength=n_classes).astype(np.float64)
    recall: FloatArray = np.divide(hits, support, out=np.full(n_classes, np.nan), where=support > 0)
    return recall


def balanced_accuracy(true: npt.ArrayLike, predicted: npt.ArrayLike, n_classes: int) -> float:
    """Mean recall over the classes that occur among the true labels."""
    recall = per_class_recall(true, predicted, n_classes)
    present = np.isfinite(recall)
    return float(recall[present].mean()) if present.any() else 0.0


def class_balanced_weights(true: npt.ArrayLike, n_classes: int) -> FloatArray:
    """Per-example weights (mean 1) that give every present class the same total weight."""
    truth = np.asarray(true, dtype=np.int64)
    counts = np.bincount(truth, minlength=n_classes).astype(np.float64)
    present = int((counts > 0).sum())
    weights: FloatArray = len(truth) / (present * counts[truth])
    return weights


def weighted_nll(true: npt.ArrayLike, probabilities: FloatArray, weights: FloatArray | None = None) -> float:
    """Mean -log p(true class) (floored at 1e-12), weighted per example when `weights` is given."""
    truth = np.asarray(true, dtype=np.int64)
    losses = -np.log(np.clip(probabilities[np.arange(len(truth)), truth], 1e-12, None))
    return float(np.average(losses, weights=weights))


def scores(true: npt.ArrayLike, probabilities: FloatArray, n_classes: int) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall, ECE and NLL of one set of probabilities."""
    truth = np.asarray(true, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    recall = per_class_recall(truth, predicted, n_classes)
    return {
        "accuracy": float((predicted == truth).mean()),
        "balanced_accuracy": balanced_accuracy(truth, predicted, n_classes),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "ece": expected_calibration_error(truth, probabilities),
        "nll": weighted_nll(truth, probabilities),
    }


@dataclass(frozen=True)
class ConstrainedVoteFit:
    """The chosen (T, eps) (T None: the uncalibrated weights), the fit-split numbers and what was rejected."""

    temperature: float | None
    epsilon: float
    tolerance: float
    class_weighting: str
    fit_accuracy_before: float
    fit_accuracy: float
    fit_balanced_accuracy_before: float
    fit_balanced_accuracy: float
    fit_ece_before: float
    fit_ece: float
    rejected_for_accuracy: int
    candidates: int
    crossfit_ece_before: float | None = None
    crossfit_ece_after: float | None = None
    guard: str = ""

    def card(self) -> dict[str, Any]:
        """The fit as the calibration card records it."""
        return asdict(self)


def fit_vote_constrained(
    true: npt.NDArray[np.int64],
    shares: FloatArray,
    sims: FloatArray,
    n_classes: int,
    k: int,
    *,
    tolerance: float = ACCURACY_TOLERANCE,
    balanced: bool = True,
) -> ConstrainedVoteFit:
    """The best-scoring eligible (T, eps) on these fit queries (see the module doc).

    `shares` is (Q, k, C) over the vote's columns, the first `n_classes` the fitted classes, exactly as
    the served vote sees its neighbours (`indexer.prediction.vote`).
    """
    weights = class_balanced_weights(true, n_classes) if balanced else None

    def probabilities(temperature: float | None, epsilon: float) -> FloatArray:
        return vote_probabilities(shares, sims, k, temperature=temperature, epsilon=epsilon, fixed=n_classes)

    base = probabilities(None, 0.0)
    base_accuracy = float((base.argmax(axis=1) == true).mean())
    base_balanced = balanced_accuracy(true, base.argmax(axis=1), n_classes)
    grid: list[tuple[float | None, float]] = [(None, e) for e in EPSILONS]
    grid += [(t, e) for t in TEMPERATURES for e in EPSILONS]
    best: tuple[float, float | None, float, float, float, float] | None = None
    rejected = 0
    for temperature, epsilon in grid:
        p = probabilities(temperature, epsilon)
        predicted = p.argmax(axis=1)
        accuracy = float((predicted == true).mean())
        balanced_acc = balanced_accuracy(true, predicted, n_classes)
        if accuracy < base_accuracy - tolerance or balanced_acc < base_balanced - tolerance:
            rejected += 1
            continue
        ece = expected_calibration_error(true, p)
        loss = ece + 0.1 * weighted_nll(true, p, weights)
        if best is None or loss < best[0] - 1e-12:
            best = (loss, temperature, epsilon, accuracy, balanced_acc, ece)
    assert best is not None  # (None, 0.0) always meets the constraint
    _, temperature, epsilon, accuracy, balanced_acc, ece = best
    return ConstrainedVoteFit(
        temperature=temperature,
        epsilon=epsilon,
        tolerance=tolerance,
        class_weighting="balanced" if balanced else "none",
        fit_accuracy_before=base_accuracy,
        fit_accuracy=accuracy,
        fit_balanced_accuracy_before=base_balanced,
        fit_balanced_accuracy=balanced_acc,
        fit_ece_before=expected_calibration_error(true, base),
        fit_ece=ece,
        rejected_for_accuracy=rejected,
        candidates=len(grid),
    )


def fit_vote_guarded(
    true: npt.NDArray[np.int64],
    shares: FloatArray,
    sims: FloatArray,
    n_classes: int,
    k: int,
    halves: npt.NDArray[np.bool_],
    *,
    tolerance: float = ACCURACY_TOLERANCE,
    balanced: bool = True,
) -> ConstrainedVoteFit:
    """`fit_vote_constrained` on all these queries, kept only if it lowers the cross-fitted ECE.

    `halves` splits the fit queries by patient: the calibration fitted on each half is scored on the
    other; unless that ECE is below the uncalibrated vote's by MIN_ECE_GAIN, the uncalibrated vote
    (T None, eps 0) is kept. Without the guard a well-calibrated plain vote was "calibrated" into a worse held-out ECE.
    """
    fitted = fit_vote_constrained(true, shares, sims, n_classes, k, tolerance=tolerance, balanced=balanced)
    if halves.all() or not halves.any():
        return replace(fitted, guard="not checked: too few patients to cross-fit")
    before, after, weights = [], [], []
    for part in (halves, ~halves):
        rest = ~part
        half = fit_vote_constrained(
            true[part], shares[part], sims[part], n_classes, k, tolerance=tolerance, balanced=balanced
        )
        p = vote_probabilities(
            shares[rest], sims[rest], k, temperature=half.temperature, epsilon=half.epsilon, fixed=n_classes
        )
        base = vote_probabilities(shares[rest], sims[rest], k, fixed=n_classes)
        after.append(expected_calibration_error(true[rest], p))
        before.append(expected_calibration_error(true[rest], base))
        weights.append(int(rest.sum()))
    ece_before, ece_after = (
        float(np.average(before, weights=weights)),
        float(np.average(after, weights=weights)),
    )
    if ece_after < ece_before - MIN_ECE_GAIN:
        return replace(fitted, crossfit_ece_before=ece_before, crossfit_ece_after=ece_after, guard="kept")
    return replace(
        fitted,
        temperature=None,
        epsilon=0.0,
        fit_accuracy=fitted.fit_accuracy_before,
        fit_balanced_accuracy=fitted.fit_balanced_accuracy_before,
        fit_ece=fitted.fit_ece_before,
        crossfit_ece_before=ece_before,
        crossfit_ece_after=ece_after,
        guard=f"rejected: the cross-fitted ECE did not drop by {MIN_ECE_GAIN:g}; the uncalibrated vote is served",
    )
