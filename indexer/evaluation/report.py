"""Evaluation reports: JSON with plain metric names, markdown tables, confusion and precision-recall plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from indexer.evaluation import metrics
from indexer.evaluation.protocol import EvaluationResult
from indexer.extras import require_extra

_HEADLINE = (
    "precision@1",
    "precision@5",
    "precision@10",
    "map@5",
    "map@10",
    "acc@1",
    "mmv@5",
    "mmv@10",
    "knn_vote_accuracy",
    "macro_f1",
    "macro_auc",
    "ece_vote",
    "ece_calibrated",
    "nll_vote",
    "nll_calibrated",
)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_json(result: EvaluationResult) -> dict[str, Any]:
    """The result as JSON-ready data: metrics at the top level under their plain names."""
    data: dict[str, Any] = dict(result.metrics)
    data["info"] = result.info
    data["per_class"] = result.per_class
    data["class_names"] = result.class_names
    data["confusion_matrix"] = result.confusion.tolist()
    return dict(_plain(data))


def write_json(result: EvaluationResult, path: Path) -> None:
    """Write `to_json(result)` to path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(result), indent=2, allow_nan=False) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def to_markdown(result: EvaluationResult) -> str:
    """A markdown summary: setup, headline metrics, per-class table and confusion matrix."""
    lines = [f"## Retrieval evaluation: {result.info.get('dataset', '')}", ""]
    for key, value in result.info.items():
        lines.append(f"- {key}: {value}")
    lines += ["", "| metric | value |", "|---|---|"]
    for name in _HEADLINE:
        if name in result.metrics:
            lines.append(f"| {name} | {_fmt(result.metrics[name])} |")
    if result.per_class:
        columns = list(result.per_class[0])
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in result.per_class:
            lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    names = result.class_names
    lines += ["", "Confusion matrix of the kNN vote (rows: true, columns: predicted)", ""]
    lines += ["| true \\ predicted | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for name, row in zip(names, result.confusion.tolist(), strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(result: EvaluationResult, path: Path) -> None:
    """Write `to_markdown(result)` to path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_markdown(result))


def write_plots(result: EvaluationResult, folder: Path) -> list[Path]:
    """confusion_matrix.png and precision_recall.png (one-vs-rest curves of the vote scores)."""
    matplotlib = require_extra("matplotlib", "eval", needed_for="plots need matplotlib")
    matplotlib.use("Agg")
    plt = require_extra("matplotlib.pyplot", "eval", needed_for="plots need matplotlib")
    folder.mkdir(parents=True, exist_ok=True)
    names = result.class_names
    size = max(4.0, 0.6 * len(names) + 2.0)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(result.confusion, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted (kNN vote)")
    axes.set_ylabel("true")
    peak = result.confusion.max() if result.confusion.size else 0
    for (row, col), value in np.ndenumerate(result.confusion):
        colour = "white" if peak and value > peak / 2 else "black"
        axes.text(col, row, str(value), ha="center", va="center", color=colour, fontsize=8)
    axes.set_title(f"{result.info.get('dataset', '')}: confusion matrix")
    figure.tight_layout()
    confusion_path = folder / "confusion_matrix.png"
    figure.savefig(confusion_path, dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 5))
    for c, name in enumerate(names):
        positive = result.query_labels == c
        if not positive.any() or positive.all():
            continue
        precision, recall = metrics.precision_recall_curve(positive, result.vote_scores[:, c])
        ap = metrics.ranking_average_precision(positive, result.vote_scores[:, c])
        axes.step(
            np.r_[0.0, recall], np.r_[precision[0], precision], where="post", label=f"{name} (AP {ap:.2f})"
        )
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_title("one-vs-rest precision-recall of the kNN vote scores")
    axes.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    pr_path = folder / "precision_recall.png"
    figure.savefig(pr_path, dpi=120)
    plt.close(figure)
    return [confusion_path, pr_path]
