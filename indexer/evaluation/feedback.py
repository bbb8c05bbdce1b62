"""Relevance feedback measured with an oracle: rounds of marks on the shown list, precision@k and mAP@k."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.evaluation import metrics
from indexer.evaluation.datasets import DatasetError, LabeledDataset
from indexer.evaluation.protocol import Split, banned_neighbours
from indexer.vectors.feedback import DEFAULT_WEIGHTS, FeedbackWeights, pin_positives, rocchio

# Weights tried on the calibration (val) queries; the first row is the product default (chosen there).
WEIGHT_GRID: tuple[FeedbackWeights, ...] = (
    DEFAULT_WEIGHTS,
    FeedbackWeights(1.0, 1.0, 0.25),
    FeedbackWeights(1.0, 0.75, 0.15),
    FeedbackWeights(1.0, 0.5, 0.0),
    FeedbackWeights(1.0, 0.75, 0.0),
    FeedbackWeights(1.0, 1.0, 0.0),
    FeedbackWeights(1.0, 1.0, 0.5),
    FeedbackWeights(1.0, 2.0, 0.25),
    FeedbackWeights(0.5, 2.0, 0.5),
)


@dataclass(frozen=True)
class _Query:
    vector: npt.NDArray[np.float32]
    label: int
    banned: set[int]


def _ranked(
    database: npt.NDArray[np.float32], vector: npt.NDArray[np.float32], banned: set[int], depth: int
) -> list[int]:
    """Database positions by exact inner product, best first, banned ones left out, `depth` at most."""
    sims = database @ vector
    want = min(len(sims), depth + len(banned))
    top = np.argpartition(-sims, want - 1)[:want] if want < len(sims) else np.arange(len(sims))
    top = top[np.lexsort((top, -sims[top]))]  # ties by position: the same order every run
    return [int(i) for i in top if int(i) not in banned][:depth]


def _scores(
    shown: list[list[int]], labels: npt.NDArray[np.int64], truth: npt.NDArray[np.int64], k: int
) -> dict[str, float]:
    padded = np.full((len(shown), k), -1, np.int64)
    for row, ids in enumerate(shown):
        padded[row, : len(ids)] = labels[ids] if ids else []
    relevant = metrics.relevance(truth, padded)
    return {
        f"precision@{k}": float(metrics.precision_at_k(relevant, k).mean()),
        f"map@{k}": float(metrics.average_precision_at_k(relevant, k).mean()),
    }


def oracle_rounds(
    database: npt.NDArray[np.float32],
    database_labels: npt.NDArray[np.int64],
    queries: Sequence[_Query],
    *,
    rounds: int,
    k: int = 10,
    weights: FeedbackWeights = DEFAULT_WEIGHTS,
) -> dict[str, Any]:
    """Round 0 is the plain search; each round the oracle marks every shown, not yet marked neighbour
    relevant (same label) or not, and the next list comes from the Rocchio query over all marks so far.

    `shown`: what the user sees (marked positives pinned first, negatives dropped, as POST /search/refine
    answers). `residual`: only images never shown before, against the plain search with the same images
    removed (the fair "does feedback find new relevant images" comparison).
    """
    truth = np.array([q.label for q in queries], np.int64)
    shown: list[list[int]] = [_ranked(database, q.vector, q.banned, k) for q in queries]
    positives: list[list[int]] = [[] for _ in queries]
    negatives: list[list[int]] = [[] for _ in queries]
    seen: list[set[int]] = [set() for _ in queries]
    table: list[dict[str, Any]] = [{"round": 0, "marked": 0, **_scores(shown, database_labels, truth, k)}]
    residual: list[dict[str, Any]] = []
    for round_number in range(1, rounds + 1):
        refined_residual: list[list[int]] = []
        plain_residual: list[list[int]] = []
        for i, q in enumerate(queries):
            for position in shown[i]:
                if position in seen[i]:
                    continue
                seen[i].add(position)
                (positives if database_labels[position] == q.label else negatives)[i].append(position)
            vector = rocchio(q.vector, database[positives[i]], database[negatives[i]], weights)
            depth = k + len(seen[i])
            ranked = _ranked(database, vector, q.banned, depth)
            shown[i] = pin_positives(ranked, positives[i], negatives[i], k)
            refined_residual.append([p for p in ranked if p not in seen[i]][:k])
            plain = _ranked(database, q.vector, q.banned, depth)
            plain_residual.append([p for p in plain if p not in seen[i]][:k])
        marked = float(np.mean([len(s) for s in seen]))
        table.append({"round": round_number, "marked": marked, **_scores(shown, database_labels, truth, k)})
        residual.append(
            {
                "round": round_number,
                "refined": _scores(refined_residual, database_labels, truth, k),
                "no_feedback": _scores(plain_residual, database_labels, truth, k),
            }
        )
    return {
        "weights": {"alpha": weights.alpha, "beta": weights.beta, "gamma": weights.gamma},
        "k": k,
        "queries": len(queries),
        "shown": table,
        "residual": residual,
    }


def _queries(
    dataset: LabeledDataset, vectors: npt.NDArray[np.float32], split: Split, positions: npt.NDArray[np.int64]
) -> list[_Query]:
    as_queries = Split(train=split.train, test=positions, val=split.val, how=split.how)
    banned = banned_neighbours(dataset, as_queries)
    return [_Query(vectors[i], int(dataset.labels[i]), b) for i, b in zip(positions, banned, strict=True)]


def evaluate_feedback(
    dataset: LabeledDataset,
    vectors: npt.NDArray[np.float32],
    split: Split,
    *,
    rounds: int,
    k: int = 10,
    weights: FeedbackWeights = DEFAULT_WEIGHTS,
    tune: bool = True,
) -> dict[str, Any]:
    """Oracle feedback on the test queries with `weights`; with `tune`, the weight grid on the val
    queries too (mAP@k after min(rounds, 2) rounds), so the defaults are chosen away from the test."""
    if rounds < 1:
        raise DatasetError("--feedback-rounds must be at least 1")
    database = np.ascontiguousarray(vectors[split.train], np.float32)
    labels = dataset.labels[split.train]
    report = oracle_rounds(
        database, labels, _queries(dataset, vectors, split, split.test), rounds=rounds, k=k, weights=weights
    )
    report["oracle"] = f"marks every shown neighbour (the first {k}) by its label, each round"
    # The control: the same marks, positives pinned and negatives dropped, but the query unchanged;
    # what feedback adds beyond showing the marked positives first is the difference from this.
    control = oracle_rounds(
        database,
        labels,
        _queries(dataset, vectors, split, split.test),
        rounds=rounds,
        k=k,
        weights=FeedbackWeights(1.0, 0.0, 0.0),
    )
    report["pin_only"] = control["shown"]
    if tune and len(split.val) > 0:
        val = _queries(dataset, vectors, split, split.val)
        tuned_rounds = min(rounds, 2)
        grid = []
        for candidate in WEIGHT_GRID:
            row = oracle_rounds(database, labels, val, rounds=tuned_rounds, k=k, weights=candidate)
            grid.append(
                {
                    **row["weights"],
                    f"map@{k}": row["shown"][-1][f"map@{k}"],
                    f"precision@{k}": row["shown"][-1][f"precision@{k}"],
                    f"residual_precision@{k}": row["residual"][-1]["refined"][f"precision@{k}"],
                }
            )
        report["val_grid"] = {"rounds": tuned_rounds, "queries": len(val), "rows": grid}
    return report


def feedback_markdown(report: dict[str, Any]) -> str:
    """The feedback rounds as a markdown table (what the user sees, and the residual comparison)."""
    k = report["k"]
    w = report["weights"]
    lines = [
        "",
        f"### Relevance feedback (oracle, {report['queries']} queries, "
        f"alpha {w['alpha']:g}, beta {w['beta']:g}, gamma {w['gamma']:g})",
        "",
        f"| round | marked | precision@{k} | mAP@{k} | pin-only precision@{k} / mAP@{k} | "
        f"residual precision@{k} (no feedback) | residual mAP@{k} (no feedback) |",
        "|---|---|---|---|---|---|---|",
    ]
    control = {row["round"]: row for row in report.get("pin_only", [])}
    for row in report["shown"]:
        res = next((r for r in report["residual"] if r["round"] == row["round"]), None)
        pin = control.get(row["round"])
        extra = (
            f"{res['refined'][f'precision@{k}']:.4f} ({res['no_feedback'][f'precision@{k}']:.4f}) | "
            f"{res['refined'][f'map@{k}']:.4f} ({res['no_feedback'][f'map@{k}']:.4f})"
            if res
            else "- | -"
        )
        pinned = f"{pin[f'precision@{k}']:.4f} / {pin[f'map@{k}']:.4f}" if pin else "-"
        lines.append(
            f"| {row['round']} | {row['marked']:g} | {row[f'precision@{k}']:.4f} | {row[f'map@{k}']:.4f} | "
            f"{pinned} | {extra} |"
        )
    return "\n".join(lines) + "\n"
