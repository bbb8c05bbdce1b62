"""Calibration table (issue 18 item 5): accuracy, balanced accuracy and ECE before/after, vote and head, per dataset.

Every labeled dataset in ../shared/datasets is embedded with the product encoder (efficientnet_lite0,
cached under --cache), then calibrated exactly as `medcbir train-head` does it (indexer.prediction:
fit_vote on leave-one-patient-out neighbours, train_head on a patient-grouped split). Large sets are
subsampled (a fixed seed-0 sample, sizes in SUBSAMPLE) so the whole table runs in minutes on 2 cores.

    python scripts/calibration_table.py --datasets ../shared/datasets --cache /tmp/calib_cache \
        --output benchmarks/calibration_table.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexer.evaluation.datasets import LabeledDataset, ManifestSpec
from indexer.evaluation.protocol import embed_dataset
from indexer.evaluation.runner import EvaluationConfig, build_encoder, prepare_dataset
from indexer.prediction.heads import train_head
from indexer.prediction.labeled import LabeledEmbeddings
from indexer.prediction.vote_fit import fit_vote

# Images kept per dataset (a seed-0 sample of the de-duplicated set); None keeps every image.
SUBSAMPLE: dict[str, int | None] = {
    "covid": None,
    "pneumoniamnist": 600,
    "retinamnist": 600,
    "brain-tumor-mri": 600,
}


def dataset_configs(root: Path, cache: Path) -> dict[str, EvaluationConfig]:
    """The four labeled datasets, as `medcbir eval` reads them (covid: labeled X-rays, patients kept)."""
    common: dict[str, Any] = {"cache_dir": cache, "device": "cpu"}
    return {
        "covid": EvaluationConfig(
            data=root / "covid-chestxray/images",
            manifest=root / "covid-chestxray/metadata.csv",
            spec=ManifestSpec(
                path_column="filename",
                label_column="finding",
                patient_column="patientid",
                include=(("modality", "X-ray"),),
                ignore_labels=("todo",),
            ),
            min_class_count=2,
            **common,
        ),
        "pneumoniamnist": EvaluationConfig(
            data=root / "medmnist/pneumoniamnist_reconstructed.npz",
            max_images=SUBSAMPLE["pneumoniamnist"],
            **common,
        ),
        "retinamnist": EvaluationConfig(
            data=root / "medmnist/retinamnist.npz", max_images=SUBSAMPLE["retinamnist"], **common
        ),
        "brain-tumor-mri": EvaluationConfig(
            data=root / "brain-tumor-mri",
            manifest=root / "brain-tumor-mri/labels.csv",
            dedupe=True,
            spec=ManifestSpec(split_column="split", hash_column="md5"),
            max_images=SUBSAMPLE["brain-tumor-mri"],
            **common,
        ),
    }


def labeled_embeddings(dataset: LabeledDataset, vectors: np.ndarray) -> LabeledEmbeddings:
    """The dataset as the catalog's labeled vectors: one group per patient (per image when no patient ids)."""
    groups = (
        [f"patient:{p}" for p in dataset.patients]
        if dataset.patients is not None
        else [f"image:{i}" for i in range(len(dataset))]
    )
    labels = list(dataset.class_names)
    return LabeledEmbeddings(
        ids=np.arange(1, len(dataset) + 1, dtype=np.int64),
        vectors=vectors.astype(np.float32),
        groups=groups,
        classes=dataset.labels.astype(np.int64),
        labels=labels,
        multi_label_images=0,
        left_out_classes={},
        label_sets=[(labels[int(c)],) for c in dataset.labels],
    )


def embedded(name: str, config: EvaluationConfig) -> tuple[LabeledDataset, np.ndarray]:
    """The prepared dataset and its vectors (from the cache when present)."""
    dataset = prepare_dataset(config)
    vectors = embed_dataset(dataset, build_encoder(config), cache_dir=config.cache_dir, progress=False)
    return dataset, vectors


def _subset(data: LabeledEmbeddings, keep: np.ndarray) -> LabeledEmbeddings:
    """Only the classes with images of >= 2 patients can be held out; the rest stay as neighbours only."""
    return (
        data
        if keep.all()
        else LabeledEmbeddings(
            ids=data.ids,
            vectors=data.vectors,
            groups=data.groups,
            classes=np.where(keep, data.classes, -1),
            labels=data.labels,
            multi_label_images=0,
            left_out_classes={},
            label_sets=data.label_sets,
        )
    )


def table_row(name: str, dataset: LabeledDataset, vectors: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Vote (before/after on held-out patients) and head (validation; cross-fitted ECE) for one dataset."""
    data = labeled_embeddings(dataset, vectors)
    started = time.perf_counter()
    vote = fit_vote(None, name, data=data, seed=seed).card  # type: ignore[arg-type]
    row: dict[str, Any] = {
        "dataset": name,
        "images": len(dataset),
        "subsample": SUBSAMPLE.get(name),
        "classes": dict(zip(dataset.class_names, np.bincount(dataset.labels).tolist(), strict=True)),
        "patients": len(set(data.groups)) if dataset.patients is not None else None,
        "vote": {
            key: vote.get(key)
            for key in (
                "n_fit",
                "n_holdout",
                "holdout_accuracy_before",
                "holdout_accuracy",
                "holdout_balanced_accuracy_before",
                "holdout_balanced_accuracy",
                "holdout_ece_before",
                "holdout_ece_after",
                "holdout_nll_before",
                "holdout_nll_after",
                "holdout_per_class_recall_before",
                "holdout_per_class_recall",
            )
        },
        "vote_fit": vote.get("fit"),
    }
    for weighting in ("balanced", "none"):
        head = train_head(None, name, data=data, seed=seed, class_weighting=weighting).card  # type: ignore[arg-type]
        row[f"head_{weighting}"] = {
            key: head.get(key)
            for key in (
                "n_train",
                "n_val",
                "val_accuracy",
                "val_balanced_accuracy",
                "val_per_class_recall",
                "val_ece_before",
                "val_ece_after",
                "val_ece_before_crossfit",
                "val_ece_after_crossfit",
                "temperature",
                "temperature_fitted",
                "temperature_kept",
                "l2",
            )
        }
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per dataset and predictor: accuracy, balanced accuracy and ECE before -> after."""
    print(
        "dataset          predictor          n_eval  acc before->after  bal.acc before->after  ECE before->after  T"
    )
    for row in rows:
        v = row["vote"]
        t = row["vote_fit"]["temperature"] if row["vote_fit"] else None
        print(
            f"{row['dataset']:<16} vote (held-out)    {v['n_holdout'] or 0:>6}  "
            f"{_fmt(v['holdout_accuracy_before'])}->{_fmt(v['holdout_accuracy'])}        "
            f"{_fmt(v['holdout_balanced_accuracy_before'])}->{_fmt(v['holdout_balanced_accuracy'])}            "
            f"{_fmt(v['holdout_ece_before'])}->{_fmt(v['holdout_ece_after'])}      {t if t is not None else 'sim.weights'}"
        )
        for weighting in ("balanced", "none"):
            h = row[f"head_{weighting}"]
            refused = "" if h["temperature_kept"] else f" (fitted {h['temperature_fitted']:.3g} refused)"
            print(
                f"{'':<16} head ({weighting:<8}) val {h['n_val']:>6}  "
                f"{_fmt(h['val_accuracy'])}->{_fmt(h['val_accuracy'])}        "
                f"{_fmt(h['val_balanced_accuracy'])}->{_fmt(h['val_balanced_accuracy'])}            "
                f"{_fmt(h['val_ece_before_crossfit'])}->{_fmt(h['val_ece_after_crossfit'])} x-fit "
                f"T={h['temperature']:.3g}{refused}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/calib_cache"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/calibration_table.json"))
    parser.add_argument("--only", nargs="*", help="dataset names to run (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.datasets.is_dir():
        raise SystemExit(f"{args.datasets} is absent: point --datasets at the shared datasets folder")
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, config in dataset_configs(args.datasets, args.cache).items():
        if args.only and name not in args.only:
            continue
        dataset, vectors = embedded(name, config)
        rows.append(table_row(name, dataset, vectors))
    print_table(rows)
    args.output.write_text(
        json.dumps(
            {
                "what": "kNN vote: leave-one-patient-out neighbours, (T, eps) fitted on half the patients under the "
                "accuracy constraint, before/after on the other half; head: linear probe on a patient-grouped "
                "80/20 split, ECE before/after cross-fitted on the validation patients (accuracy is unchanged by T)",
                "encoder": "efficientnet_lite0 (ImageNet weights)",
                "subsample": {k: v for k, v in SUBSAMPLE.items()},
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
