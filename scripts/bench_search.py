"""Search benchmark: per index kind, build time, bytes per vector, single-query p50/p99, batched QPS, recall@10.

Clustered synthetic unit vectors (the real embedding dimension by default); held-out queries from the same
clusters; recall@10 against exact search; exact flat search is the in-process baseline for the ratios.
Ends by printing one JSON line.

    python scripts/bench_search.py --vectors 100000 --dim 1280 --kinds flat,hnsw,ivf_flat,ivf_sq8,ivf_pq
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from indexer.vectors.index import VectorIndex
from indexer.vectors.kinds import choose_index_kind, default_memory_budget, spec_for_kind


def clustered_vectors(n: int, dim: int, clusters: int, seed: int, spread: float) -> np.ndarray:
    """Unit vectors around `clusters` random centres (embeddings of an archive cluster by anatomy/modality)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        block = centres[rng.integers(0, clusters, stop - start)]
        block += spread * rng.standard_normal(block.shape, dtype=np.float32) / np.sqrt(dim)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=200, help="held-out queries for latency and recall")
    parser.add_argument("--kinds", default="auto,flat,hnsw,ivf_flat,ivf_sq8,ivf_pq")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the centre norm")
    parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    parser.add_argument("--single-queries-max", type=int, default=200, help="cap on single-query timings")
    parser.add_argument("--memory-budget-gib", type=float, default=0.0, help="for auto (0: half the RAM)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    n, dim = args.vectors, args.dim
    started = time.perf_counter()
    data = clustered_vectors(n + args.queries, dim, args.clusters, args.seed, args.spread)
    vectors, queries = data[:n], np.ascontiguousarray(data[n:])
    del data
    ids = np.arange(n, dtype=np.int64) * 2 + 1  # catalog-like, not 0..n-1
    gen_s = time.perf_counter() - started
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, truth_pos = exact.search(queries, 10)
    truth = ids[truth_pos]
    del exact
    budget = int(args.memory_budget_gib * 2**30) or default_memory_budget()
    results: dict[str, dict[str, object]] = {}
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        spec = choose_index_kind(n, dim, budget) if kind == "auto" else spec_for_kind(kind, n, dim)
        label = f"auto={spec.kind}" if kind == "auto" else kind
        t0 = time.perf_counter()
        index = VectorIndex.build(ids, vectors, encoder="bench", spec=spec)
        build_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "i.faiss"
            faiss.write_index(index._index, str(path))
            size = path.stat().st_size
        # An API worker answers one query per thread: single queries run on one faiss thread.
        batch_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        singles = []
        for q in queries[: args.single_queries_max]:
            t = time.perf_counter()
            index.search(q, 10)
            singles.append((time.perf_counter() - t) * 1000.0)
        faiss.omp_set_num_threads(batch_threads)
        t = time.perf_counter()
        batch = index.search(queries, 10)
        batch_s = time.perf_counter() - t
        found = np.full((len(queries), 10), -1, dtype=np.int64)
        for row, result in enumerate(batch):
            found[row, : len(result.ids)] = result.ids
        results[label] = {
            "factory": spec.factory,
            "build_s": round(build_s, 2),
            "bytes_per_vector": round(size / n, 1),
            "p50_ms": round(float(np.percentile(singles, 50)), 3),
            "p99_ms": round(float(np.percentile(singles, 99)), 3),
            "qps": round(len(queries) / batch_s, 1),
            "recall_at_10": round(recall_at_10(found, truth), 4),
            "tuned": index.tuning.to_dict(),
        }
        print(f"{label:>14}: {json.dumps(results[label])}", flush=True)
        del index
    base = results.get("flat")
    if base:
        for figures in results.values():
            figures["p50_speedup_vs_flat"] = round(
                float(base["p50_ms"]) / max(float(figures["p50_ms"]), 1e-9), 2
            )  # type: ignore[arg-type]
    print(
        json.dumps(
            {
                "bench": "search",
                "vectors": n,
                "dim": dim,
                "queries": len(queries),
                "clusters": args.clusters,
                "faiss": faiss.__version__,
                "faiss_threads_batch": faiss.omp_get_max_threads(),
                "faiss_threads_single": 1,
                "cpus": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "machine": platform.processor() or platform.machine(),
                "data_s": round(gen_s, 1),
                "kinds": results,
            }
        )
    )


if __name__ == "__main__":
    main()
