"""The vote fitted by train-head is the vote served: identical probabilities, multi-label and extra classes too."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.prediction.labeled import LabeledEmbeddings, top_neighbours
from indexer.prediction.vote import vote_probabilities
from indexer.prediction.vote_fit import VoteCalibrationFile
from search_api.predictions import calibrated_vote, vote

K = 10


def _archive(seed: int = 0) -> LabeledEmbeddings:
    """60 images of 30 patients: single labels a/b/c, multi-label {a, b}, a rare label, unlabeled ones."""
    rng = np.random.default_rng(seed)
    n = 60
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    label_sets: list[tuple[str, ...]] = []
    for i in range(n):
        if i % 10 == 3:
            label_sets.append(("a", "b"))  # multi-label: no class for fitting, but it votes with both
        elif i % 10 == 7:
            label_sets.append(("rare",))  # a class the calibration does not know (too few images)
        elif i % 10 == 9:
            label_sets.append(())  # unlabeled: never votes
        else:
            label_sets.append(("abc"[i % 3],))
    labels = ["a", "b", "c"]
    classes = np.array([labels.index(s[0]) if len(s) == 1 and s[0] in labels else -1 for s in label_sets])
    return LabeledEmbeddings(
        ids=np.arange(1, n + 1, dtype=np.int64),
        vectors=vectors,
        groups=[f"patient:{i // 2}" for i in range(n)],
        classes=classes.astype(np.int64),
        labels=labels,
        multi_label_images=n // 10,
        left_out_classes={"rare": n // 10},
        label_sets=label_sets,
    )


@pytest.mark.parametrize(
    ("temperature", "epsilon"), [(None, 0.0), (0.05, 0.0), (0.1, 0.02), (1.0, 0.3), (10.0, 0.5)]
)
def test_fitting_and_serving_give_identical_calibrated_probabilities(
    temperature: float, epsilon: float
) -> None:
    data = _archive()
    queries = np.arange(len(data.ids))
    positions, sims = top_neighbours(data, queries, K)
    shares = data.neighbour_shares(positions)
    # What train-head computes for its fit and hold-out queries (heads.fit_vote / fit_vote):
    fitted = vote_probabilities(
        shares, sims, K, temperature=temperature, epsilon=epsilon, fixed=len(data.labels)
    )
    calibration = VoteCalibrationFile(
        encoder="test",
        version="v",
        labels=data.labels,
        temperature=temperature,
        epsilon=epsilon,
        k=K,
        ood_similarity=0.0,
        min_confidence=0.5,
    )
    columns = data.vote_columns
    checked_multi = checked_extra = 0
    for q in queries:
        neighbours = [
            (float(s), list(data.label_sets[p])) for p, s in zip(positions[q], sims[q], strict=True) if p >= 0
        ]
        # The search API hands the vote more neighbours than the calibration's k: only k may vote.
        served = calibrated_vote([*neighbours, (0.99, ["c"])], calibration)
        assert served.labeled_neighbours == sum(1 for _, labels in neighbours[:K] if labels)
        assert served.labeled_neighbours > 0
        by_label = {s.label: s.score for s in served.scores}
        for c, name in enumerate(columns):
            assert by_label.get(name, 0.0) == pytest.approx(fitted[q, c], abs=1e-12), (q, name)
        assert sum(by_label.values()) == pytest.approx(1.0, abs=1e-12)
        voters = [labels for _, labels in neighbours[:K]]
        checked_multi += any(len(labels) > 1 for labels in voters)
        checked_extra += any("rare" in labels for labels in voters)
    # The cases the old twin implementations disagreed on were really exercised.
    assert checked_multi > 10 and checked_extra > 10


def test_fitting_and_serving_give_identical_uncalibrated_votes() -> None:
    data = _archive(seed=1)
    queries = np.arange(len(data.ids))
    positions, sims = top_neighbours(data, queries, K)
    before = vote_probabilities(data.neighbour_shares(positions), sims, K, fixed=len(data.labels))
    columns = data.vote_columns
    for q in queries:
        neighbours = [
            (float(s), list(data.label_sets[p])) for p, s in zip(positions[q], sims[q], strict=True) if p >= 0
        ]
        served = {s.label: s.score for s in vote(neighbours).scores}
        for c, name in enumerate(columns):
            assert served.get(name, 0.0) == pytest.approx(before[q, c], abs=1e-12), (q, name)


def test_multi_label_neighbour_splits_its_weight_and_extra_class_widens_the_smoothing() -> None:
    calibration = VoteCalibrationFile(
        encoder="t", version="v", labels=["a", "b"], temperature=1.0, epsilon=0.3, k=3,
        ood_similarity=0.0, min_confidence=0.5,
    )  # fmt: skip
    served = calibrated_vote([(0.9, ["a", "b"]), (0.9, ["new"]), (0.9, [])], calibration)
    scores = {s.label: s.score for s in served.scores}
    # Equal weights: a and b get half a vote each, "new" a whole one; eps spread over 3 classes.
    assert scores["a"] == pytest.approx(0.7 * 0.25 + 0.1)
    assert scores["b"] == pytest.approx(0.7 * 0.25 + 0.1)
    assert scores["new"] == pytest.approx(0.7 * 0.5 + 0.1)
    assert served.label == "new" and served.labeled_neighbours == 2
