"""The evaluation protocol: database/query splits, cached embeddings, FAISS retrieval with exclusions, metrics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from embeddings import ImageEncoder
from indexer.evaluation import metrics
from indexer.evaluation.datasets import SPLITS, DatasetError, LabeledDataset

log = logging.getLogger(__name__)

DEFAULT_SEED = 0
METRIC_KS = (1, 5, 10)


@dataclass(frozen=True)
class Split:
    """Positions (into one dataset) of the database, the queries and the calibration images."""

    train: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]
    val: npt.NDArray[np.int64]
    how: str


def group_keys(dataset: LabeledDataset) -> list[str]:
    """What must never be split apart or retrieved for itself: the patient, else the image content."""
    if dataset.patients is not None:
        return [f"patient:{p}" for p in dataset.patients]
    return [f"content:{k}" for k in dataset.content_keys]


def grouped_split(
    groups: Sequence[str], *, seed: int = DEFAULT_SEED, test_fraction: float = 0.2, val_fraction: float = 0.1
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train, val, test) positions with every group wholly in one part, shuffled with `seed`.

    Groups are dealt in a seeded random order to test until it holds `test_fraction` of the images,
    then to val until `val_fraction`, the rest to train.
    """
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise DatasetError("split fractions must be in (0, 1) and sum to less than 1")
    members: dict[str, list[int]] = {}
    for position, group in enumerate(groups):
        members.setdefault(group, []).append(position)
    names = sorted(members)
    order = np.random.default_rng(seed).permutation(len(names))
    total = len(groups)
    test: list[int] = []
    val: list[int] = []
    train: list[int] = []
    for index in order:
        chosen = members[names[index]]
        if len(test) < test_fraction * total:
            test.extend(chosen)
        elif len(val) < val_fraction * total:
            val.extend(chosen)
        else:
            train.extend(chosen)
    return (
        np.array(sorted(train), np.int64),
        np.array(sorted(val), np.int64),
        np.array(sorted(test), np.int64),
    )


def make_split(
    dataset: LabeledDataset,
    *,
    seed: int = DEFAULT_SEED,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
) -> Split:
    """The dataset's own train/val/test split when it has one, else a seeded patient-grouped split."""
    if dataset.splits is not None:
        splits = np.array(dataset.splits)
        parts = {s: np.flatnonzero(splits == s).astype(np.int64) for s in SPLITS}
        if len(parts["train"]) == 0 or len(parts["test"]) == 0:
            raise DatasetError("the split column must name at least one train and one test image")
        return Split(train=parts["train"], test=parts["test"], val=parts["val"], how="dataset splits")
    train, val, test = grouped_split(
        group_keys(dataset), seed=seed, test_fraction=test_fraction, val_fraction=val_fraction
    )
    unit = "patient" if dataset.patients is not None else "content-hash"
    return Split(
        train=train,
        test=test,
        val=val,
        how=f"{unit}-grouped split, seed {seed}, test {test_fraction:.0%}, val {val_fraction:.0%}",
    )


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def embed_dataset(
    dataset: LabeledDataset,
    encoder: ImageEncoder,
    *,
    cache_dir: Path | None = None,
    cache_tag: str = "",
    batch: int = 64,
    progress: bool = True,
) -> npt.NDArray[np.float32]:
    """(N, dim) unit vectors of every image, decoded and embedded exactly as at ingest.

    With `cache_dir`, vectors are saved as `.npy` keyed by the dataset content, the encoder's name
    (weights identity included) and `cache_tag` (e.g. the input size), and reused when present.
    """
    cache: Path | None = None
    if cache_dir is not None:
        cache = (
            cache_dir
            / f"{_safe(dataset.name)}-{dataset.identity()}-{_safe(encoder.name)}{_safe(cache_tag)}.npy"
        )
        if cache.is_file():
            vectors = np.load(cache)
            if vectors.shape == (len(dataset), encoder.dim):
                log.info("embeddings from cache %s", cache)
                return vectors.astype(np.float32, copy=False)
    chunks = []
    bar = tqdm(total=len(dataset), desc=f"embed {dataset.name}", unit="img", disable=not progress)
    for start in range(0, len(dataset), batch):
        images = [dataset.image(i) for i in range(start, min(start + batch, len(dataset)))]
        chunks.append(encoder.embed(images))
        bar.update(len(images))
    bar.close()
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(cache)
    return vectors


@dataclass(frozen=True)
class Neighbours:
    """For each query, database positions and similarities best first (-1 / NaN where fewer were found)."""

    positions: npt.NDArray[np.int64]
    similarities: npt.NDArray[np.float32]


def retrieve(
    database: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    banned: Sequence[set[int]] | None = None,
) -> Neighbours:
    """The k nearest database vectors of each query by exact inner product (the product's FAISS index).

    `banned[q]` holds database positions never to return for query q (its patient, its duplicates):
    the index is asked for enough extra neighbours to drop them and still keep k.
    """
    # The flat inner-product index the product uses for exact search (vectors are unit length).
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    extra = max((len(b) for b in banned), default=0) if banned is not None else 0
    depth = max(1, min(k + extra, len(database)))
    found_sims, found_ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), depth)
    positions = np.full((len(queries), k), -1, dtype=np.int64)
    sims = np.full((len(queries), k), np.nan, dtype=np.float32)
    for row in range(len(queries)):
        valid = found_ids[row] >= 0
        ids, values = found_ids[row][valid].astype(np.int64), found_sims[row][valid]
        if banned is not None and banned[row]:
            keep = np.array([int(i) not in banned[row] for i in ids], dtype=bool)
            ids, values = ids[keep], values[keep]
        positions[row, : min(k, len(ids))] = ids[:k]
        sims[row, : min(k, len(values))] = values[:k]
    return Neighbours(positions=positions, similarities=sims)


def banned_neighbours(dataset: LabeledDataset, split: Split) -> list[set[int]]:
    """Per query, the database positions sharing its patient (when known) or its exact content."""
    groups = group_keys(dataset)
    by_key: dict[str, set[int]] = {}
    for position, i in enumerate(split.train):
        by_key.setdefault(groups[i], set()).add(position)
        by_key.setdefault(f"content:{dataset.content_keys[i]}", set()).add(position)
    return [
        by_key.get(groups[i], set()) | by_key.get(f"content:{dataset.content_keys[i]}", set())
        for i in split.test
    ]


@dataclass
class EvaluationResult:
    """Everything `medcbir eval` reports: plain-named metrics, per-class rows, confusion, curves' inputs."""

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    class_names: list[str]
    confusion: npt.NDArray[np.int64]
    query_labels: npt.NDArray[np.int64]
    vote_scores: npt.NDArray[np.float64]
    info: dict[str, Any] = field(default_factory=dict)


def score_retrieval(
    query_labels: npt.NDArray[np.int64],
    neighbor_labels: npt.NDArray[np.int64],
    neighbor_sims: npt.NDArray[np.float32],
    class_names: Sequence[str],
    *,
    k: int = 10,
) -> EvaluationResult:
    """All metrics from the labels of each query's ranked neighbours.

    Retrieval metrics at k = 1, 5, 10 and the requested k; the kNN vote (similarity-weighted, as the
    search API predicts) over the first k neighbours gives accuracy, macro-F1, macro-AUC, confusion.
    """
    n_classes = len(class_names)
    ks = sorted({*METRIC_KS, k})
    depth = neighbor_labels.shape[1]
    relevant = metrics.relevance(query_labels, neighbor_labels)
    values: dict[str, float] = {}
    for kk in ks:
        if kk > depth:
            continue
        values[f"precision@{kk}"] = float(metrics.precision_at_k(relevant, kk).mean())
        values[f"map@{kk}"] = float(metrics.average_precision_at_k(relevant, kk).mean())
        values[f"acc@{kk}"] = float(metrics.hit_at_k(relevant, kk).mean())
        majority = metrics.majority_vote(neighbor_labels, neighbor_sims, n_classes, kk)
        values[f"mmv@{kk}"] = float((majority == query_labels).mean())
    kv = min(k, depth)
    scores = metrics.vote_scores(neighbor_labels, np.nan_to_num(neighbor_sims), n_classes, kv, weighted=True)
    predicted = np.where(scores.sum(axis=1) > 0, scores.argmax(axis=1), -1)
    values["knn_vote_accuracy"] = float((predicted == query_labels).mean())
    recall = np.bincount(query_labels[predicted == query_labels], minlength=n_classes) / np.maximum(
        np.bincount(query_labels, minlength=n_classes), 1
    )
    values["knn_vote_balanced_accuracy"] = float(
        recall[np.bincount(query_labels, minlength=n_classes) > 0].mean()
    )
    values["macro_f1"] = metrics.macro_f1(query_labels, predicted, n_classes)
    values["macro_auc"] = metrics.macro_auc(query_labels, scores)
    confusion = metrics.confusion_matrix(query_labels, predicted, n_classes)
    precision, recall, f1 = metrics.per_class_prf(confusion, np.bincount(query_labels, minlength=n_classes))
    aucs = metrics.per_class_auc(query_labels, scores)
    p_at_k = metrics.precision_at_k(relevant, kv)
    ap_at_k = metrics.average_precision_at_k(relevant, kv)
    per_class: list[dict[str, Any]] = []
    for c, name in enumerate(class_names):
        mine = query_labels == c
        per_class.append(
            {
                "class": name,
                "queries": int(mine.sum()),
                f"precision@{kv}": float(p_at_k[mine].mean()) if mine.any() else float("nan"),
                f"map@{kv}": float(ap_at_k[mine].mean()) if mine.any() else float("nan"),
                "vote_precision": float(precision[c]),
                "vote_recall": float(recall[c]),
                "vote_f1": float(f1[c]),
                "auc": float(aucs[c]),
            }
        )
    return EvaluationResult(
        metrics=values,
        per_class=per_class,
        class_names=list(class_names),
        confusion=confusion,
        query_labels=query_labels,
        vote_scores=scores,
    )


def retrieve_postprocessed(
    database: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    banned: Sequence[set[int]],
    postprocess: str,
) -> Neighbours:
    """As `retrieve`, through the product's index with a post-processing SPEC fitted on the database only.

    Database positions are the index ids; a query's banned positions are left out by the index's own
    filter, so query expansion and re-ranking see the same list the query is shown, as in the product.
    """
    from indexer.vectors.index import VectorIndex

    ids = np.arange(len(database), dtype=np.int64)
    index = VectorIndex.build(ids, database, encoder="evaluation", postprocess=postprocess)
    positions = np.full((len(queries), k), -1, dtype=np.int64)
    sims = np.full((len(queries), k), np.nan, dtype=np.float32)
    free = [row for row in range(len(queries)) if not banned[row]]
    found = dict(zip(free, index.search(queries[free], k) if free else [], strict=True))
    for row in range(len(queries)):
        if row not in found:
            allowed = np.setdiff1d(ids, np.fromiter(banned[row], dtype=np.int64))
            found[row] = index.search(queries[row : row + 1], k, allowed_ids=allowed)[0]
        hit = found[row]
        positions[row, : len(hit.ids)] = hit.ids
        sims[row, : len(hit.ids)] = hit.similarities
    return Neighbours(positions=positions, similarities=sims)


def evaluate_vectors(
    dataset: LabeledDataset,
    vectors: npt.NDArray[np.float32],
    split: Split,
    *,
    k: int = 10,
    postprocess: str | None = None,
) -> EvaluationResult:
    """Queries = split.test, database = split.train; a query never retrieves its patient or its duplicate.

    `postprocess` (a SPEC, see indexer.vectors.index_postprocess) retrieves through the product's
    index with that post-processing fitted on the database vectors (train) only.
    """
    if len(split.train) == 0 or len(split.test) == 0:
        raise DatasetError("the database (train) and the queries (test) must both be non-empty")
    banned = banned_neighbours(dataset, split)
    depth = max(*METRIC_KS, k)
    if postprocess is None or postprocess == "none":
        neighbours = retrieve(vectors[split.train], vectors[split.test], depth, banned=banned)
    else:
        neighbours = retrieve_postprocessed(
            vectors[split.train], vectors[split.test], depth, banned=banned, postprocess=postprocess
        )
    labels = np.where(neighbours.positions >= 0, dataset.labels[split.train][neighbours.positions], -1)
    result = score_retrieval(
        dataset.labels[split.test], labels, neighbours.similarities, dataset.class_names, k=k
    )
    if len(split.val) > 0:
        _add_calibration(result, dataset, vectors, split, labels, neighbours.similarities, k)
    result.info.update(
        {
            "dataset": dataset.name,
            "database_images": len(split.train),
            "query_images": len(split.test),
            "calibration_images": len(split.val),
            "split": split.how,
            "classes": len(dataset.class_names),
            "exclusion": "same patient or exact duplicate"
            if dataset.patients is not None
            else "exact duplicate (content hash)",
            "excluded_pairs": sum(len(b) for b in banned),
            "postprocess": postprocess or "none",
        }
    )
    return result


def _add_calibration(
    result: EvaluationResult,
    dataset: LabeledDataset,
    vectors: npt.NDArray[np.float32],
    split: Split,
    test_labels: npt.NDArray[np.int64],
    test_sims: npt.NDArray[np.float32],
    k: int,
) -> None:
    """Fit the tempered vote on the val queries; ECE of the product vote and the calibrated one on test."""
    from indexer.prediction import calibration

    n_classes = len(dataset.class_names)
    as_queries = Split(train=split.train, test=split.val, val=split.val, how=split.how)
    found = retrieve(
        vectors[split.train],
        vectors[split.val],
        test_labels.shape[1],
        banned=banned_neighbours(dataset, as_queries),
    )
    val_labels = np.where(found.positions >= 0, dataset.labels[split.train][found.positions], -1)
    from indexer.prediction.constrained import fit_vote_constrained, scores
    from indexer.prediction.vote import one_hot_shares

    fitted = fit_vote_constrained(
        dataset.labels[split.val],
        one_hot_shares(val_labels, n_classes),
        np.asarray(found.similarities, dtype=np.float64),
        n_classes,
        k,
    )
    truth = dataset.labels[split.test]
    raw = calibration.product_vote(test_labels, test_sims, n_classes, k)
    tuned = calibration.tempered_vote(
        test_labels, test_sims, n_classes, k, temperature=fitted.temperature, epsilon=fitted.epsilon
    )
    before, after = scores(truth, raw, n_classes), scores(truth, tuned, n_classes)
    result.metrics["vote_balanced_accuracy"] = before["balanced_accuracy"]
    result.metrics["calibrated_balanced_accuracy"] = after["balanced_accuracy"]
    for row, r_before, r_after in zip(
        result.per_class, before["per_class_recall"], after["per_class_recall"], strict=True
    ):
        row["calibrated_vote_recall_before"], row["calibrated_vote_recall"] = r_before, r_after
    result.metrics["ece_vote"] = metrics.expected_calibration_error(truth, raw)
    result.metrics["ece_calibrated"] = metrics.expected_calibration_error(truth, tuned)
    result.metrics["nll_vote"] = calibration.negative_log_likelihood(truth, raw)
    result.metrics["nll_calibrated"] = calibration.negative_log_likelihood(truth, tuned)
    result.metrics["calibrated_accuracy"] = float((tuned.argmax(axis=1) == truth).mean())
    result.info["calibration"] = (
        f"vote fitted on {len(split.val)} val queries under an accuracy constraint (within "
        f"{fitted.tolerance:g} of the plain vote's accuracy and balanced accuracy, class-balanced NLL): "
        f"T = {fitted.temperature} (None: similarity weights), eps = {fitted.epsilon}"
    )
