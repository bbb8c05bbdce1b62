"""Trained prediction heads over stored embeddings: a linear probe, the kNN vote's calibration, OOD threshold."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from indexer.catalog import Case, Catalog, Diagnosis, Image
from indexer.errors import IndexerError
from indexer.evaluation.metrics import expected_calibration_error
from indexer.prediction.calibration import EPSILONS, TEMPERATURES, negative_log_likelihood
from indexer.prediction.vote import label_set_shares, vote_probabilities

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
HEADS_DIR = "heads"
HEAD_FILE = "head.npz"
CARD_FILE = "card.json"
VOTE_FILE = "vote_calibration.json"
# L2 penalties tried (on standardised features); the best validation accuracy wins, then the lower NLL.
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
TEMPERATURE_GRID = tuple(float(t) for t in np.exp(np.linspace(np.log(0.05), np.log(20.0), 121)))
# Neighbours of the vote at calibration time (the API's default k).
VOTE_K = 10
# A query whose best similarity to the archive is below this quantile of the stored images' own best
# similarity to other patients is out of distribution.
OOD_QUANTILE = 0.01
# Below this top-class probability a prediction is flagged uncertain.
MIN_CONFIDENCE = 0.5


class HeadError(IndexerError):
    """A head cannot be trained or loaded; the message says what the archive lacks."""


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


@dataclass(frozen=True)
class VoteCalibrationFile:
    """The kNN vote's fitted temperature and uniform share, the OOD threshold and how they were measured."""

    encoder: str
    version: str
    labels: list[str]
    temperature: float
    epsilon: float
    k: int
    ood_similarity: float
    min_confidence: float
    card: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        """Write vote_calibration.json into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / VOTE_FILE).write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, directory: Path) -> VoteCalibrationFile:
        """Read a vote_calibration.json."""
        data = json.loads((directory / VOTE_FILE).read_text())
        return cls(**data)


@dataclass(frozen=True)
class LabeledEmbeddings:
    """Every stored vector of an encoder with its image id, patient group and (single) class, -1 if none."""

    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    groups: list[str]
    classes: npt.NDArray[np.int64]
    labels: list[str]
    multi_label_images: int
    left_out_classes: dict[str, int]
    label_sets: list[tuple[str, ...]] = field(default_factory=list)  # every image's labels, multi-label too

    @property
    def vote_columns(self) -> list[str]:
        """The vote's class list: the fitted classes, then every other label of a stored image, sorted."""
        others = {label for labels in self.label_sets for label in labels} - set(self.labels)
        return list(self.labels) + sorted(others)

    def neighbour_shares(self, positions: npt.NDArray[np.int64]) -> FloatArray:
        """(Q, k, C) vote shares over `vote_columns` of the neighbours at these positions (-1: none).

        A neighbour votes with all of its labels, as it does when the search API serves the vote.
        """
        columns = self.vote_columns
        per_image = label_set_shares([self.label_sets], columns)[0] if self.label_sets else None
        if per_image is None:
            per_image = np.zeros((len(self.ids), len(columns)), dtype=np.float64)
        shares = per_image[np.clip(positions, 0, None)]
        shares[positions < 0] = 0.0
        result: FloatArray = shares
        return result


def load_labeled_embeddings(catalog: Catalog, encoder: str, min_class_images: int = 2) -> LabeledEmbeddings:
    """The encoder's vectors with patient groups and classes; multi-label images and rare classes get -1.

    An image is labeled when its case carries exactly one diagnosis (several labels are ambiguous for a
    single-label head); classes with fewer than `min_class_images` such images are left out.
    """
    id_chunks, vector_chunks = [], []
    for ids, vectors in catalog.embeddings(encoder):
        id_chunks.append(ids)
        vector_chunks.append(vectors)
    if not id_chunks:
        raise HeadError(
            f"the catalog has no vectors from encoder {encoder}: index the archive with it first "
            "(medcbir index / medcbir reindex)"
        )
    ids = np.concatenate(id_chunks)
    order = np.argsort(ids)
    ids, vectors = ids[order], np.concatenate(vector_chunks)[order]
    case_of: dict[int, tuple[int, str | None]] = {}
    labels_of: dict[int, list[str]] = defaultdict(list)
    with catalog.session() as session:
        for image_id, case_id, patient_ref in session.execute(
            select(Image.id, Case.id, Case.patient_ref).join(Case, Case.id == Image.case_id)
        ):
            case_of[int(image_id)] = (int(case_id), patient_ref)
        for case_id, label in session.execute(
            select(Diagnosis.case_id, Diagnosis.label).order_by(Diagnosis.id)
        ):
            labels_of[int(case_id)].append(str(label))
    groups: list[str] = []
    single: list[str | None] = []
    label_sets: list[tuple[str, ...]] = []
    multi = 0
    for image_id in ids:
        case_id, patient_ref = case_of[int(image_id)]
        groups.append(f"patient:{patient_ref}" if patient_ref else f"case:{case_id}")
        case_labels = labels_of.get(case_id, [])
        label_sets.append(tuple(case_labels))
        if len(case_labels) > 1:
            multi += 1
        single.append(case_labels[0] if len(case_labels) == 1 else None)
    counts: dict[str, int] = defaultdict(int)
    for maybe in single:
        if maybe is not None:
            counts[maybe] += 1
    kept = sorted(name for name, n in counts.items() if n >= min_class_images)
    index = {name: i for i, name in enumerate(kept)}
    classes = np.array([index.get(s, -1) if s else -1 for s in single], dtype=np.int64)
    return LabeledEmbeddings(
        ids=ids,
        vectors=vectors.astype(np.float32),
        groups=groups,
        classes=classes,
        labels=kept,
        multi_label_images=multi,
        left_out_classes={label: n for label, n in sorted(counts.items()) if n < min_class_images},
        label_sets=label_sets,
    )


def grouped_split(
    groups: list[str], classes: npt.NDArray[np.int64], fraction: float, seed: int
) -> npt.NDArray[np.bool_]:
    """A mask of the images put in the held-out part: whole patient groups, about `fraction` of each class.

    Patients are stratified by their most frequent class; a class with a single patient stays in training.
    """
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        by_group[group].append(i)
    strata: dict[int, list[str]] = defaultdict(list)
    for group in sorted(by_group):
        values = classes[by_group[group]]
        strata[int(np.bincount(values + 1).argmax()) - 1].append(group)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(groups), dtype=bool)
    for _, members in sorted(strata.items()):
        if len(members) < 2:
            continue
        picked = rng.permutation(len(members))[: max(1, round(fraction * len(members)))]
        for j in picked:
            held[by_group[members[j]]] = True
    return held


def _fit_logistic(
    x: FloatArray, y: npt.NDArray[np.int64], n_classes: int, l2: float, max_iter: int
) -> tuple[FloatArray, FloatArray]:
    """Full-batch L-BFGS on the mean cross-entropy + l2/2 * |W|^2 (torch, CPU, float64)."""
    import torch

    torch.manual_seed(0)
    features = torch.from_numpy(x)
    targets = torch.from_numpy(y)
    weight = torch.zeros((n_classes, x.shape[1]), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(features @ weight.T + bias, targets)
        loss = loss + 0.5 * l2 * (weight * weight).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return weight.detach().numpy().copy(), bias.detach().numpy().copy()


def _crossfit_ece(
    logits: FloatArray, true: npt.NDArray[np.int64], groups: list[str], seed: int
) -> float | None:
    """ECE of temperature scaling fitted on half of the validation patients, measured on the other half."""
    halves = grouped_split(groups, true, 0.5, seed + 1)
    if halves.all() or not halves.any():
        return None
    errors, weights = [], []
    for fit_part in (halves, ~halves):
        t = fit_temperature(logits[fit_part], true[fit_part])
        rest = ~fit_part
        errors.append(expected_calibration_error(true[rest], _softmax(logits[rest] / t)))
        weights.append(int(rest.sum()))
    return float(np.average(errors, weights=weights))


def _version(payload: bytes) -> str:
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
) -> LinearHead:
    """Train a linear probe on the catalog's single-label images, patients split between train and val.

    The L2 penalty is picked on validation accuracy (then NLL), the temperature by validation NLL.
    Features are standardised with training statistics, folded into the saved weight and bias.
    """
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
    best: tuple[float, float, float, FloatArray, FloatArray] | None = None
    for l2 in l2_grid:
        weight, bias = _fit_logistic(z[train], y_all[train], n_classes, l2, max_iter)
        logits = z[val] @ weight.T + bias
        accuracy = float((logits.argmax(axis=1) == y_all[val]).mean())
        nll = negative_log_likelihood(y_all[val], _softmax(logits))
        log.info("head l2=%g: val accuracy %.3f, val NLL %.3f", l2, accuracy, nll)
        if best is None or (accuracy, -nll) > (best[1], -best[2]):
            best = (l2, accuracy, nll, weight, bias)
    assert best is not None
    l2, accuracy, nll, weight, bias = best
    # Fold the standardisation into the linear map: w.((x - m) / s) + b = (w / s).x + (b - (w / s).m).
    folded_weight = weight / scale
    folded_bias = bias - folded_weight @ mean
    val_logits = x_all[val] @ folded_weight.T + folded_bias
    temperature = fit_temperature(val_logits, y_all[val])
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
        "val_accuracy": accuracy,
        "val_nll_before": nll,
        "temperature": temperature,
        "val_nll_after": negative_log_likelihood(y_all[val], _softmax(val_logits / temperature)),
        "val_ece_before": expected_calibration_error(y_all[val], _softmax(val_logits)),
        "val_ece_after": expected_calibration_error(y_all[val], _softmax(val_logits / temperature)),
        "val_ece_after_crossfit": _crossfit_ece(val_logits, y_all[val], val_groups, seed),
        "ece_note": "val_ece_after uses the split T was fitted on; val_ece_after_crossfit fits T on half "
        "the validation patients and measures on the other half",
        "chance_accuracy": float(np.bincount(y_all[val], minlength=n_classes).max() / val.sum()),
        "skipped_multi_label_images": data.multi_label_images,
        "left_out_classes": data.left_out_classes,
        "unlabeled_images": int((data.classes < 0).sum()) - data.multi_label_images,
    }
    weight32 = folded_weight.astype(np.float32)
    bias32 = folded_bias.astype(np.float32)
    version = _version(weight32.tobytes() + bias32.tobytes() + encoder_name.encode())
    return LinearHead(
        labels=list(data.labels),
        weight=weight32,
        bias=bias32,
        temperature=temperature,
        encoder=encoder_name,
        version=version,
        card=card,
    )


def _top_neighbours(
    data: LabeledEmbeddings, queries: npt.NDArray[np.int64], k: int, chunk: int = 512
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """(Q, k) positions and similarities of each query's nearest stored images of other patients."""
    group_codes = np.unique(np.asarray(data.groups), return_inverse=True)[1]
    k = min(k, len(data.ids))
    positions = np.full((len(queries), k), -1, dtype=np.int64)
    sims = np.full((len(queries), k), np.nan, dtype=np.float64)
    for start in range(0, len(queries), chunk):
        part = queries[start : start + chunk]
        scores = (data.vectors[part] @ data.vectors.T).astype(np.float64)
        scores[group_codes[part][:, None] == group_codes[None, :]] = -np.inf
        top = np.argsort(-scores, axis=1)[:, :k]
        values = np.take_along_axis(scores, top, axis=1)
        valid = np.isfinite(values)
        positions[start : start + chunk] = np.where(valid, top, -1)
        sims[start : start + chunk] = np.where(valid, values, np.nan)
    return positions, sims


def fit_vote_by_ece(
    true: npt.NDArray[np.int64],
    neighbour_shares: FloatArray,
    neighbor_sims: FloatArray,
    n_classes: int,
    k: int,
) -> tuple[float, float]:
    """The (T, eps) of the calibration grids with the lowest ECE + 0.1 * NLL on these (fit) queries.

    `neighbour_shares` is (Q, k, C) over the vote's columns, the first `n_classes` the fitted classes:
    the probabilities are the served vote's (`indexer.prediction.vote`), multi-label neighbours and
    labels outside the fitted classes included.

    NLL alone lets the few queries of rare classes (no neighbour of their class: p = eps / C) push eps up
    until every confidence is flattened; on the imbalanced COVID-19 collection that made the held-out ECE
    worse than the uncalibrated vote's (0.10 -> 0.14). ECE alone picks eps = 0 and confident mistakes
    (held-out NLL 0.7-1.0 on brain MRI). The sum lowered the held-out ECE on both, over three seeds.
    """
    best: tuple[float, float, float] | None = None
    for temperature in TEMPERATURES:
        for epsilon in EPSILONS:
            probabilities = vote_probabilities(
                neighbour_shares, neighbor_sims, k, temperature=temperature, epsilon=epsilon, fixed=n_classes
            )
            loss = expected_calibration_error(true, probabilities) + 0.1 * negative_log_likelihood(
                true, probabilities
            )
            if best is None or loss < best[0] - 1e-12:
                best = (loss, temperature, epsilon)
    assert best is not None
    return best[1], best[2]


def fit_vote(
    catalog: Catalog,
    encoder_name: str,
    *,
    seed: int = 0,
    k: int = VOTE_K,
    holdout_fraction: float = 0.5,
    max_queries: int = 4000,
    data: LabeledEmbeddings | None = None,
) -> VoteCalibrationFile:
    """Fit the vote's (T, eps) on leave-one-patient-out neighbour lists; measure ECE on held-out patients.

    Each stored image (up to `max_queries`, sampled) queries every stored image of other patients. The
    same runs give the OOD threshold: the OOD_QUANTILE of each query's best similarity to other patients.
    """
    data = data or load_labeled_embeddings(catalog, encoder_name)
    rng = np.random.default_rng(seed)
    queries = np.arange(len(data.ids))
    if len(queries) > max_queries:
        queries = np.sort(rng.choice(queries, size=max_queries, replace=False))
    positions, sims = _top_neighbours(data, queries, k)
    top1 = sims[:, 0]
    finite_top1 = top1[np.isfinite(top1)]
    if len(finite_top1) == 0:
        raise HeadError("every stored image belongs to one patient: no leave-one-patient-out neighbours")
    ood = float(np.quantile(finite_top1, OOD_QUANTILE))
    neighbour_shares = data.neighbour_shares(positions)
    true = data.classes[queries]
    usable = true >= 0
    card: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "queries": len(queries),
        "ood_quantile": OOD_QUANTILE,
        "top1_similarity_median": float(np.median(finite_top1)),
    }
    temperature, epsilon = 1.0, 0.0
    n_classes = len(data.labels)
    if n_classes >= 2 and usable.sum() >= 4:
        q_groups = [data.groups[i] for i in queries[usable]]
        holdout = grouped_split(q_groups, true[usable], holdout_fraction, seed)
        fit_part = ~holdout
        if holdout.any() and fit_part.any():
            shares_u, sims_u, true_u = neighbour_shares[usable], sims[usable], true[usable]
            temperature, epsilon = fit_vote_by_ece(
                true_u[fit_part], shares_u[fit_part], sims_u[fit_part], n_classes, k
            )
            before = vote_probabilities(shares_u[holdout], sims_u[holdout], k, fixed=n_classes)
            after = vote_probabilities(
                shares_u[holdout],
                sims_u[holdout],
                k,
                temperature=temperature,
                epsilon=epsilon,
                fixed=n_classes,
            )
            card.update(
                n_fit=int(fit_part.sum()),
                n_holdout=int(holdout.sum()),
                selection="lowest ECE + 0.1 * NLL on the fit patients",
                holdout_accuracy_before=float((before.argmax(axis=1) == true_u[holdout]).mean()),
                holdout_accuracy=float((after.argmax(axis=1) == true_u[holdout]).mean()),
                holdout_ece_before=expected_calibration_error(true_u[holdout], before),
                holdout_ece_after=expected_calibration_error(true_u[holdout], after),
                holdout_nll_before=negative_log_likelihood(true_u[holdout], before),
                holdout_nll_after=negative_log_likelihood(true_u[holdout], after),
            )
    else:
        card["note"] = "too few labeled images for a vote calibration: only the OOD threshold was fitted"
    payload = json.dumps([encoder_name, temperature, epsilon, ood, data.labels]).encode()
    return VoteCalibrationFile(
        encoder=encoder_name,
        version=_version(payload),
        labels=list(data.labels),
        temperature=temperature,
        epsilon=epsilon,
        k=k,
        ood_similarity=ood,
        min_confidence=MIN_CONFIDENCE,
        card=card,
    )


@dataclass(frozen=True)
class TrainedPredictors:
    """What `medcbir train-head` wrote: the version folder, the head (None if it could not be trained)."""

    directory: Path
    head: LinearHead | None
    vote: VoteCalibrationFile


def save_version(
    data_dir: Path, head: LinearHead | None, vote: VoteCalibrationFile, version: str | None = None
) -> Path:
    """Write a new DATA_DIR/heads/<version>/ atomically (temp folder + rename); an old one is never touched."""
    version = version or (head.version if head else vote.version)
    root = data_dir / HEADS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    if final.exists():
        raise HeadError(f"head version {version} already exists; versions are never overwritten")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        if head is not None:
            head.save(staging)
        vote.save(staging)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def train_predictors(
    catalog: Catalog, encoder_name: str, data_dir: Path, *, seed: int = 0, val_fraction: float = 0.2
) -> TrainedPredictors:
    """Train the head (when the labels allow it) and calibrate the vote, then save both as a new version."""
    data = load_labeled_embeddings(catalog, encoder_name)
    head: LinearHead | None
    try:
        head = train_head(catalog, encoder_name, seed=seed, val_fraction=val_fraction, data=data)
    except HeadError as exc:
        log.warning("no head trained: %s", exc)
        head = None
    vote = fit_vote(catalog, encoder_name, seed=seed, data=data)
    if head is not None:  # one version names the folder, the head and the vote calibration in it
        vote = replace(vote, version=head.version)
    directory = save_version(data_dir, head, vote)
    return TrainedPredictors(directory=directory, head=head, vote=vote)


def _versions(data_dir: Path) -> list[Path]:
    root = data_dir / HEADS_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True)


def latest_head(data_dir: Path, encoder: str) -> LinearHead | None:
    """The newest saved head trained on `encoder`'s embeddings, or None."""
    for directory in _versions(data_dir):
        if (directory / CARD_FILE).is_file() and (directory / HEAD_FILE).is_file():
            meta = json.loads((directory / CARD_FILE).read_text())
            if meta.get("encoder") == encoder:
                return LinearHead.load(directory)
    return None


def latest_vote_calibration(data_dir: Path, encoder: str) -> VoteCalibrationFile | None:
    """The newest saved vote calibration fitted on `encoder`'s embeddings, or None."""
    for directory in _versions(data_dir):
        if (directory / VOTE_FILE).is_file():
            vote = VoteCalibrationFile.load(directory)
            if vote.encoder == encoder:
                return vote
    return None


def heads_stamp(data_dir: Path) -> int:
    """A cheap change marker of DATA_DIR/heads (its mtime in ns; a new version folder changes it), 0 if absent."""
    try:
        return (data_dir / HEADS_DIR).stat().st_mtime_ns
    except FileNotFoundError:
        return 0
