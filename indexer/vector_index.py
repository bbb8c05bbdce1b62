"""The FAISS vector index: a rebuildable cache keyed by catalog image ids, saved atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from indexer.catalog import Catalog
from indexer.errors import IndexCorruptError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of one query: catalog image ids and cosine similarities, best first."""

    ids: npt.NDArray[np.int64]
    similarities: npt.NDArray[np.float32]


class VectorIndex:
    """Exact inner-product search over unit vectors, each stored under its catalog image id."""

    def __init__(self, dim: int, encoder: str, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.encoder = encoder
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if self._index.d != dim:
            raise IndexCorruptError(f"index dimension {self._index.d} != encoder dimension {dim}")

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> npt.NDArray[np.int64]:
        """Every stored id."""
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)  # type: ignore[attr-defined]

    def add(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Add vectors under their catalog ids."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.shape[0] != len(ids):
            raise ValueError(f"expected ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: npt.NDArray[np.int64]) -> int:
        """Remove ids; returns how many were present."""
        return int(self._index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))

    def search(
        self, queries: npt.NDArray[np.float32], k: int, allowed_ids: npt.NDArray[np.int64] | None = None
    ) -> list[SearchResult]:
        """The k nearest stored vectors of each query, optionally only among allowed ids."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, len(self)))
        if len(self) == 0 or (allowed_ids is not None and len(allowed_ids) == 0):
            empty = SearchResult(np.empty(0, np.int64), np.empty(0, np.float32))
            return [empty for _ in range(len(queries))]
        params = None
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, np.int64))
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        sims, ids = self._index.search(queries, k, params=params)
        results = []
        for row_sims, row_ids in zip(sims, ids, strict=True):
            keep = row_ids >= 0
            results.append(SearchResult(row_ids[keep].astype(np.int64), row_sims[keep].astype(np.float32)))
        return results

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same folder, fsync, rename; a sidecar holds the checksum."""
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = faiss.serialize_index(self._index).tobytes()
        meta = {
            "encoder": self.encoder,
            "dim": self.dim,
            "count": len(self),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        _atomic_write(path, blob)
        _atomic_write(_meta_path(path), json.dumps(meta, indent=1).encode())

    @classmethod
    def load(cls, path: Path, *, encoder: str, dim: int) -> VectorIndex:
        """Load and verify a saved index; raises IndexCorruptError when it cannot be trusted."""
        meta_path = _meta_path(path)
        if not path.exists() or not meta_path.exists():
            raise IndexCorruptError(f"no saved index at {path}; it will be rebuilt from the catalog")
        try:
            meta = json.loads(meta_path.read_text())
            blob = path.read_bytes()
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"cannot read index {path}: {exc}") from exc
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            raise IndexCorruptError(f"index {path} fails its checksum (truncated or modified)")
        if meta.get("encoder") != encoder or meta.get("dim") != dim:
            raise IndexCorruptError(
                f"index {path} was built by {meta.get('encoder')} (dim {meta.get('dim')}), not {encoder} (dim {dim})"
            )
        index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        return cls(dim, encoder, index)

    @classmethod
    def build_from_catalog(cls, catalog: Catalog, *, encoder: str, dim: int) -> VectorIndex:
        """Rebuild from the embeddings the catalog stores; no image is re-encoded."""
        index = cls(dim, encoder)
        for ids, vectors in catalog.embeddings(encoder):
            index.add(ids, vectors)
        return index

    @classmethod
    def open(cls, path: Path, catalog: Catalog, *, encoder: str, dim: int) -> VectorIndex:
        """Load the saved index if it matches the catalog; otherwise rebuild it loudly and save it."""
        if not path.exists() and catalog.image_ids_where(encoder=encoder).size == 0:
            return cls(dim, encoder)  # a new archive: nothing to rebuild, nothing to warn about
        try:
            index = cls.load(path, encoder=encoder, dim=dim)
        except IndexCorruptError as exc:
            log.warning("REBUILDING vector index from the catalog: %s", exc)
        else:
            stored = catalog.image_ids_where(encoder=encoder)
            if np.array_equal(np.sort(index.ids()), np.sort(stored)):
                return index
            log.warning(
                "REBUILDING vector index: it holds %d ids but the catalog has %d for %s",
                len(index),
                len(stored),
                encoder,
            )
        index = cls.build_from_catalog(catalog, encoder=encoder, dim=dim)
        index.save(path)
        log.warning("vector index rebuilt from the catalog: %d vectors", len(index))
        return index


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
