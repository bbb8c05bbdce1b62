"""The FAISS vector index: inner-product search under catalog ids, filtered search, re-ranking, build and tune."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from indexer.errors import IndexCorruptError
from indexer.vectors.faiss_index import gpu_available, new_index, set_search_param, stored_ids, to_gpu
from indexer.vectors.index_postprocess import FittedPostprocess
from indexer.vectors.kinds import IndexSpec, spec_for_kind
from indexer.vectors.persistence import read_index, write_index
from indexer.vectors.store import VectorLookup, VectorSource, source_lookup
from indexer.vectors.tuning import (
    EXACT_TUNING,
    RECALL_K,
    RERANK_LADDER,
    TARGET_RECALL,
    Tuning,
    climb,
    recall_at_10,
)

log = logging.getLogger(__name__)

# A filter that keeps at most this many ids is answered by exact search over those ids' vectors:
# an approximate index may hold none of them in the lists or graph nodes it visits.
RARE_FILTER_MAX = 8192


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of one query: catalog image ids and cosine similarities, best first."""

    ids: npt.NDArray[np.int64]
    similarities: npt.NDArray[np.float32]


class VectorIndex:
    """Inner-product search over unit vectors, each stored under its catalog image id.

    The kind (flat, HNSW, IVF-Flat/SQ8/PQ) comes from `choose_index_kind`; approximate kinds are tuned
    so recall@10 against exact search is at least 0.95 and the tuning travels with the saved index.
    With a fitted `postprocess` (index_postprocess.py) the index stores and searches post-processed
    vectors: `add` and `search` take raw encoder vectors (`dim`) and apply it; `add_stored` and the
    spec's dimension are those of the stored space.
    """

    def __init__(
        self,
        dim: int,
        encoder: str,
        index: faiss.Index | None = None,
        *,
        spec: IndexSpec | None = None,
        tuning: Tuning | None = None,
        use_gpu: bool | None = None,
        postprocess: FittedPostprocess | None = None,
    ) -> None:
        self.dim = dim  # the encoder's (raw) dimension: what add and search take
        self.encoder = encoder
        self.postprocess = postprocess
        if postprocess is not None and postprocess.input_dim != dim:
            raise IndexCorruptError(
                f"post-processing fitted on dimension {postprocess.input_dim} != encoder dimension {dim}"
            )
        self.stored_dim = postprocess.output_dim if postprocess is not None else dim
        self.spec = spec or spec_for_kind("flat", 0, self.stored_dim)
        self._index = index if index is not None else new_index(self.spec)
        if self._index.d != self.stored_dim:
            raise IndexCorruptError(
                f"index dimension {self._index.d} != expected dimension {self.stored_dim}"
            )
        self.tuning = tuning or EXACT_TUNING
        self._apply_tuning()
        self.vector_lookup: VectorLookup | None = None  # exact stored vectors (the catalog), when known
        self._ids_cache: npt.NDArray[np.int64] | None = None
        self._mmap_path: Path | None = None  # set while the index is a read-only memory map
        self._use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._gpu_index: faiss.Index | None = None
        self.generation = -1  # the catalog generation this index is in step with (-1: unknown)
        self.synced_at = time.time()  # when it was last seen in step with the catalog

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def kind(self) -> str:
        """The index kind: flat, hnsw, ivf_flat, ivf_sq8 or ivf_pq."""
        return self.spec.kind

    def ids(self) -> npt.NDArray[np.int64]:
        """Every stored id."""
        if self._ids_cache is None:
            self._ids_cache = stored_ids(self._index)
        return self._ids_cache

    # -- writes --------------------------------------------------------------------------------

    def add(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Add raw encoder vectors under their catalog ids (post-processed with the fitted state, never refitted)."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.shape[0] != len(ids):
            raise ValueError(f"expected ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        post = self.postprocess
        if post is None:
            self.add_stored(ids, vectors)
            return
        stored = post.augment_new(post.project(vectors), self._stored_neighbours)
        self.add_stored(ids, stored)
        if post.spec.has("rerank"):  # the new rows' own neighbour lists; older rows keep theirs
            found = self._search_stored(stored, int(post.spec.get("rerank", "k")), None)
            post.remember_neighbours(ids, _id_table([r.ids for r in found]))
        if post.spec.has("diffusion"):  # the new rows enter the kNN graph (and older rows' lists)
            found = self._search_stored(stored, post.link_width, None)
            post.link_new(ids, [(r.ids, r.similarities) for r in found])

    def add_stored(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Add vectors already in the stored space (a build's post-processed rows) under their ids."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.stored_dim or vectors.shape[0] != len(ids):
            raise ValueError(f"expected ({len(ids)}, {self.stored_dim}) stored vectors, got {vectors.shape}")
        self._make_writable()
        self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._changed()

    def use_source(self, source: VectorSource) -> None:
        """Take exact stored-space vectors from the catalog's raw ones (through a pointwise post-processing).

        A DBA'd row is not a function of its raw vector alone: such an index re-scores with its own
        codes (exact for flat, HNSW and IVF-Flat).
        """
        raw = source_lookup(source, self.encoder, self.dim)
        post = self.postprocess
        if post is None:
            self.vector_lookup = raw
        elif post.pointwise:
            self.vector_lookup = lambda ids: post.project(raw(ids))
        else:
            self.vector_lookup = None

    def _stored_neighbours(
        self, stored: npt.NDArray[np.float32], n: int, allowed: npt.NDArray[np.int64] | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Each row's n nearest stored ids (-1 past the end) and their stored vectors (zeros there)."""
        found = self._search_stored(stored, n, allowed)
        ids = _id_table([r.ids for r in found], n)
        vectors = np.zeros((*ids.shape, self.stored_dim), dtype=np.float32)
        valid = ids >= 0
        if valid.any():
            vectors[valid] = self._exact_vectors(ids[valid])
        return ids, vectors

    def remove(self, ids: npt.NDArray[np.int64]) -> int:
        """Remove ids; returns how many were present."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._make_writable()
        if self.kind != "hnsw":
            # The IVF direct map (a hashtable) only accepts an explicit id array.
            selector = faiss.IDSelectorArray(ids) if self.spec.needs_training else faiss.IDSelectorBatch(ids)
            removed = int(self._index.remove_ids(selector))
            self._changed()
            return removed
        # An HNSW graph cannot drop nodes: rebuild it from the survivors (its storage is exact).
        stored = self.ids()
        gone = np.isin(stored, ids)
        if not gone.any():
            return 0
        keep = stored[~gone]
        vectors = self._reconstruct(keep)
        log.info("rebuilding the HNSW graph without %d removed ids (%d remain)", int(gone.sum()), len(keep))
        self._index = new_index(self.spec)
        self._apply_tuning()
        if len(keep):
            self._index.add_with_ids(vectors, keep)
        self._changed()
        return int(gone.sum())

    def _changed(self) -> None:
        self._ids_cache = None
        self._gpu_index = None

    def _make_writable(self) -> None:
        # Writing into a memory-mapped faiss index aborts the process: load it fully first.
        if self._mmap_path is not None:
            log.info("loading the memory-mapped index %s fully before writing to it", self._mmap_path)
            self._index = faiss.read_index(str(self._mmap_path))
            self._apply_tuning()
            self._mmap_path = None

    # -- search --------------------------------------------------------------------------------

    def search(
        self, queries: npt.NDArray[np.float32], k: int, allowed_ids: npt.NDArray[np.int64] | None = None
    ) -> list[SearchResult]:
        """The k nearest stored vectors of each raw query vector, optionally only among allowed ids.

        With a post-processing the query is projected (pcaw), expanded over its nearest allowed stored
        vectors (aqe) and its candidates re-scored (rerank, diffusion); similarities are then those scores.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        post = self.postprocess
        if post is None or len(self) == 0:
            return self._search_stored(queries, k, allowed_ids)
        stored = post.project(queries)
        stored = post.expand_queries(stored, lambda q, n: self._stored_neighbours(q, n, allowed_ids))
        if not post.reranks:
            return self._search_stored(stored, k, allowed_ids)
        results = []
        for found in self._search_stored(stored, post.shortlist(k), allowed_ids):
            scores = post.rescore(found.ids, found.similarities)
            order = np.argsort(-scores, kind="stable")[:k]
            results.append(SearchResult(found.ids[order], scores[order]))
        return results

    def _search_stored(
        self, queries: npt.NDArray[np.float32], k: int, allowed_ids: npt.NDArray[np.int64] | None = None
    ) -> list[SearchResult]:
        """The k nearest stored vectors of each stored-space query, optionally only among allowed ids."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, len(self)))
        if len(self) == 0 or (allowed_ids is not None and len(allowed_ids) == 0):
            empty = SearchResult(np.empty(0, np.int64), np.empty(0, np.float32))
            return [empty for _ in range(len(queries))]
        if allowed_ids is None:
            if self._reranks:
                return self._reranked(queries, k, *self._searcher().search(queries, k * self.tuning.rerank))
            sims, ids = self._searcher().search(queries, k)
            return _results(sims, ids)
        allowed = np.unique(np.ascontiguousarray(allowed_ids, dtype=np.int64))
        if self.spec.exact:
            return _results(*self._index.search(queries, k, params=self._params(allowed, 1.0)))
        if len(allowed) <= RARE_FILTER_MAX:
            return self._exact_among(queries, k, allowed)
        fraction = len(allowed) / max(len(self), 1)
        if self._reranks:
            wide = k * self.tuning.rerank
            results = self._reranked(
                queries, k, *self._index.search(queries, wide, params=self._params(allowed, fraction))
            )
        else:
            results = _results(*self._index.search(queries, k, params=self._params(allowed, fraction)))
        want = min(k, len(allowed))
        short = [i for i, r in enumerate(results) if len(r.ids) < want]
        if short:  # the visited lists held too few allowed ids: answer those queries exactly
            for i, exact in zip(short, self._exact_among(queries[short], k, allowed), strict=True):
                results[i] = exact
        return results

    @property
    def _reranks(self) -> bool:
        return self.tuning.rerank > 1 and self.vector_lookup is not None

    def _reranked(
        self, queries: npt.NDArray[np.float32], k: int, sims: np.ndarray, ids: np.ndarray
    ) -> list[SearchResult]:
        """Re-score each query's approximate candidates with their exact vectors and keep the best k."""
        assert self.vector_lookup is not None
        valid = ids >= 0
        unique = np.unique(ids[valid])
        if len(unique) == 0:
            return _results(sims[:, :k], ids[:, :k])
        exact = self.vector_lookup(unique.astype(np.int64))
        rows = np.searchsorted(unique, np.where(valid, ids, unique[0]))
        rescored = np.einsum("qd,qcd->qc", queries, exact[rows])
        rescored = np.where(valid, rescored, -np.inf).astype(np.float32)
        order = np.argsort(-rescored, axis=1, kind="stable")[:, :k]
        return _results(np.take_along_axis(rescored, order, 1), np.take_along_axis(ids, order, 1))

    def _searcher(self) -> faiss.Index:
        if self._use_gpu and self.kind != "hnsw" and gpu_available():
            if self._gpu_index is None:
                self._gpu_index = to_gpu(self._index)
                set_search_param(self._gpu_index, self.tuning)
            return self._gpu_index
        return self._index

    def _params(self, allowed: npt.NDArray[np.int64], fraction: float) -> faiss.SearchParameters:
        selector = faiss.IDSelectorBatch(allowed)
        # A selective filter discards most visited candidates: visit proportionally more.
        boost = 1.0 / max(fraction, 1e-6)
        if self.tuning.param == "nprobe":
            nprobe = int(min(self.spec.nlist, max(1, round(self.tuning.value * boost))))
            params: faiss.SearchParameters = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)  # type: ignore[call-arg]
        elif self.tuning.param == "efSearch":
            ef = int(min(4096, max(RECALL_K, round(self.tuning.value * boost))))
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)  # type: ignore[attr-defined]
        else:
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        params._selector_ref = selector  # type: ignore[attr-defined]  # keep it alive during the call
        return params

    def _exact_among(
        self, queries: npt.NDArray[np.float32], k: int, allowed: npt.NDArray[np.int64]
    ) -> list[SearchResult]:
        present = allowed[np.isin(allowed, self.ids(), assume_unique=True)]
        if len(present) == 0:
            empty = SearchResult(np.empty(0, np.int64), np.empty(0, np.float32))
            return [empty for _ in range(len(queries))]
        vectors = self._exact_vectors(present)
        sims = queries @ vectors.T
        top = min(k, len(present))
        order = np.argsort(-sims, axis=1, kind="stable")[:, :top]
        return [
            SearchResult(present[row].astype(np.int64), sims[i, row].astype(np.float32))
            for i, row in enumerate(order)
        ]

    def _exact_vectors(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        lossy = self.kind in ("ivf_sq8", "ivf_pq")
        if lossy and self.vector_lookup is not None:
            return np.ascontiguousarray(self.vector_lookup(ids), dtype=np.float32)
        return self._reconstruct(ids)

    def _reconstruct(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        out = np.empty((len(ids), self.stored_dim), dtype=np.float32)
        for i, vid in enumerate(ids):
            out[i] = self._index.reconstruct(int(vid))
        return out

    # -- build and tune ------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
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

        `postprocess` is a SPEC (index_postprocess.py) fitted on these vectors; None or 'none': plain.
        """
        from indexer.vectors.build import build_from_arrays  # build.py builds on this class

        return build_from_arrays(
            ids,
            vectors,
            encoder=encoder,
            spec=spec,
            memory_budget_bytes=memory_budget_bytes,
            target_recall=target_recall,
            seed=seed,
            postprocess=postprocess,
        )

    def train(self, sample: npt.NDArray[np.float32]) -> None:
        """Learn the IVF centroids (and codebooks) from a sample of the vectors."""
        started = time.perf_counter()
        self._index.train(np.ascontiguousarray(sample, dtype=np.float32))
        log.info(
            "trained %s on %d vectors in %.1f s",
            self.spec.factory,
            len(sample),
            time.perf_counter() - started,
        )

    def tune(
        self,
        queries: npt.NDArray[np.float32],
        truth: npt.NDArray[np.int64],
        target_recall: float = TARGET_RECALL,
    ) -> Tuning:
        """Pick the smallest nprobe / efSearch whose recall@10 against `truth` reaches the target.

        The queries must not be in the index (held out); `truth` is their exact top-10 ids. When no
        setting reaches the target the largest is kept and the measured recall says so.
        """
        if self.spec.exact:
            self.tuning = EXACT_TUNING
            return self.tuning
        reranks: tuple[int, ...] = (1,)
        if self.kind == "ivf_pq" and self.vector_lookup is not None:
            reranks = RERANK_LADDER
        queries = np.ascontiguousarray(queries, dtype=np.float32)

        def probe(candidate: Tuning) -> float:
            self.tuning = candidate
            self._apply_tuning()
            if candidate.rerank > 1:
                wide = self._index.search(queries, RECALL_K * candidate.rerank)
                return recall_at_10([r.ids for r in self._reranked(queries, RECALL_K, *wide)], truth)
            return recall_at_10(list(self._index.search(queries, RECALL_K)[1]), truth)

        best = climb(self.kind, self.spec.nlist, reranks, len(queries), probe, target_recall)
        if best.recall_at_10 < target_recall:
            log.warning(
                "%s reached recall@10 %.3f < %.2f at %s=%d",
                self.kind,
                best.recall_at_10,
                target_recall,
                best.param,
                best.value,
            )
        self.tuning = best
        self._apply_tuning()
        self._gpu_index = None
        return best

    def _apply_tuning(self) -> None:
        set_search_param(self._index, self.tuning)

    # -- persistence and rebuild -------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same folder, fsync, rename; a sidecar holds kind, tuning, checksum."""
        write_index(
            path,
            self._index,
            encoder=self.encoder,
            spec=self.spec,
            tuning=self.tuning,
            generation=self.generation,
            postprocess=self.postprocess,
        )

    @classmethod
    def load(cls, path: Path, *, encoder: str, dim: int, mmap: bool | None = None) -> VectorIndex:
        """Load and verify a saved index; raises IndexCorruptError when it cannot be trusted.

        mmap=None memory-maps indexes of at least 1 GiB (read-only until the first write).
        """
        saved = read_index(path, encoder=encoder, dim=dim, mmap=mmap)
        loaded = cls(
            dim, encoder, saved.index, spec=saved.spec, tuning=saved.tuning, postprocess=saved.postprocess
        )
        loaded.generation = saved.generation
        if saved.memory_mapped:
            loaded._mmap_path = path
        return loaded

    @classmethod
    def build_from_catalog(
        cls,
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

        `postprocess` is a SPEC (index_postprocess.py) refitted on those embeddings; None or 'none': plain.
        """
        from indexer.vectors.build import build_from_source  # build.py builds on this class

        return build_from_source(
            source,
            encoder=encoder,
            dim=dim,
            spec=spec,
            memory_budget_bytes=memory_budget_bytes,
            target_recall=target_recall,
            seed=seed,
            postprocess=postprocess,
        )

    @classmethod
    def open(cls, path: Path, source: VectorSource, *, encoder: str, dim: int) -> VectorIndex:
        """Load the saved index if it matches the source (the catalog); otherwise rebuild it loudly and save it."""
        from indexer.vectors.build import open_index  # build.py builds on this class

        return open_index(path, source, encoder=encoder, dim=dim)

    def describe(self) -> dict[str, Any]:
        """Kind, size and tuning, for `medcbir stats` and benchmarks."""
        return {
            "kind": self.kind,
            "factory": self.spec.factory,
            "count": len(self),
            "tuning": self.tuning.to_dict(),
            "memory_mapped": self._mmap_path is not None,
            "gpu": self._use_gpu and gpu_available() and self.kind != "hnsw",
            "postprocess": self.postprocess.describe() if self.postprocess else {"spec": "none"},
        }


def _id_table(rows: list[npt.NDArray[np.int64]], width: int | None = None) -> npt.NDArray[np.int64]:
    """Ragged id rows as one (Q, width) table, -1 past each row's end."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    table = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        table[i, : min(len(row), width)] = row[:width]
    return table


def _results(sims: np.ndarray, ids: np.ndarray) -> list[SearchResult]:
    results = []
    for row_sims, row_ids in zip(sims, ids, strict=True):
        keep = row_ids >= 0
        results.append(SearchResult(row_ids[keep].astype(np.int64), row_sims[keep].astype(np.float32)))
    return results
