"""Building an index: from arrays in memory, or streamed from a VectorSource (the catalog); open-or-rebuild."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.errors import IndexCorruptError
from indexer.vectors.index import VectorIndex
from indexer.vectors.index_postprocess import FittedPostprocess, fit_postprocess, parse_postprocess
from indexer.vectors.kinds import IndexSpec, choose_index_kind, default_memory_budget, spec_for_kind
from indexer.vectors.persistence import saved_postprocess, saved_spec
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
    postprocess: str | None = None,
) -> VectorIndex:
    """Build an index of the chosen (or given) kind over in-memory vectors: train, add, tune.

    `postprocess` (a SPEC) is fitted on these vectors (the database) and the index holds their
    post-processed form; raw vectors added or searched later go through the fitted state.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = vectors.shape
    fitted: FittedPostprocess | None = None
    parsed = parse_postprocess(postprocess)
    if not parsed.none:
        fitted, ids, vectors = fit_postprocess(parsed, ids, vectors)
        if spec is not None and spec.dim != fitted.output_dim:
            spec = spec_for_kind(spec.kind, n, fitted.output_dim, spec.reason)
        _check_kind(fitted, spec)
    stored_dim = vectors.shape[1]
    budget = memory_budget_bytes or default_memory_budget()
    spec = spec or choose_index_kind(n, stored_dim, budget)
    if fitted is not None:
        _check_kind(fitted, spec)
    rng = np.random.default_rng(seed)
    index = VectorIndex(dim, encoder, spec=spec, postprocess=fitted)
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
        index.add_stored(ids[part], vectors[part])
    if held_out.any():
        chunks = (
            (ids[rest[i : i + 100_000]], vectors[rest[i : i + 100_000]]) for i in range(0, len(rest), 100_000)
        )
        truth = exact_topk(vectors[held_out], chunks, RECALL_K)
        index.tune(vectors[held_out], truth, target_recall)
        index.add_stored(ids[held_out], vectors[held_out])
    return index


def _check_kind(fitted: FittedPostprocess, spec: IndexSpec | None) -> None:
    if spec is not None and not fitted.pointwise and spec.kind in ("ivf_sq8", "ivf_pq"):
        raise ValueError(
            f"post-processing {fitted.spec} (dba) needs an index kind that stores full vectors "
            f"(flat, hnsw or ivf_flat), not {spec.kind}; raise the memory budget or drop dba"
        )


def build_from_source(
    source: VectorSource,
    *,
    encoder: str,
    dim: int,
    spec: IndexSpec | None = None,
    memory_budget_bytes: int | None = None,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
    postprocess: str | None = None,
) -> VectorIndex:
    """Rebuild from the stored embeddings (the catalog's: no image is re-encoded), in the chosen kind.

    Vectors are streamed: only the training sample and the tuning queries are held in memory. With a
    `postprocess` SPEC every stored vector is read into memory once, the SPEC is fitted on them (the
    database only) and the index is built over the post-processed rows.
    """
    if not parse_postprocess(postprocess).none:
        chunks = list(source.embeddings(encoder))
        ids = np.concatenate([c[0] for c in chunks]) if chunks else np.empty(0, np.int64)
        vectors = np.concatenate([c[1] for c in chunks]) if chunks else np.empty((0, dim), np.float32)
        index = build_from_arrays(
            ids,
            vectors,
            encoder=encoder,
            spec=spec,
            memory_budget_bytes=memory_budget_bytes,
            target_recall=target_recall,
            seed=seed,
            postprocess=postprocess,
        )
        if index.kind != "ivf_pq":  # ivf_pq keeps the build's in-memory stored vectors for tuning
            index.use_source(source)
        return index
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
        index.use_source(source)
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
    # Keep the kind the archive had (an operator may have chosen it); a flat one is re-chosen. The
    # post-processing it served is refitted on the catalog's rows (plain, loudly, when it cannot be).
    spec = previous if previous is not None and not previous.exact else None
    post = saved_postprocess(path)
    if spec is not None and post not in (None, "none"):
        spec = None  # the recorded spec is of the post-processed dimension: re-chosen
    try:
        index = build_from_source(source, encoder=encoder, dim=dim, spec=spec, postprocess=post)
    except ValueError as exc:
        log.warning(
            "the index's post-processing %s cannot be refitted (%s): serving plain vectors", post, exc
        )
        index = build_from_source(source, encoder=encoder, dim=dim, spec=spec)
    index.save(path)
    log.warning("vector index rebuilt from the catalog: %d vectors (%s)", len(index), index.kind)
    return index
