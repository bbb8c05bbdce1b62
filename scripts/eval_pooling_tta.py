"""GeM pooling and horizontal-flip test-time augmentation of the product encoder, measured with `medcbir eval`'s protocol.

One pass over the dataset (torch forward pass, the product's decoding and preprocessing) gives four
vectors per image: the product's average pooling, GeM pooling (p = 3, Radenovic et al.; fixed a
priori), and each averaged with the same pooling of the horizontally flipped image. The average-pooled
vectors are checked against the product's cached ones. Scoring, exclusions, split and the paired
bootstrap are scripts/eval_label_free.py's (database = train, queries = test, no label used).

    MEDCBIR_EMBEDDINGS_BACKEND=torch python scripts/eval_pooling_tta.py retina \
        --datasets ../shared/datasets --cache-dir artifacts/fb/cache --json benchmarks/pooling_tta_retina.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

os.environ["MEDCBIR_EMBEDDINGS_BACKEND"] = "torch"  # the pooling is swapped in the torch model

from eval_label_free import K, chain, dataset_configs, paired_interval, run_method

from indexer.evaluation.protocol import Split, banned_neighbours, embed_dataset, make_split
from indexer.evaluation.runner import EvaluationConfig, build_encoder, prepare_dataset
from indexer.vectors import postprocess as pp

GEM_P = 3.0


class AvgAndGem(torch.nn.Module):
    """Returns the average pooling (what the product embeds) and keeps the GeM pooling of the same maps."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.kept: list[torch.Tensor] = []

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C) average; the GeM (N, C) is appended to `kept`."""
        gem = maps.float().clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
        self.kept.append(gem)
        return maps.mean(dim=(2, 3))


def embed_variants(config: EvaluationConfig) -> tuple[Any, dict[str, npt.NDArray[np.float32]], Any]:
    """The dataset and its four vector sets (avg, gem, avg+flip, gem+flip), unit rows."""
    dataset = prepare_dataset(config)
    encoder = build_encoder(config)
    pool = AvgAndGem(GEM_P)
    encoder.model.global_pool = pool  # type: ignore[attr-defined]
    out: dict[str, list[npt.NDArray[np.float32]]] = {k: [] for k in ("avg", "gem", "avg_flip", "gem_flip")}
    started = time.perf_counter()
    for start in range(0, len(dataset), 64):
        images = [dataset.image(i) for i in range(start, min(start + 64, len(dataset)))]
        for flipped in (False, True):
            pool.kept.clear()
            batch = [np.ascontiguousarray(im[:, ::-1]) for im in images] if flipped else images
            avg = encoder.embed(batch)
            gem = pp.l2_normalise(torch.cat(pool.kept).cpu().numpy())
            out["avg_flip" if flipped else "avg"].append(avg)
            out["gem_flip" if flipped else "gem"].append(gem)
    print(
        f"embedded {len(dataset)} images x 2 orientations in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    stacked = {k: np.concatenate(v) for k, v in out.items()}
    vectors = {
        "avg": stacked["avg"],
        "gem": stacked["gem"],
        "avg + flip": pp.l2_normalise(stacked["avg"] + stacked["avg_flip"]),
        "gem + flip": pp.l2_normalise(stacked["gem"] + stacked["gem_flip"]),
    }
    return dataset, vectors, encoder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=["pneu", "retina", "brain", "covid"])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--cache-dir", type=Path, default=Path("artifacts/fb/cache"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config = EvaluationConfig(
        cache_dir=args.cache_dir, device="cpu", **dataset_configs(args.datasets)[args.name]
    )
    dataset, vectors, encoder = embed_variants(config)
    size = getattr(encoder, "input_size", None)
    cached = embed_dataset(
        dataset, encoder, cache_dir=args.cache_dir, cache_tag=f"-{size[0]}px" if size else "", progress=False
    )
    agreement = float(np.min(np.sum(cached * vectors["avg"], axis=1)))
    print(f"avg pooling vs the product's cached vectors: min cosine {agreement:.6f}", flush=True)
    split: Split = make_split(
        dataset, seed=config.seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction
    )
    banned = banned_neighbours(dataset, split)
    if dataset.patients is None:
        groups = np.arange(len(split.test))
    else:
        groups = np.unique(np.asarray(dataset.patients)[split.test], return_inverse=True)[1]
    rows: dict[str, Any] = {}
    base = None
    for label, vecs in vectors.items():
        result = run_method(chain(), dataset, vecs, split.train, split.test, banned)
        row: dict[str, Any] = {
            m: round(100 * result["metrics"][m], 2) for m in ("map@10", "precision@10", "map@5")
        }
        if base is None:
            base = result["ap10"]
        else:
            row["map@10_diff_95ci"] = [round(x, 2) for x in paired_interval(result["ap10"] - base, groups)]
        rows[label] = row
        print(f"{args.name:7s} {label:12s} " + " ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    if args.json is not None:
        report = {
            "dataset": dataset.name,
            "encoder": encoder.name,
            "k": K,
            "gem_p": GEM_P,
            "database_images": len(split.train),
            "query_images": len(split.test),
            "avg_vs_product_min_cosine": round(agreement, 6),
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
