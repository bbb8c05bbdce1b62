"""Paired bootstrap, adapted vs ImageNet Lite0 at the same input size: per-query AP@5, AP@10, hit@1 (MedMNIST protocol).

Reuses `medcbir eval --cache-dir` embeddings when present (docs/EVALUATION.md, "Label-free adaptation"):
    python scripts/eval_adapt_bootstrap.py NPZ CHECKPOINT --size 128 --cache-dir DIR --json OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from indexer.evaluation import metrics
from indexer.evaluation.protocol import banned_neighbours, embed_dataset, make_split, retrieve
from indexer.evaluation.runner import EvaluationConfig, build_encoder, prepare_dataset


def per_query(config: EvaluationConfig, cache: Path | None) -> dict[str, np.ndarray]:
    dataset = prepare_dataset(config)
    split = make_split(
        dataset, seed=config.seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction
    )
    encoder = build_encoder(config)
    size = encoder.input_size
    vectors = embed_dataset(dataset, encoder, cache_dir=cache, cache_tag=f"-{size[0]}px", progress=False)
    found = retrieve(vectors[split.train], vectors[split.test], 10, banned=banned_neighbours(dataset, split))
    labels = np.where(found.positions >= 0, dataset.labels[split.train][found.positions], -1)
    relevant = metrics.relevance(dataset.labels[split.test], labels)
    return {
        "ap5": metrics.average_precision_at_k(relevant[:, :5], 5),
        "ap10": metrics.average_precision_at_k(relevant, 10),
        "hit1": metrics.hit_at_k(relevant, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--resamples", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = per_query(EvaluationConfig(data=args.data, image_size=args.size), args.cache_dir)
    adapted = per_query(
        EvaluationConfig(data=args.data, image_size=args.size, checkpoint=args.checkpoint), args.cache_dir
    )
    rng = np.random.default_rng(0)
    n = len(base["ap10"])
    picks = rng.integers(0, n, size=(args.resamples, n))
    out: dict[str, object] = {
        "data": str(args.data),
        "checkpoint": args.checkpoint.name,
        "input_size": args.size,
        "queries": n,
        "resamples": args.resamples,
    }
    for metric in ("ap5", "ap10", "hit1"):
        diff = adapted[metric] - base[metric]
        low, high = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
        out[metric] = {
            "imagenet": round(100 * float(base[metric].mean()), 2),
            "adapted": round(100 * float(adapted[metric].mean()), 2),
            "difference": round(100 * float(diff.mean()), 2),
            "ci95": [round(100 * float(low), 2), round(100 * float(high), 2)],
        }
        print(
            f"{metric}: ImageNet {100 * base[metric].mean():.2f} adapted {100 * adapted[metric].mean():.2f} "
            f"diff {100 * diff.mean():+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
