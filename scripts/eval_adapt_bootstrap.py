"""Paired bootstrap, adapted vs ImageNet Lite0 at the same input size: per-query AP@5, AP@10, hit@1.

Reuses `medcbir eval --cache-dir` embeddings when present (docs/EVALUATION.md, "Label-free adaptation"):
    python scripts/eval_adapt_bootstrap.py NPZ CHECKPOINT --size 128 --cache-dir DIR --json OUT
A folder + manifest takes eval's options (--manifest, --split-column, --hash-column, --dedupe, --path-column,
--label-column, --patient-column, --include, --ignore-label, --seed); with patient ids the queries are
resampled by patient (a patient's queries together), else one by one. `--base-checkpoint FILE` compares
with that checkpoint instead of ImageNet (e.g. adapt + finetune vs finetune alone).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from indexer.evaluation import metrics
from indexer.evaluation.datasets import ManifestSpec
from indexer.evaluation.protocol import banned_neighbours, embed_dataset, make_split, retrieve
from indexer.evaluation.runner import EvaluationConfig, build_encoder, prepare_dataset


def per_query(config: EvaluationConfig, cache: Path | None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-query AP@5, AP@10, hit@1 and each query's resampling unit (patient, else the query itself)."""
    dataset = prepare_dataset(config)
    split = make_split(
        dataset, seed=config.seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction
    )
    encoder = build_encoder(config)
    size = getattr(encoder, "input_size", None)  # the tag `medcbir eval --cache-dir` files carry
    tag = f"-{size[0]}px" if size else ""
    vectors = embed_dataset(dataset, encoder, cache_dir=cache, cache_tag=tag, progress=False)
    found = retrieve(vectors[split.train], vectors[split.test], 10, banned=banned_neighbours(dataset, split))
    labels = np.where(found.positions >= 0, dataset.labels[split.train][found.positions], -1)
    relevant = metrics.relevance(dataset.labels[split.test], labels)
    units = [dataset.patients[i] if dataset.patients else str(i) for i in split.test]
    return {
        "ap5": metrics.average_precision_at_k(relevant[:, :5], 5),
        "ap10": metrics.average_precision_at_k(relevant, 10),
        "hit1": metrics.hit_at_k(relevant, 1),
    }, units


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--base-checkpoint", type=Path, help="compare with this instead of ImageNet weights")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--resamples", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--path-column", default="path")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--patient-column")
    parser.add_argument("--split-column")
    parser.add_argument("--hash-column")
    parser.add_argument("--include", action="append", default=[], help="COLUMN=VALUE, as in eval")
    parser.add_argument("--ignore-label", action="append", default=[])
    parser.add_argument("--dedupe", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="eval's --seed (its patient split)")
    args = parser.parse_args()
    spec = ManifestSpec(
        path_column=args.path_column,
        label_column=args.label_column,
        patient_column=args.patient_column,
        split_column=args.split_column,
        hash_column=args.hash_column,
        include=tuple((c.strip(), v.strip()) for c, _, v in (x.partition("=") for x in args.include)),
        ignore_labels=tuple(args.ignore_label),
    )
    config = EvaluationConfig(
        data=args.data,
        manifest=args.manifest,
        spec=spec,
        dedupe=args.dedupe,
        seed=args.seed,
        image_size=args.size,
    )
    base, units = per_query(replace(config, checkpoint=args.base_checkpoint), args.cache_dir)
    base_name = "imagenet" if args.base_checkpoint is None else "base"
    adapted, _ = per_query(replace(config, checkpoint=args.checkpoint), args.cache_dir)
    # resample units (patients, else queries): a unit's queries enter or leave together
    names = sorted(set(units))
    unit_of = np.array([names.index(u) for u in units])
    counts = np.bincount(unit_of, minlength=len(names))
    rng = np.random.default_rng(0)
    n = len(base["ap10"])
    picks = rng.integers(0, len(names), size=(args.resamples, len(names)))
    weights = np.stack([np.bincount(row, minlength=len(names)) for row in picks])  # times each unit drawn
    out: dict[str, object] = {
        "data": str(args.data),
        "manifest": str(args.manifest) if args.manifest else None,
        "checkpoint": args.checkpoint.name,
        "base": "ImageNet" if args.base_checkpoint is None else args.base_checkpoint.name,
        "input_size": args.size,
        "queries": n,
        "resampled_units": len(names),
        "resampled_by": "patient" if len(names) < n else "query",
        "resamples": args.resamples,
    }
    for metric in ("ap5", "ap10", "hit1"):
        diff = adapted[metric] - base[metric]
        sums = np.bincount(unit_of, weights=diff, minlength=len(names))
        low, high = np.percentile((weights @ sums) / (weights @ counts), [2.5, 97.5])
        out[metric] = {
            base_name: round(100 * float(base[metric].mean()), 2),
            "adapted": round(100 * float(adapted[metric].mean()), 2),
            "difference": round(100 * float(diff.mean()), 2),
            "ci95": [round(100 * float(low), 2), round(100 * float(high), 2)],
        }
        print(
            f"{metric}: {base_name} {100 * base[metric].mean():.2f} adapted {100 * adapted[metric].mean():.2f} "
            f"diff {100 * diff.mean():+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
