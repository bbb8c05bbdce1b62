"""`medcbir finetune` as a function: patient-held-out split, metric-learning fine-tune, versioned checkpoint.

The split: queries (test) are held out from training entirely; validation patients (for picking the
epoch) are the dataset's val split, or carved from train by patient (by content hash without
patient ids). The fine-tuned encoder and the starting (ImageNet) encoder are both scored on the
held-out test queries against the training images as the database, at the same input size.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from embeddings import create_encoder
from embeddings.training import with_input_size
from embeddings.training.finetune import (
    FinetuneConfig,
    FinetuneOutcome,
    config_card,
    finetune_encoder,
    save_checkpoint,
)
from indexer.evaluation import metrics
from indexer.evaluation.datasets import LabeledDataset
from indexer.evaluation.protocol import (
    EvaluationResult,
    Split,
    evaluate_vectors,
    group_keys,
    grouped_split,
    make_split,
    retrieve,
)
from indexer.evaluation.runner import EvaluationConfig, prepare_dataset

log = logging.getLogger(__name__)

VAL_K = 10


@dataclass
class FinetuneReport:
    """What a fine-tune produced and how it measured on held-out queries."""

    checkpoint: Path | None
    card: dict[str, Any]
    outcome: FinetuneOutcome
    before: EvaluationResult
    after: EvaluationResult
    split: Split
    extra: dict[str, Any] = field(default_factory=dict)


def training_split(dataset: LabeledDataset, *, seed: int, val_fraction: float = 0.15) -> Split:
    """The evaluation split, with validation patients carved out of train when the dataset has none."""
    split = make_split(dataset, seed=seed)
    if len(split.val) > 0:
        return split
    groups = group_keys(dataset)
    train_groups = [groups[i] for i in split.train]
    # grouped_split deals its first share to "test": here that share is the validation set.
    rest, _, carved = grouped_split(train_groups, seed=seed, test_fraction=val_fraction, val_fraction=0.0)
    return Split(
        train=split.train[rest],
        val=split.train[carved],
        test=split.test,
        how=f"{split.how}; val = {val_fraction:.0%} of train by group, seed {seed}",
    )


def split_groups(dataset: LabeledDataset, split: Split) -> dict[str, int]:
    """Patients (or content groups) per part, and how many sit in two parts (0 for a held-out split)."""
    groups = group_keys(dataset)
    parts = {
        name: {groups[int(i)] for i in positions}
        for name, positions in (("train", split.train), ("val", split.val), ("test", split.test))
    }
    return {
        **{name: len(members) for name, members in parts.items()},
        "shared_train_test": len(parts["train"] & parts["test"]),
        "shared_train_val": len(parts["train"] & parts["val"]),
        "shared_val_test": len(parts["val"] & parts["test"]),
    }


def map_score(k: int = VAL_K) -> Any:
    """A ScoreFunction: mAP@k of the queries against the database by exact inner product."""

    def score(
        database: npt.NDArray[np.float32],
        database_labels: npt.NDArray[np.int64],
        queries: npt.NDArray[np.float32],
        query_labels: npt.NDArray[np.int64],
    ) -> float:
        found = retrieve(database, queries, k)
        labels = np.where(found.positions >= 0, database_labels[found.positions], -1)
        relevant = metrics.relevance(query_labels, labels)
        return float(metrics.average_precision_at_k(relevant, k).mean())

    return score


def run_finetune(
    eval_config: EvaluationConfig,
    config: FinetuneConfig,
    *,
    output_dir: Path | None,
    trunk_cache_dir: Path | None = None,
    progress: bool = True,
) -> FinetuneReport:
    """Fine-tune `eval_config.encoder` on `eval_config.data` and save `<output_dir>/<name>-<date>-<hash>.pth`."""
    dataset = prepare_dataset(eval_config)
    split = training_split(dataset, seed=config.seed)
    base = create_encoder(eval_config.encoder, device=eval_config.device, checkpoint=eval_config.checkpoint)
    base_name = base.name
    encoder = with_input_size(base, config.input_size)
    cache = None
    if trunk_cache_dir is not None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base_name)
        cache = trunk_cache_dir / (
            f"trunk-{dataset.name}-{dataset.identity()}-{safe}-{config.input_size}px-t{config.trainable_stages}.pt"
        )
    outcome = finetune_encoder(
        encoder,
        dataset,
        dataset.labels,
        split.train,
        split.val,
        map_score(VAL_K),
        config,
        trunk_cache=cache,
        progress=progress,
    )
    held_out = Split(train=split.train, val=split.val, test=split.test, how=split.how)
    before = evaluate_vectors(dataset, outcome.vectors_before, held_out, k=VAL_K)
    after = evaluate_vectors(dataset, outcome.vectors_after, held_out, k=VAL_K)
    card: dict[str, Any] = {
        "base_encoder": eval_config.encoder,
        "base_weights": base_name,
        "load_with": f"create_encoder({eval_config.encoder!r}, checkpoint=FILE)",
        "data": "catalog of " + str(eval_config.data) if eval_config.from_catalog else str(eval_config.data),
        "manifest": str(eval_config.manifest) if eval_config.manifest else None,
        "dataset": dataset.name,
        "dataset_identity": dataset.identity(),
        "classes": dataset.class_names,
        "split": split.how,
        "split_groups": split_groups(dataset, split),
        "train_images": len(split.train),
        "val_images": len(split.val),
        "test_images": len(split.test),
        "loss": config.loss,
        "hyperparameters": config_card(config),
        "best_epoch": outcome.best_epoch,
        f"val_map@{VAL_K}_before": outcome.baseline_score,
        f"val_map@{VAL_K}": outcome.best_score,
        f"test_map@{VAL_K}_before": before.metrics[f"map@{VAL_K}"],
        f"test_map@{VAL_K}_after": after.metrics[f"map@{VAL_K}"],
        "history": outcome.history,
        "elapsed_s": round(outcome.elapsed_s, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}, torch threads {torch.get_num_threads()}, "
        f"device {encoder.device}",
    }
    card.update(dataset.provenance)  # e.g. what a catalog dataset left out, and why
    path = None
    if output_dir is not None:
        stem = f"{eval_config.encoder}-ft-{dataset.name}"
        path = save_checkpoint(outcome.model, output_dir, stem, card)
    return FinetuneReport(
        checkpoint=path, card=card, outcome=outcome, before=before, after=after, split=split
    )
