"""The linear prediction head: a logistic probe on stored embeddings, temperature-scaled on held-out patients."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.catalog import Catalog
from indexer.errors import HeadError
from indexer.evaluation.metrics import expected_calibration_error
from indexer.prediction.calibration import negative_log_likelihood
from indexer.prediction.constrained import class_balanced_weights, scores
from indexer.prediction.labeled import LabeledEmbeddings, grouped_split, load_labeled_embeddings

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


HEAD_FILE = "head.npz"


CARD_FILE = "card.json"


# L2 penalties tried (on standardised features); the best validation accuracy wins, then the lower NLL.
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


TEMPERATURE_GRID = tuple(float(t) for t in np.exp(np.linspace(np.log(0.05), np.log(20.0), 121)))


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: FloatArray = exp / exp.sum(axis=1, keepdims=True)
    return result


def fit_temperature(logits: FloatArray, true: npt.NDArray[np.int64]) -> float:
    """The temperature of a log-spaced grid with the lowest NLL of softmax(logits / T)."""
    losses = [negative_log_likelihood(true, _softmax(logits / t)) for t in TEMPERATURE_GRID]
    return TEMPERATURE_GRID[int(np.argmin(losses))]


@dataclass
class LinearHead:
    """A multinomial logistic regression on an encoder's embeddings, temperature-scaled on validation."""

    labels: list[str]
    weight: npt.NDArray[np.float32]  # (C, D)
    bias: npt.NDArray[np.float32]  # (C,)
    temperature: float
    encoder: str
    version: str
    card: dict[str, Any] = field(default_factory=dict)

    def logits(self, vectors: npt.ArrayLike) -> FloatArray:
        """(N, C) raw class scores of (N, D) vectors."""
        x = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        result: FloatArray = x @ self.weight.astype(np.float64).T + self.bias.astype(np.float64)
        return result

    def predict_proba(self, vectors: npt.ArrayLike) -> FloatArray:
        """(N, C) calibrated probabilities: softmax(logits / temperature); each row sums to 1."""
        return _softmax(self.logits(vectors) / self.temperature)

    def save(self, directory: Path) -> None:
        """Write the weights (head.npz) and the card (card.json) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / HEAD_FILE, weight=self.weight, bias=self.bias)
        meta = {
            "labels": self.labels,
            "temperature": self.temperature,
            "encoder": self.encoder,
            "version": self.version,
            "card": self.card,
        }
        (directory / CARD_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> LinearHead:
        """Read a head saved by `save`."""
        meta = json.loads((directory / CARD_FILE).read_text())
        with np.load(directory / HEAD_FILE) as arrays:
            weight = arrays["weight"].astype(np.float32)
            bias = arrays["bias"].astype(np.float32)
        return cls(
            labels=list(meta["labels"]),
            weight=weight,
            bias=bias,
            temperature=float(meta["temperature"]),
            encoder=str(meta["encoder"]),
            version=str(meta["version"]),
            card=dict(meta.get("card", {})),
        )


def _fit_logistic(
    x: FloatArray,
    y: npt.NDArray[np.int64],
    n_classes: int,
    l2: float,
    max_iter: int,
    class_weight: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Full-batch L-BFGS on the (class-weighted) mean cross-entropy + l2/2 * |W|^2 (torch, CPU, float64)."""
    import torch

    torch.manual_seed(0)
    features = torch.from_numpy(x)
    targets = torch.from_numpy(y)
    weights = torch.from_numpy(class_weight) if class_weight is not None else None
    weight = torch.zeros((n_classes, x.shape[1]), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(features @ weight.T + bias, targets, weight=weights)
        loss = loss + 0.5 * l2 * (weight * weight).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return weight.detach().numpy().copy(), bias.detach().numpy().copy()


def _crossfit_ece(
    logits: FloatArray, true: npt.NDArray[np.int64], groups: list[str], seed: int
) -> tuple[float, float] | None:
    """(ECE at T=1, ECE of a T fitted on the other half), over two halves of the validation patients."""
    halves = grouped_split(groups, true, 0.5, seed + 1)
    if halves.all() or not halves.any():
        return None
    plain, scaled, weights = [], [], []
    for fit_part in (halves, ~halves):
        t = fit_temperature(logits[fit_part], true[fit_part])
        rest = ~fit_part
        plain.append(expected_calibration_error(true[rest], _softmax(logits[rest])))
        scaled.append(expected_calibration_error(true[rest], _softmax(logits[rest] / t)))
        weights.append(int(rest.sum()))
    return float(np.average(plain, weights=weights)), float(np.average(scaled, weights=weights))


def version_stamp(payload: bytes) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{hashlib.sha256(payload).hexdigest()[:8]}"


def train_head(
    catalog: Catalog,
    encoder_name: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    l2_grid: tuple[float, ...] = L2_GRID,
    max_iter: int = 200,
    data: LabeledEmbeddings | None = None,
    class_weighting: str = "none",
) -> LinearHead:
    """Train a linear probe on the catalog's single-label images, patients split between train and val.

    `class_weighting` "none" (default): plain cross-entropy, L2 picked on validation accuracy;
    "balanced" weighs each class's cross-entropy by n / (C * n_c) and picks L2 on balanced accuracy. On the
    COVID-19 X-rays (17 classes, 80% one) "balanced" raised validation balanced accuracy 0.136 -> 0.216
    but cut accuracy 0.784 -> 0.480 (scripts/calibration_table.py), so it is opt-in; the card reports
    balanced accuracy and per-class recall either way.
    The temperature is fitted by validation NLL and kept only when it lowers the cross-fitted ECE (fitted
    on half the validation patients, measured on the other half); otherwise T = 1 and the card says so.
    Features are standardised with training statistics, folded into the saved weight and bias.
    """
    if class_weighting not in ("balanced", "none"):
        raise HeadError(f"class_weighting must be 'balanced' or 'none', not {class_weighting!r}")
    data = data or load_labeled_embeddings(catalog, encoder_name)
    labeled = data.classes >= 0
    if len(data.labels) < 2:
        raise HeadError(
            f"a head needs at least two diagnosis labels with >= 2 single-label images each; the catalog "
            f"has {len(data.labels)} (left out: {data.left_out_classes}). Index a manifest with diagnoses."
        )
    x_all = data.vectors[labeled].astype(np.float64)
    y_all = data.classes[labeled]
    groups = [g for g, keep in zip(data.groups, labeled, strict=True) if keep]
    held = grouped_split(groups, y_all, val_fraction, seed)
    if not held.any() or held.all():
        raise HeadError(
            "too few patients to hold some out for validation: each class needs images of >= 2 patients"
        )
    train, val = ~held, held
    mean = x_all[train].mean(axis=0)
    scale = x_all[train].std(axis=0) + 1e-6
    z = (x_all - mean) / scale
    n_classes = len(data.labels)
    class_weight: FloatArray | None = None
    if class_weighting == "balanced":
        per_image = class_balanced_weights(y_all[train], n_classes)
        class_weight = np.ones(n_classes, dtype=np.float64)
        for c in range(n_classes):
            if (y_all[train] == c).any():
                class_weight[c] = float(per_image[y_all[train] == c][0])
    best: tuple[float, float, float, FloatArray, FloatArray] | None = None
    for l2 in l2_grid:
        weight, bias = _fit_logistic(z[train], y_all[train], n_classes, l2, max_iter, class_weight)
        logits = z[val] @ weight.T + bias
        measured = scores(y_all[val], _softmax(logits), n_classes)
        criterion = measured["balanced_accuracy"] if class_weight is not None else measured["accuracy"]
        nll = negative_log_likelihood(y_all[val], _softmax(logits))
        log.info("head l2=%g: val accuracy %.3f, val NLL %.3f", l2, measured["accuracy"], nll)
        if best is None or (criterion, -nll) > (best[1], -best[2]):
            best = (l2, criterion, nll, weight, bias)
    assert best is not None
    l2, _, nll, weight, bias = best
    # Fold the standardisation into the linear map: w.((x - m) / s) + b = (w / s).x + (b - (w / s).m).
    folded_weight = weight / scale
    folded_bias = bias - folded_weight @ mean
    val_logits = x_all[val] @ folded_weight.T + folded_bias
    fitted_temperature = fit_temperature(val_logits, y_all[val])
    crossfit = _crossfit_ece(
        val_logits, y_all[val], [g for g, keep in zip(groups, val, strict=True) if keep], seed
    )
    temperature_kept = crossfit is not None and crossfit[1] <= crossfit[0]
    temperature = fitted_temperature if temperature_kept else 1.0
    if not temperature_kept:
        log.warning(
            "head temperature %.3g not kept: it did not lower the cross-fitted validation ECE (%s); T = 1",
            fitted_temperature,
            "too few validation patients to check"
            if crossfit is None
            else f"{crossfit[0]:.3f} -> {crossfit[1]:.3f}",
        )
    val_scores = scores(y_all[val], _softmax(val_logits), n_classes)
    val_groups = [g for g, keep in zip(groups, val, strict=True) if keep]
    train_groups = {g for g, keep in zip(groups, train, strict=True) if keep}
    overlap = train_groups & set(val_groups)
    assert not overlap, "grouped split leaked a patient"
    card: dict[str, Any] = {
        "kind": "linear probe (multinomial logistic regression, L-BFGS, CPU)",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "encoder": encoder_name,
        "labels": data.labels,
        "seed": seed,
        "val_fraction": val_fraction,
        "n_train": int(train.sum()),
        "n_val": int(val.sum()),
        "n_train_patients": len(train_groups),
        "n_val_patients": len(set(val_groups)),
        "class_counts": {label: int((y_all == i).sum()) for i, label in enumerate(data.labels)},
        "l2": l2,
        "class_weighting": class_weighting,
        "val_accuracy": val_scores["accuracy"],
        "val_balanced_accuracy": val_scores["balanced_accuracy"],
        "val_per_class_recall": dict(zip(data.labels, val_scores["per_class_recall"], strict=True)),
        "val_class_counts": {label: int((y_all[val] == i).sum()) for i, label in enumerate(data.labels)},
        "val_nll_before": nll,
        "temperature": temperature,
        "temperature_fitted": fitted_temperature,
        "temperature_kept": temperature_kept,
        "temperature_note": "T is fitted on validation NLL and kept only when the cross-fitted ECE (T fitted on "
        "half the validation patients, ECE on the other half) is no worse than at T = 1",
        "val_nll_after": negative_log_likelihood(y_all[val], _softmax(val_logits / temperature)),
        "val_ece_before": expected_calibration_error(y_all[val], _softmax(val_logits)),
        "val_ece_after": expected_calibration_error(y_all[val], _softmax(val_logits / temperature)),
        "val_ece_before_crossfit": crossfit[0] if crossfit else None,
        "val_ece_after_crossfit": crossfit[1] if crossfit else None,
        "ece_note": "val_ece_after uses the split T was fitted on; val_ece_after_crossfit fits T on half "
        "the validation patients and measures on the other half",
        "chance_accuracy": float(np.bincount(y_all[val], minlength=n_classes).max() / val.sum()),
        "skipped_multi_label_images": data.multi_label_images,
        "left_out_classes": data.left_out_classes,
        "unlabeled_images": int((data.classes < 0).sum()) - data.multi_label_images,
    }
    weight32 = folded_weight.astype(np.float32)
    bias32 = folded_bias.astype(np.float32)
    version = version_stamp(weight32.tobytes() + bias32.tobytes() + encoder_name.encode())
    return LinearHead(
        labels=list(data.labels),
        weight=weight32,
        bias=bias32,
        temperature=temperature,
        encoder=encoder_name,
        version=version,
        card=card,
    )
