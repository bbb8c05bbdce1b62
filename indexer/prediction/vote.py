"""The one kNN vote: neighbours' labels and similarities -> class probabilities, for fitting, eval and serving.

Every neighbour is a row of label shares over a class list: a neighbour with labels {a, b} gives 1/2 to
each, an unlabeled one gives nothing and does not vote. Only the first k neighbours vote.

- Uncalibrated (``temperature=None``): neighbour i weighs max(s_i, 0); when every labeled neighbour's
  similarity is <= 0 the vote falls back to plain counts.
- Calibrated (tempered): neighbour i weighs exp((s_i - s_1) / T), s_1 the best labeled similarity, and a
  uniform share eps is mixed in over the query's class set:

      p_c = (1 - eps) * sum_i w_i share_ic / sum_i w_i + eps / C_q

  C_q counts the calibration's classes (the first ``fixed`` columns) and every other class that one of
  the query's voting neighbours carries. Classes outside that set get probability 0.

A query with no labeled neighbour gets the uniform distribution over its class set (fitting needs a
probability); the search API shows "no labeled neighbours" instead of such a vote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def one_hot_shares(neighbor_classes: npt.ArrayLike, n_classes: int) -> FloatArray:
    """(Q, k, C) shares of single-label neighbours given as class indices; -1 (no class) gives a zero row."""
    classes = np.atleast_2d(np.asarray(neighbor_classes, dtype=np.int64))
    shares = np.zeros((*classes.shape, n_classes), dtype=np.float64)
    valid = classes >= 0
    q, i = np.nonzero(valid)
    shares[q, i, classes[valid]] = 1.0
    return shares


def label_set_shares(
    neighbor_labels: Sequence[Sequence[Sequence[str]]], classes: Sequence[str]
) -> FloatArray:
    """(Q, k, C) shares of neighbours given as label lists over `classes` (a label's share: 1 / len(labels))."""
    column = {name: c for c, name in enumerate(classes)}
    depth = max((len(row) for row in neighbor_labels), default=0)
    shares = np.zeros((len(neighbor_labels), depth, len(classes)), dtype=np.float64)
    for q, row in enumerate(neighbor_labels):
        for i, labels in enumerate(row):
            distinct = sorted(set(labels))
            for label in distinct:
                shares[q, i, column[label]] += 1.0 / len(distinct)
    return shares


def vote_probabilities(
    shares: npt.ArrayLike,
    sims: npt.ArrayLike,
    k: int | None = None,
    *,
    temperature: float | None = None,
    epsilon: float = 0.0,
    fixed: int | None = None,
) -> FloatArray:
    """(Q, C) vote probabilities of the first k neighbours (see the module doc); rows sum to 1.

    `fixed`: how many leading columns are always in the class set (the calibration's classes; default
    all of them). NaN similarities (no neighbour) never vote.
    """
    share = np.asarray(shares, dtype=np.float64)
    if share.ndim == 2:
        share = share[None]
    similarity = np.atleast_2d(np.asarray(sims, dtype=np.float64))
    if k is not None:
        share, similarity = share[:, :k], similarity[:, :k]
    n_classes = share.shape[2]
    fixed = n_classes if fixed is None else fixed
    labeled = (share.sum(axis=2) > 0) & np.isfinite(similarity)
    clean = np.where(labeled, similarity, 0.0)
    if temperature is None:
        weights = np.where(labeled, np.clip(clean, 0.0, None), 0.0)
        no_weight = weights.sum(axis=1) <= 0
        weights[no_weight] = labeled[no_weight].astype(np.float64)
    else:
        top = np.where(labeled, clean, -np.inf).max(axis=1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        weights = np.where(labeled, np.exp((clean - top) / temperature), 0.0)
    mass = np.einsum("qk,qkc->qc", weights, share)
    in_set = np.einsum("qk,qkc->qc", labeled.astype(np.float64), share) > 0
    in_set[:, :fixed] = True
    members = np.maximum(in_set.sum(axis=1, keepdims=True), 1)
    uniform = in_set / members
    totals = mass.sum(axis=1, keepdims=True)
    shares_of_mass = np.divide(mass, totals, out=uniform.copy(), where=totals > 0)
    result: FloatArray = (1.0 - epsilon) * shares_of_mass + epsilon * uniform
    return result


def vote_counts(shares: npt.ArrayLike, sims: npt.ArrayLike, k: int | None = None) -> npt.NDArray[np.int64]:
    """(Q, C) how many of the first k (labeled, present) neighbours carry each class."""
    share = np.asarray(shares, dtype=np.float64)
    if share.ndim == 2:
        share = share[None]
    similarity = np.atleast_2d(np.asarray(sims, dtype=np.float64))
    if k is not None:
        share, similarity = share[:, :k], similarity[:, :k]
    present = np.isfinite(similarity)[:, :, None]
    counts: npt.NDArray[np.int64] = ((share > 0) & present).sum(axis=1).astype(np.int64)
    return counts


@dataclass(frozen=True)
class LabelVote:
    """One query's vote over labels: (label, probability, votes) best first, and how many neighbours voted."""

    scores: list[tuple[str, float, int]]
    labeled_neighbours: int


def vote_labels(
    neighbours: Sequence[tuple[float, Sequence[str]]],
    *,
    classes: Sequence[str] = (),
    k: int | None = None,
    temperature: float | None = None,
    epsilon: float = 0.0,
) -> LabelVote:
    """The vote of one query's (similarity, labels) neighbours, as the search API serves it.

    The class list is `classes` (a calibration's) then every other label of the voting neighbours,
    sorted; the uncalibrated vote lists only labels that received votes, the calibrated one the whole
    class set. No labeled neighbour: an empty vote.
    """
    voting = list(neighbours[:k] if k is not None else neighbours)
    labeled = sum(1 for _, labels in voting if labels)
    if labeled == 0:
        return LabelVote(scores=[], labeled_neighbours=0)
    fixed = list(dict.fromkeys(classes))
    extra = sorted({label for _, labels in voting for label in labels} - set(fixed))
    columns = fixed + extra
    shares = label_set_shares([[labels for _, labels in voting]], columns)
    sims = np.array([[float(s) for s, _ in voting]], dtype=np.float64)
    probabilities = vote_probabilities(
        shares, sims, temperature=temperature, epsilon=epsilon, fixed=len(fixed)
    )[0]
    counts = vote_counts(shares, sims)[0]
    listed = [
        (name, float(probabilities[c]), int(counts[c]))
        for c, name in enumerate(columns)
        if counts[c] > 0 or (temperature is not None and c < len(fixed))
    ]
    listed.sort(key=lambda item: (-item[1], item[0]))
    return LabelVote(scores=listed, labeled_neighbours=labeled)
