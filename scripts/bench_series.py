"""Two-stage series search on synthetic slice vectors: latency vs a brute-force slice search, shortlist recall.

    python scripts/bench_series.py --series 10000 --slices 100 --dim 128 --queries 50 \
        --json benchmarks/series_two_stage_10k.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from indexer.vectors.series import SeriesIndex


def synthetic(series: int, slices: int, dim: int, seed: int) -> list[np.ndarray]:
    """Series in clusters of 50 (same protocol / anatomy), each a random walk of slices around its base."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (max(1, series // 50), dim)).astype(np.float32)
    out = []
    for s in range(series):
        base = centres[s % len(centres)] + rng.normal(0, 0.5, dim).astype(np.float32)
        walk = rng.normal(0, 0.3, (slices, dim)).astype(np.float32).cumsum(axis=0)
        out.append(base + walk)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--query-slices", type=int, default=20)
    parser.add_argument("--shortlists", default="20,100,500")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    volumes = synthetic(args.series, args.slices, args.dim, args.seed)
    index = SeriesIndex(list(range(args.series)), volumes)
    build_s = time.perf_counter() - start
    rng = np.random.default_rng(args.seed + 1)
    queries = []
    for _ in range(args.queries):
        target = int(rng.integers(args.series))
        first = int(rng.integers(0, args.slices - 2 * args.query_slices))
        chosen = np.arange(first, first + 2 * args.query_slices, 2)  # every other slice of a stretch
        noise = rng.normal(0, 0.3, (len(chosen), args.dim)).astype(np.float32)
        queries.append((target, volumes[target][chosen] + noise))
    del volumes
    exact, exact_ms = [], []
    for _, query in queries:
        t = time.perf_counter()
        exact.append([sid for sid, _ in index.brute_force(query, k=10)])
        exact_ms.append((time.perf_counter() - t) * 1000)
    rows = []
    for shortlist in (int(s) for s in args.shortlists.split(",")):
        recall, first, ms = [], [], []
        for (target, query), truth in zip(queries, exact, strict=True):
            t = time.perf_counter()
            hits = index.search(query, k=10, shortlist=shortlist)
            ms.append((time.perf_counter() - t) * 1000)
            recall.append(len({h.series_id for h in hits} & set(truth)) / len(truth))
            first.append(hits[0].series_id == target)
        rows.append(
            {
                "shortlist": shortlist,
                "recall@10_vs_brute_force": float(np.mean(recall)),
                "source_series_first": float(np.mean(first)),
                "median_ms": float(np.median(ms)),
                "p95_ms": float(np.percentile(ms, 95)),
            }
        )
    report = {
        "series": args.series,
        "slices_per_series": args.slices,
        "dim": args.dim,
        "queries": args.queries,
        "query": f"{args.query_slices} slices (every other one of a stretch) of one series + noise sd 0.3",
        "build_s": round(build_s, 1),
        "brute_force": {
            "source_series_first": float(
                np.mean([t[0] == q[0] for t, q in zip(exact, queries, strict=True)])
            ),
            "median_ms": float(np.median(exact_ms)),
            "p95_ms": float(np.percentile(exact_ms, 95)),
        },
        "two_stage": rows,
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
