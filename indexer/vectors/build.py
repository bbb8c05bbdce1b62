"""Building an index: from arrays in memory, or streamed from a VectorSource (the catalog); open-or-rebuild."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.errors import IndexCorruptError
from indexer.vectors.index import VectorIndex
from indexer.vectors.kinds import IndexSpec, choose_index_kind, default_memory_budget
from indexer.vectors.persistence import saved_spec
from indexer.vectors.store import VectorSource, in_memory_vector_lookup, source_lookup
from indexer.vectors.tuning import RECALL_K, TARGET_RECALL, TUNING_QUERIES, exact_topk

log = logging.getLogger(__name__)


def build_from_arrays(
    ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    *,
    encoder: str,
    spec: IndexSpec | None = None,
    memory_budget_bytes: int | None = None,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> VectorIndex:
    """Build an index of the chosen (or given) kind over in-memory vectors: train, add, tune."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = vectors.shape
    budget = memory_budget_bytes or default_memory_budget()
    spec = spec or choose_index_kind(n, dim, budget)
    rng = np.random.default_rng(seed)
    index = VectorIndex(dim, encoder, spec=spec)
    if spec.kind == "ivf_pq":
        index.vector_lookup = in_memory_vector_lookup(ids, vectors)
    if spec.needs_training:
        sample = rng.choice(n, size=min(n, spec.train_size), replace=False)
        index.train(vectors[np.sort(sample)])
    held_out = np.zeros(n, dtype=bool)
    if not spec.exact:
        held_out[rng.choice(n, size=min(TUNING_QUERIES, max(1, n // 10)), replace=False)] = True
    # The tuning queries are added last: tuned against an index that does not hold them, they are
    # true held-out queries (a graph search that starts next to its own node would flatter HNSW).
    rest = np.flatnonzero(~held_out)
    for start in range(0, len(rest), 100_000):
        part = rest[start : start + 100_000]
        index.add(ids[part], vectors[part])
    if held_out.any():
        chunks = (
            (ids[rest[i : i + 100_000]], vectors[rest[i : i + 100_000]]) for i in range(0, len(rest), 100_000)
        )
        truth = exact_topk(vectors[held_out], chunks, RECALL_K)
        index.tune(vectors[held_out], truth, target_recall)
        index.add(ids[held_out], vectors[held_out])
    return index


def build_from_source(
    source: VectorSource,
    *,
    encoder: str,
    dim: int,
    spec: IndexSpec | None = None,
    memory_budget_bytes: int | None = None,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> VectorIndex:
    """Rebuild from the stored embeddings (the catalog's: no image is re-encoded), in the chosen kind.

    Vectors are streamed: only the training sample and the tuning queries are held in memory.
    """
    all_ids = source.image_ids_where(encoder=encoder)
    spec = spec or choose_index_kind(len(all_ids), dim, memory_budget_bytes or default_memory_budget())
    index = VectorIndex(dim, encoder, spec=spec)
    index.vector_lookup = source_lookup(source, encoder, dim)
    rng = np.random.default_rng(seed)
    if spec.needs_training and len(all_ids):
        sample_ids = np.sort(rng.choice(all_ids, size=min(len(all_ids), spec.train_size), replace=False))
        index.train(index.vector_lookup(sample_ids))
    query_ids = np.empty(0, np.int64)
    if not spec.exact:
        query_ids = np.sort(
            rng.choice(all_ids, size=min(TUNING_QUERIES, max(1, len(all_ids) // 10)), replace=False)
        )

    def stream() -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        for ids, vectors in source.embeddings(encoder):
            keep = ~np.isin(ids, query_ids)  # held out until tuned (see build_from_arrays)
            index.add(ids[keep], vectors[keep])
            yield ids[keep], vectors[keep]

    if len(query_ids) == 0:
        for _ in stream():
            pass
    else:
        queries = index.vector_lookup(query_ids)
        truth = exact_topk(queries, stream(), RECALL_K)
        index.tune(queries, truth, target_recall)
        index.add(query_ids, queries)
    return index


def open_index(path: Path, source: VectorSource, *, encoder: str, dim: int) -> VectorIndex:
    """Load the saved index if it matches the source (the catalog); otherwise rebuild it loudly and save it."""
    if not path.exists() and source.image_ids_where(encoder=encoder).size == 0:
        index = VectorIndex(dim, encoder)  # a new archive: nothing to rebuild, nothing to warn about
        index.vector_lookup = source_lookup(source, encoder, dim)
        return index
    try:
        index = VectorIndex.load(path, encoder=encoder, dim=dim)
    except IndexCorruptError as exc:
        log.warning("REBUILDING vector index from the catalog: %s", exc)
        previous = saved_spec(path)
    else:
        index.vector_lookup = source_lookup(source, encoder, dim)
        stored = source.image_ids_where(encoder=encoder)
        if np.array_equal(np.sort(index.ids()), np.sort(stored)):
            return index
        log.warning(
            "REBUILDING vector index: it holds %d ids but the catalog has %d for %s",
            len(index),
            len(stored),
            encoder,
        )
        previous = index.spec
    # Keep the kind the archive had (an operator may have chosen it); a flat one is re-chosen.
    spec = previous if previous is not None and not previous.exact else None
    index = build_from_source(source, encoder=encoder, dim=dim, spec=spec)
    index.save(path)
    log.warning("vector index rebuilt from the catalog: %d vectors (%s)", len(index), index.kind)
    return index
