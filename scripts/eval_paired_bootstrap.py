"""Paired bootstrap of encoder differences: per-query AP@10 and top-1 hit, resampled by query or patient.

Recomputes, with the library's own evaluation code, the per-query AP@10 and top-1 hit of the rows of
docs/EVALUATION.md's "Encoders compared on every dataset" table, then resamples queries (patients for
covid-chestxray) 5000 times and prints each comparison's difference in points with its 95 % interval
and the top-1 discordant pairs. Fine-tuned rows need the checkpoints the doc's commands write.

    python scripts/eval_paired_bootstrap.py --datasets ../shared/datasets --runs artifacts/enc pneu covid
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from indexer.evaluation import metrics
from indexer.evaluation.datasets import ManifestSpec
from indexer.evaluation.protocol import banned_neighbours, embed_dataset, make_split, retrieve
from indexer.evaluation.runner import EvaluationConfig, build_encoder, prepare_dataset

# row name -> (encoder, checkpoint folder under --runs or None, input size or None for the default)
ROWS: dict[str, tuple[str, str | None, int | None]] = {
    "lite0": ("efficientnet_lite0", None, None),
    "lite1": ("efficientnet_lite1", None, 224),
    "lite2": ("efficientnet_lite2", None, 224),
    "lite0-128": ("efficientnet_lite0", None, 128),
    "ft128": ("efficientnet_lite0", "ckpt-{dataset}", 128),
}
EXTRA_ROWS = {"brain": {"ftfull128": ("efficientnet_lite0", "ckpt-brainfull", 128)}}
PAIRS = (
    ("lite1", "lite0"),
    ("lite2", "lite0"),
    ("lite0-128", "lite0"),
    ("ft128", "lite0-128"),
    ("ft128", "lite0"),
    ("ftfull128", "lite0-128"),
)


def dataset_configs(root: Path) -> dict[str, dict[str, Any]]:
    """The four datasets with the doc's protocol options."""
    return {
        "pneu": {"data": root / "medmnist/pneumoniamnist_reconstructed.npz"},
        "retina": {"data": root / "medmnist/retinamnist.npz"},
        "brain": {
            "data": root / "brain-tumor-mri",
            "manifest": root / "brain-tumor-mri/labels.csv",
            "dedupe": True,
            "spec": ManifestSpec(split_column="split", hash_column="md5"),
        },
        "covid": {
            "data": root / "covid-chestxray/images",
            "manifest": root / "covid-chestxray/metadata.csv",
            "seed": 0,
            "spec": ManifestSpec(
                path_column="filename",
                label_column="finding",
                patient_column="patientid",
                include=(("modality", "X-ray"),),
                ignore_labels=("todo",),
            ),
        },
    }


def newest_checkpoint(folder: Path) -> Path:
    """The most recently written .pth in a `medcbir finetune --output-dir` folder."""
    found = sorted(folder.glob("*.pth"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no checkpoint in {folder}: run the doc's `medcbir finetune` command first")
    return found[-1]


def per_query(name: str, options: dict[str, Any], runs: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-query AP@10 and hit@1 of each row on one dataset, and the resampling group of each query."""
    out: dict[str, np.ndarray] = {}
    groups = np.empty(0, dtype=np.int64)
    for row, (encoder, folder, size) in {**ROWS, **EXTRA_ROWS.get(name, {})}.items():
        checkpoint = newest_checkpoint(runs / folder.format(dataset=name)) if folder else None
        config = EvaluationConfig(encoder=encoder, checkpoint=checkpoint, image_size=size, **options)
        dataset = prepare_dataset(config)
        split = make_split(
            dataset, seed=config.seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction
        )
        vectors = embed_dataset(dataset, build_encoder(config), progress=False)
        found = retrieve(
            vectors[split.train], vectors[split.test], 10, banned=banned_neighbours(dataset, split)
        )
        labels = np.where(found.positions >= 0, dataset.labels[split.train][found.positions], -1)
        relevant = metrics.relevance(dataset.labels[split.test], labels)
        out[f"{row}_ap10"] = metrics.average_precision_at_k(relevant, 10)
        out[f"{row}_hit1"] = metrics.hit_at_k(relevant, 1)
        print(f"{name} {row}: mAP@10 {out[f'{row}_ap10'].mean():.4f} ACC@1 {out[f'{row}_hit1'].mean():.4f}")
        if dataset.patients is None:
            groups = np.arange(len(split.test))
        else:
            groups = np.unique(np.asarray(dataset.patients)[split.test], return_inverse=True)[1]
    return out, groups


def bootstrap(name: str, values: dict[str, np.ndarray], groups: np.ndarray, resamples: int) -> None:
    """Print each pair's difference in points, its 95 % cluster-bootstrap interval and discordant pairs."""
    rng = np.random.default_rng(0)
    n_groups = int(groups.max()) + 1
    counts = np.bincount(groups, minlength=n_groups)
    for first, second in PAIRS:
        if f"{first}_ap10" not in values:
            continue
        for metric in ("ap10", "hit1"):
            a, b = values[f"{first}_{metric}"], values[f"{second}_{metric}"]
            diff = a - b
            sums = np.bincount(groups, weights=diff, minlength=n_groups)
            picks = rng.integers(0, n_groups, size=(resamples, n_groups))
            means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
            low, high = np.percentile(means, [2.5, 97.5])
            extra = ""
            if metric == "hit1":
                only_first, only_second = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
                extra = f"  top-1 only first {only_first} / only second {only_second}"
            print(
                f"{name} {first} - {second} {metric}: {100 * diff.mean():+.2f} "
                f"[{100 * low:+.2f}, {100 * high:+.2f}]{extra}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", default=["pneu", "retina", "brain", "covid"])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument(
        "--runs", type=Path, default=Path("artifacts/enc"), help="the doc's --output-dir root"
    )
    parser.add_argument("--resamples", type=int, default=5000)
    args = parser.parse_args()
    configs = dataset_configs(args.datasets)
    for name in args.names:
        if name not in configs:
            raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(configs)}")
        values, groups = per_query(name, configs[name], args.runs)
        bootstrap(name, values, groups, args.resamples)


if __name__ == "__main__":
    main()
