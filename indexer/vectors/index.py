"""The FAISS vector index: a rebuildable cache keyed by catalog image ids, of a chosen kind, saved atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from indexer.catalog import Catalog, Image, ImageEmbedding
from indexer.errors import IndexCorruptError
from indexer.vectors.kinds import IndexSpec, choose_index_kind, default_memory_budget, spec_for_kind

log = logging.getLogger(__name__)

TARGET_RECALL = 0.95
RECALL_K = 10
TUNING_QUERIES = 200
TUNING_MARGIN = 0.02
# A filter that keeps at most this many ids is answered by exact search over those ids' vectors:
# an approximate index may hold none of them in the lists or graph nodes it visits.
RARE_FILTER_MAX = 8192
# Indexes at least this big are memory-mapped on load (read-only until the first add or remove).
MMAP_MIN_BYTES = 1 << 30
NPROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096)
EF_SEARCH_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)

# Lossy product codes rank poorly on their own: an IVF-PQ search fetches rerank x k candidates and
# re-ranks them by their exact stored vectors (the catalog's, or the build's in memory); tuning climbs
# nprobe at each factor of this ladder until recall@10 reaches the target.
RERANK_LADDER = (10, 30, 100)

VectorLookup = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of one query: catalog image ids and cosine similarities, best first."""

    ids: npt.NDArray[np.int64]
    similarities: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Tuning:
    """The search parameter chosen for an approximate index and the recall it measured."""

    param: str  # "nprobe", "efSearch" or "" for exact kinds
    value: int
    recall_at_10: float
    queries: int
    rerank: int = 1  # candidates fetched per wanted neighbour and re-ranked exactly (1: none)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the sidecar."""
        return {
            "param": self.param,
            "value": self.value,
            "recall_at_10": self.recall_at_10,
            "queries": self.queries,
            "rerank": self.rerank,
        }


EXACT_TUNING = Tuning("", 0, 1.0, 0)


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class VectorIndex:
    """Inner-product search over unit vectors, each stored under its catalog image id.

    The kind (flat, HNSW, IVF-Flat/SQ8/PQ) comes from `choose_index_kind`; approximate kinds are tuned
    so recall@10 against exact search is at least 0.95 and the tuning travels with the saved index.
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
    ) -> None:
        self.dim = dim
        self.encoder = encoder
        self.spec = spec or spec_for_kind("flat", 0, dim)
        self._index = index if index is not None else _new_index(self.spec)
        if self._index.d != dim:
            raise IndexCorruptError(f"index dimension {self._index.d} != encoder dimension {dim}")
        self.tuning = tuning or EXACT_TUNING
        self._apply_tuning()
        self.vector_lookup: VectorLookup | None = None  # exact stored vectors (the catalog), when known
        self._ids_cache: npt.NDArray[np.int64] | None = None
        self._mmap_path: Path | None = None  # set while the index is a read-only memory map
        self._use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._gpu_index: faiss.Index | None = None

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def kind(self) -> str:
        """The index kind: flat, hnsw, ivf_flat, ivf_sq8 or ivf_pq."""
        return self.spec.kind

    def ids(self) -> npt.NDArray[np.int64]:
        """Every stored id."""
        if self._ids_cache is None:
            self._ids_cache = _stored_ids(self._index)
        return self._ids_cache

    # -- writes --------------------------------------------------------------------------------

    def add(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Add vectors under their catalog ids."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.shape[0] != len(ids):
            raise ValueError(f"expected ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        self._make_writable()
        self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._changed()

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
        self._index = _new_index(self.spec)
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
        """The k nearest stored vectors of each query, optionally only among allowed ids."""
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
                self._gpu_index = _to_gpu(self._index)
                _set_search_param(self._gpu_index, self.tuning)
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
        out = np.empty((len(ids), self.dim), dtype=np.float32)
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
    ) -> VectorIndex:
        """Build an index of the chosen (or given) kind over in-memory vectors: train, add, tune."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        n, dim = vectors.shape
        budget = memory_budget_bytes or default_memory_budget()
        spec = spec or choose_index_kind(n, dim, budget)
        rng = np.random.default_rng(seed)
        index = cls(dim, encoder, spec=spec)
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
                (ids[rest[i : i + 100_000]], vectors[rest[i : i + 100_000]])
                for i in range(0, len(rest), 100_000)
            )
            truth = _exact_topk(vectors[held_out], chunks, RECALL_K)
            index.tune(vectors[held_out], truth, target_recall)
            index.add(ids[held_out], vectors[held_out])
        return index

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
        ladder: tuple[int, ...]
        param, ladder = ("efSearch", EF_SEARCH_LADDER) if self.kind == "hnsw" else ("nprobe", NPROBE_LADDER)
        if param == "nprobe":
            ladder = (*(v for v in ladder if v < self.spec.nlist), self.spec.nlist)
        reranks: tuple[int, ...] = (1,)
        if self.kind == "ivf_pq" and self.vector_lookup is not None:
            reranks = RERANK_LADDER
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        best: Tuning | None = None
        for rerank in reranks:
            previous: Tuning | None = None
            last = Tuning(param, ladder[-1], 0.0, len(queries), rerank)
            for value in ladder:
                self.tuning = Tuning(param, value, 0.0, len(queries), rerank)
                self._apply_tuning()
                if rerank > 1:
                    wide = self._index.search(queries, RECALL_K * rerank)
                    found: list[np.ndarray] = [r.ids for r in self._reranked(queries, RECALL_K, *wide)]
                else:
                    found = list(self._index.search(queries, RECALL_K)[1])
                last = Tuning(param, value, _recall(found, truth), len(queries), rerank)
                # A margin over the target absorbs the sampling error of a few hundred queries; a plateau
                # above the target (lossy codes cap recall) ends the climb early; a plateau below it
                # moves on to re-ranking more candidates, when there is a larger factor to try.
                if last.recall_at_10 >= target_recall + TUNING_MARGIN:
                    break
                gain = last.recall_at_10 - previous.recall_at_10 if previous is not None else 1.0
                if last.recall_at_10 >= target_recall and gain < 0.002:
                    break
                if rerank != reranks[-1] and value >= 8 and gain < 0.002:
                    break
                previous = last
            if best is None or last.recall_at_10 > best.recall_at_10:
                best = last
            if best.recall_at_10 >= target_recall:
                break
        assert best is not None
        if best.recall_at_10 < target_recall:
            log.warning(
                "%s reached recall@10 %.3f < %.2f at %s=%d",
                self.kind,
                best.recall_at_10,
                target_recall,
                param,
                best.value,
            )
        self.tuning = best
        self._apply_tuning()
        self._gpu_index = None
        return best

    def _apply_tuning(self) -> None:
        _set_search_param(self._index, self.tuning)

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same folder, fsync, rename; a sidecar holds kind, tuning, checksum."""
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = faiss.serialize_index(self._index).tobytes()
        meta = {
            "encoder": self.encoder,
            "dim": self.dim,
            "count": len(self),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "spec": self.spec.to_dict(),
            "tuning": self.tuning.to_dict(),
        }
        _atomic_write(path, blob)
        _atomic_write(_meta_path(path), json.dumps(meta, indent=1).encode())

    @classmethod
    def load(cls, path: Path, *, encoder: str, dim: int, mmap: bool | None = None) -> VectorIndex:
        """Load and verify a saved index; raises IndexCorruptError when it cannot be trusted.

        mmap=None memory-maps indexes of at least 1 GiB (read-only until the first write).
        """
        meta_path = _meta_path(path)
        if not path.exists() or not meta_path.exists():
            raise IndexCorruptError(f"no saved index at {path}; it will be rebuilt from the catalog")
        try:
            meta = json.loads(meta_path.read_text())
            size = path.stat().st_size
            use_mmap = size >= MMAP_MIN_BYTES if mmap is None else mmap
            digest, blob = _file_digest(path, keep=not use_mmap)
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"cannot read index {path}: {exc}") from exc
        if digest != meta.get("sha256"):
            raise IndexCorruptError(f"index {path} fails its checksum (truncated or modified)")
        if meta.get("encoder") != encoder or meta.get("dim") != dim:
            raise IndexCorruptError(
                f"index {path} was built by {meta.get('encoder')} (dim {meta.get('dim')}), not {encoder} (dim {dim})"
            )
        try:
            spec = IndexSpec.from_dict(meta["spec"]) if "spec" in meta else spec_for_kind("flat", 0, dim)
            raw_tuning = meta.get("tuning") or {}
            tuning = Tuning(
                str(raw_tuning.get("param", "")),
                int(raw_tuning.get("value", 0)),
                float(raw_tuning.get("recall_at_10", 1.0)),
                int(raw_tuning.get("queries", 0)),
                int(raw_tuning.get("rerank", 1)),
            )
            if use_mmap:
                # IVF lists map through the on-disk hook; flat codes (flat, HNSW storage) through IFC.
                flags = faiss.IO_FLAG_MMAP if spec.needs_training else faiss.IO_FLAG_MMAP_IFC
                flags |= faiss.IO_FLAG_READ_ONLY
                index = faiss.read_index(str(path), flags)
            else:
                index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"cannot read index {path}: {exc}") from exc
        loaded = cls(dim, encoder, index, spec=spec, tuning=tuning)
        if use_mmap:
            loaded._mmap_path = path
        return loaded

    @classmethod
    def build_from_catalog(
        cls,
        catalog: Catalog,
        *,
        encoder: str,
        dim: int,
        spec: IndexSpec | None = None,
        memory_budget_bytes: int | None = None,
        target_recall: float = TARGET_RECALL,
        seed: int = 0,
    ) -> VectorIndex:
        """Rebuild from the embeddings the catalog stores (no image is re-encoded), in the chosen kind.

        Vectors are streamed: only the training sample and the tuning queries are held in memory.
        """
        all_ids = catalog.image_ids_where(encoder=encoder)
        spec = spec or choose_index_kind(len(all_ids), dim, memory_budget_bytes or default_memory_budget())
        index = cls(dim, encoder, spec=spec)
        index.vector_lookup = catalog_vector_lookup(catalog, encoder, dim)
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
            for ids, vectors in catalog.embeddings(encoder):
                keep = ~np.isin(ids, query_ids)  # held out until tuned (see build)
                index.add(ids[keep], vectors[keep])
                yield ids[keep], vectors[keep]

        if len(query_ids) == 0:
            for _ in stream():
                pass
        else:
            queries = index.vector_lookup(query_ids)
            truth = _exact_topk(queries, stream(), RECALL_K)
            index.tune(queries, truth, target_recall)
            index.add(query_ids, queries)
        return index

    @classmethod
    def open(cls, path: Path, catalog: Catalog, *, encoder: str, dim: int) -> VectorIndex:
        """Load the saved index if it matches the catalog; otherwise rebuild it loudly and save it."""
        if not path.exists() and catalog.image_ids_where(encoder=encoder).size == 0:
            index = cls(dim, encoder)  # a new archive: nothing to rebuild, nothing to warn about
            index.vector_lookup = catalog_vector_lookup(catalog, encoder, dim)
            return index
        try:
            index = cls.load(path, encoder=encoder, dim=dim)
        except IndexCorruptError as exc:
            log.warning("REBUILDING vector index from the catalog: %s", exc)
            previous = _saved_spec(path)
        else:
            index.vector_lookup = catalog_vector_lookup(catalog, encoder, dim)
            stored = catalog.image_ids_where(encoder=encoder)
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
        index = cls.build_from_catalog(catalog, encoder=encoder, dim=dim, spec=spec)
        index.save(path)
        log.warning("vector index rebuilt from the catalog: %d vectors (%s)", len(index), index.kind)
        return index

    def describe(self) -> dict[str, Any]:
        """Kind, size and tuning, for `medcbir stats` and benchmarks."""
        return {
            "kind": self.kind,
            "factory": self.spec.factory,
            "count": len(self),
            "tuning": self.tuning.to_dict(),
            "memory_mapped": self._mmap_path is not None,
            "gpu": self._use_gpu and gpu_available() and self.kind != "hnsw",
        }


# -- helpers -----------------------------------------------------------------------------------


def in_memory_vector_lookup(ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> VectorLookup:
    """A lookup over vectors held in memory (a build's input; benchmarks), by id in the order given."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def lookup(wanted: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        pos = np.searchsorted(sorted_ids, wanted)
        pos = np.clip(pos, 0, len(sorted_ids) - 1)
        if len(wanted) and not np.array_equal(sorted_ids[pos], wanted):
            raise IndexCorruptError("an id asked for is not among the build's vectors")
        return vectors[order[pos]]

    return lookup


def catalog_vector_lookup(catalog: Catalog, encoder: str, dim: int) -> VectorLookup:
    """A function returning the catalog's exact stored vectors from `encoder` for ids, in the order given."""

    def lookup(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        found: dict[int, bytes] = {}
        wanted = [int(i) for i in ids]
        with catalog.session() as session:
            for start in range(0, len(wanted), 1000):
                chunk = wanted[start : start + 1000]
                own = select(Image.id, Image.embedding).where(Image.id.in_(chunk), Image.encoder == encoder)
                extra = select(ImageEmbedding.image_id, ImageEmbedding.vector).where(
                    ImageEmbedding.image_id.in_(chunk), ImageEmbedding.encoder == encoder
                )
                for query in (own, extra):
                    for row_id, blob in session.execute(query):
                        found[int(row_id)] = blob
        missing = [i for i in wanted if i not in found]
        if missing:
            raise IndexCorruptError(
                f"{len(missing)} ids (e.g. {missing[0]}) have no {encoder} vector in the catalog; "
                "run `medcbir rebuild-index`"
            )
        out = np.empty((len(wanted), dim), dtype=np.float32)
        for row, i in enumerate(wanted):
            out[row] = np.frombuffer(found[i], dtype=np.float32)
        return out

    return lookup


def _new_index(spec: IndexSpec) -> faiss.Index:
    index = faiss.index_factory(spec.dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = spec.ef_construction  # type: ignore[attr-defined]
    if spec.needs_training:
        ivf = faiss.extract_index_ivf(index)
        # Catalog ids are arbitrary: a hashtable direct map lets us reconstruct and remove by id.
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        ivf.cp.niter = 10  # type: ignore[attr-defined]
        if spec.kind == "ivf_pq":
            pq_index = faiss.downcast_index(ivf)
            pq_index.pq.cp.niter = 10  # type: ignore[attr-defined]
            pq_index.do_polysemous_training = False  # type: ignore[attr-defined]  # slow, and unused here
    return index


def _set_search_param(index: faiss.Index, tuning: Tuning) -> None:
    if tuning.param == "nprobe":
        try:
            faiss.extract_index_ivf(index).nprobe = tuning.value
        except RuntimeError:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", tuning.value)  # type: ignore[attr-defined]
    elif tuning.param == "efSearch":
        inner = index.index if hasattr(index, "id_map") else index  # type: ignore[attr-defined]
        faiss.downcast_index(inner).hnsw.efSearch = tuning.value  # type: ignore[attr-defined]


def _to_gpu(index: faiss.Index) -> faiss.Index:
    resources = faiss.StandardGpuResources()  # type: ignore[attr-defined]
    gpu_index: Any = faiss.index_cpu_to_gpu(resources, 0, index)  # type: ignore[attr-defined]
    gpu_index._resources_ref = resources  # keep the resources alive as long as the index
    return gpu_index


def _stored_ids(index: faiss.Index) -> npt.NDArray[np.int64]:
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)  # type: ignore[attr-defined]
    lists: Any = faiss.extract_index_ivf(index).invlists
    parts = []
    for list_no in range(lists.nlist):
        size = lists.list_size(list_no)
        if size:
            parts.append(faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def _results(sims: np.ndarray, ids: np.ndarray) -> list[SearchResult]:
    results = []
    for row_sims, row_ids in zip(sims, ids, strict=True):
        keep = row_ids >= 0
        results.append(SearchResult(row_ids[keep].astype(np.int64), row_sims[keep].astype(np.float32)))
    return results


def _exact_topk(
    queries: npt.NDArray[np.float32],
    chunks: Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]],
    k: int,
) -> npt.NDArray[np.int64]:
    """Exact top-k ids of each query over streamed (ids, vectors) chunks."""
    best_sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for ids, vectors in chunks:
        if len(ids) == 0:
            continue
        sims = queries @ np.ascontiguousarray(vectors, dtype=np.float32).T
        all_sims = np.concatenate([best_sims, sims], axis=1)
        all_ids = np.concatenate([best_ids, np.broadcast_to(ids, sims.shape)], axis=1)
        top = np.argpartition(-all_sims, k - 1, axis=1)[:, :k]
        best_sims = np.take_along_axis(all_sims, top, axis=1)
        best_ids = np.take_along_axis(all_ids, top, axis=1)
    return best_ids


def _recall(found: Sequence[np.ndarray] | np.ndarray, truth: npt.NDArray[np.int64]) -> float:
    hits = 0
    total = 0
    for row, expected in zip(found, truth, strict=True):
        want = {int(i) for i in expected if i >= 0}
        hits += len(want.intersection(int(i) for i in row[:RECALL_K] if i >= 0))
        total += len(want)
    return hits / total if total else 1.0


def _saved_spec(path: Path) -> IndexSpec | None:
    try:
        return IndexSpec.from_dict(json.loads(_meta_path(path).read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _file_digest(path: Path, *, keep: bool) -> tuple[str, bytes]:
    if keep:
        blob = path.read_bytes()
        return hashlib.sha256(blob).hexdigest(), blob
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest(), b""


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
