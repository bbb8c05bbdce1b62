"""Retrieval and classification metrics as pure numpy functions over ranked neighbour labels.

Conventions: `query_labels` is (Q,) int; `neighbor_labels` is (Q, K) int, best neighbour first, with
-1 where fewer than K neighbours were found; `neighbor_sims` is (Q, K) float cosine similarities.
A neighbour is relevant when its label equals the query's label.

mAP@k follows Mahbod et al. (arXiv 2409.09430, their `metric.ap_k`): for one query,

    AP@k = (1 / H) * sum_{i <= k, rel_i} P@i,    P@i = (relevant among the first i) / i,

where H is the number of relevant neighbours among the first k (AP@k = 0 when H = 0); mAP@k is the
mean over queries. Dividing by H (not by min(k, R), R = relevant items in the database) means AP@k
rewards putting the relevant neighbours first, not finding many of them: precision@k says that.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from indexer.prediction.vote import one_hot_shares, vote_counts, vote_probabilities

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def relevance(query_labels: npt.ArrayLike, neighbor_labels: npt.ArrayLike) -> BoolArray:
    """(Q, K) True where the neighbour's label equals the query's (padding -1 is never relevant)."""
    queries = np.asarray(query_labels).reshape(-1, 1)
    neighbours = np.atleast_2d(np.asarray(neighbor_labels))
    return (neighbours == queries) & (neighbours >= 0)


def _check_k(relevant: BoolArray, k: int) -> BoolArray:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if relevant.shape[1] < k:
        raise ValueError(f"k={k} but only {relevant.shape[1]} neighbours per query were retrieved")
    return relevant[:, :k]


def precision_at_k(relevant: BoolArray, k: int) -> FloatArray:
    """Per query: relevant neighbours among the first k, divided by k (missing neighbours count as misses)."""
    top = _check_k(relevant, k)
    result: FloatArray = top.sum(axis=1) / float(k)
    return result


def average_precision_at_k(relevant: BoolArray, k: int) -> FloatArray:
    """Per query AP@k (see the module docstring): mean of P@i over the relevant ranks i <= k."""
    top = _check_k(relevant, k).astype(np.float64)
    hits = np.cumsum(top, axis=1)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    precision_at_hits = (hits / ranks) * top
    found = top.sum(axis=1)
    result: FloatArray = np.divide(
        precision_at_hits.sum(axis=1), found, out=np.zeros(len(top), dtype=np.float64), where=found > 0
    )
    return result


def hit_at_k(relevant: BoolArray, k: int) -> FloatArray:
    """Per query 1.0 when any of the first k neighbours is relevant (Mahbod's ACC@k; ACC@1 = top-1 correct)."""
    result: FloatArray = np.asarray(_check_k(relevant, k).any(axis=1), dtype=np.float64)
    return result


def vote_scores(
    neighbor_labels: npt.ArrayLike, neighbor_sims: npt.ArrayLike, n_classes: int, k: int, *, weighted: bool
) -> FloatArray:
    """(Q, C) vote shares of the first k neighbours, rows summing to 1 (0 where no neighbour).

    Weighted: the search API's uncalibrated vote (`indexer.prediction.vote`): each neighbour casts
    max(similarity, 0), plain counts when all of a query's similarities are <= 0. Unweighted: counts.
    """
    shares = one_hot_shares(neighbor_labels, n_classes)
    sims = np.nan_to_num(np.atleast_2d(np.asarray(neighbor_sims, dtype=np.float64)))
    if weighted:
        scores = vote_probabilities(shares, sims, k)
    else:
        scores = vote_counts(shares, sims, k).astype(np.float64)
        totals = scores.sum(axis=1, keepdims=True)
        scores = np.divide(scores, totals, out=np.zeros_like(scores), where=totals > 0)
    scores[shares[:, :k].sum(axis=(1, 2)) == 0] = 0.0
    result: FloatArray = scores
    return result


def majority_vote(
    neighbor_labels: npt.ArrayLike, neighbor_sims: npt.ArrayLike, n_classes: int, k: int
) -> IntArray:
    """Per query the most frequent label among the first k neighbours (mMV@k's prediction).

    Ties go to the tied label with the larger summed similarity, then to the smaller label index; this
    is stricter than Mahbod et al., who count a tie as correct when any tied label is the true one.
    Queries without neighbours get -1.
    """
    counts = vote_scores(neighbor_labels, neighbor_sims, n_classes, k, weighted=False)
    weights = vote_scores(neighbor_labels, neighbor_sims, n_classes, k, weighted=True)
    # Counts are multiples of 1/k; weights in [0, 1] only break exact ties in counts.
    combined = np.round(counts * k) * 2.0 + weights
    prediction: IntArray = np.argmax(combined, axis=1).astype(np.int64)
    prediction[counts.sum(axis=1) == 0] = -1
    return prediction


def confusion_matrix(true: npt.ArrayLike, predicted: npt.ArrayLike, n_classes: int) -> IntArray:
    """(C, C) counts, rows = true class, columns = predicted class; predictions of -1 are dropped."""
    truth = np.asarray(true, dtype=np.int64)
    guess = np.asarray(predicted, dtype=np.int64)
    keep = guess >= 0
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (truth[keep], guess[keep]), 1)
    return matrix


def per_class_prf(
    matrix: IntArray, support: npt.ArrayLike | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-class precision, recall and F1 from a confusion matrix (0 where undefined).

    `support` (true images per class) counts queries that got no prediction as misses in recall;
    without it the matrix's row sums are used.
    """
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = (
        np.asarray(support, dtype=np.float64)
        if support is not None
        else matrix.sum(axis=1).astype(np.float64)
    )
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_f1(true: npt.ArrayLike, predicted: npt.ArrayLike, n_classes: int) -> float:
    """Mean F1 over the classes that occur among the true labels (no prediction counts as a miss)."""
    matrix = confusion_matrix(true, predicted, n_classes)
    support = np.bincount(np.asarray(true, dtype=np.int64), minlength=n_classes)
    _, _, f1 = per_class_prf(matrix, support)
    present = support > 0
    return float(f1[present].mean()) if present.any() else 0.0


def _average_ranks(values: FloatArray) -> FloatArray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return ranks


def roc_auc(is_positive: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted half); NaN without both classes."""
    positive = np.asarray(is_positive, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(values)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_class_auc(true: npt.ArrayLike, scores: FloatArray) -> FloatArray:
    """One-vs-rest ROC AUC of each class's score column (NaN for a class absent or alone in `true`)."""
    truth = np.asarray(true, dtype=np.int64)
    return np.array([roc_auc(truth == c, scores[:, c]) for c in range(scores.shape[1])], dtype=np.float64)


def macro_auc(true: npt.ArrayLike, scores: FloatArray) -> float:
    """Mean one-vs-rest ROC AUC over the classes where it is defined (NaN when none is)."""
    aucs = per_class_auc(true, scores)
    defined = ~np.isnan(aucs)
    return float(aucs[defined].mean()) if defined.any() else float("nan")


def precision_recall_curve(
    is_positive: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """(precision, recall) at every distinct score threshold, highest threshold first."""
    positive = np.asarray(is_positive, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-values, kind="mergesort")
    sorted_values = values[order]
    hits = np.cumsum(positive[order])
    seen = np.arange(1, len(values) + 1)
    last_of_threshold = np.r_[np.flatnonzero(np.diff(sorted_values) != 0), len(values) - 1]
    tp = hits[last_of_threshold].astype(np.float64)
    precision = tp / seen[last_of_threshold]
    total = max(int(positive.sum()), 1)
    recall = tp / total
    return precision, recall


def ranking_average_precision(is_positive: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the precision-recall curve as a step sum (sklearn's average_precision_score)."""
    precision, recall = precision_recall_curve(is_positive, scores)
    if not np.asarray(is_positive, dtype=bool).any():
        return float("nan")
    steps = np.diff(np.r_[0.0, recall])
    return float((steps * precision).sum())


def expected_calibration_error(true: npt.ArrayLike, probabilities: FloatArray, bins: int = 10) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - mean confidence| * bin share."""
    truth = np.asarray(true, dtype=np.int64)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == truth).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)
