"""Cost of the IVF-PQ re-rank's exact-vector fetch: `Catalog.stored_vectors` for k x rerank random ids.

    python scripts/bench_catalog_fetch.py --images 20000 --fetch 100 --repeats 200 \
        --output benchmarks/catalog_fetch_20k.json

Fills a fresh SQLite catalog with `--images` image rows (one case each, random unit vectors of the
default encoder's dimension, as the writer stores them), then times `stored_vectors` on `--fetch`
random ids, `--repeats` times, and prints one JSON line (p50/p99 in ms).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer.catalog import Catalog, Image

ENCODER = "bench-encoder"


def fill(catalog: Catalog, images: int, dim: int, rng: np.random.Generator) -> None:
    """`images` rows with random unit vectors, written in batches of 1000."""
    for start in range(0, images, 1000):
        vectors = rng.standard_normal((min(1000, images - start), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with catalog.session() as session:
            for offset, vector in enumerate(vectors):
                n = start + offset
                case = catalog.get_or_create_case(
                    session, f"bench-{n}", patient_ref=None, study_instance_uid=None, report=None, labels=[]
                )
                session.add(
                    Image(
                        case=case,
                        source_uri=f"file:///bench/{n}.png",
                        sha256=f"{n:064x}",
                        format="png",
                        encoder=ENCODER,
                        embedding=vector.tobytes(),
                    )
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--fetch", type=int, default=100, help="ids per fetch (k x rerank)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(f"sqlite:///{Path(tmp) / 'catalog.db'}")
        started = time.monotonic()
        fill(catalog, args.images, args.dim, rng)
        fill_s = time.monotonic() - started
        ids = np.fromiter(catalog.vector_ids(ENCODER), dtype=np.int64)
        assert len(ids) == args.images, len(ids)
        timings = []
        for _ in range(args.repeats):
            wanted = rng.choice(ids, size=args.fetch, replace=False)
            tick = time.perf_counter()
            vectors = catalog.stored_vectors(wanted, encoder=ENCODER, dim=args.dim)
            timings.append((time.perf_counter() - tick) * 1000)
            assert vectors.shape == (args.fetch, args.dim)
    result = {
        "bench": "catalog_fetch",
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "images": args.images,
        "dim": args.dim,
        "fetch": args.fetch,
        "repeats": args.repeats,
        "fill_s": round(fill_s, 1),
        "p50_ms": round(float(np.percentile(timings, 50)), 2),
        "p99_ms": round(float(np.percentile(timings, 99)), 2),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(result))
    if args.output:
        args.output.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
