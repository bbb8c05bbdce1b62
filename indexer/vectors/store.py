"""Where an index's exact vectors come from: the VectorSource protocol (the catalog is one) and in-memory arrays."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import numpy.typing as npt

from indexer.errors import IndexCorruptError

# Exact stored vectors for ids, in the order given (re-ranking lossy codes, exact filtered search).
VectorLookup = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]


class VectorSource(Protocol):
    """The stored vectors an index is rebuilt from and re-ranks with; `indexer.catalog.Catalog` is one.

    The index never queries a database itself: it calls these three methods.
    """

    def image_ids_where(self, *, encoder: str) -> npt.NDArray[np.int64]:
        """Ids of every image with a stored vector from `encoder`."""
        ...

    def embeddings(self, encoder: str) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Stream (ids, vectors) of every stored vector from `encoder`, in chunks."""
        ...

    def stored_vectors(
        self, ids: npt.NDArray[np.int64], *, encoder: str, dim: int
    ) -> npt.NDArray[np.float32]:
        """The exact stored vectors from `encoder` for ids, in the order given; IndexCorruptError if one is missing."""
        ...


def source_lookup(source: VectorSource, encoder: str, dim: int) -> VectorLookup:
    """A lookup of `encoder`'s exact vectors in the source."""

    def lookup(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return source.stored_vectors(ids, encoder=encoder, dim=dim)

    return lookup


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


class ArrayVectors:
    """A VectorSource over plain arrays of one encoder's vectors (tests, benchmarks, tools without a catalog)."""

    def __init__(
        self,
        ids: npt.NDArray[np.int64],
        vectors: npt.NDArray[np.float32],
        *,
        encoder: str,
        chunk: int = 10_000,
    ) -> None:
        order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
        self.ids = np.asarray(ids, dtype=np.int64)[order]
        self.vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[order])
        self.encoder = encoder
        self.chunk = max(1, chunk)

    def image_ids_where(self, *, encoder: str) -> npt.NDArray[np.int64]:
        """Every id, when asked for this source's encoder."""
        return self.ids.copy() if encoder == self.encoder else np.empty(0, np.int64)

    def embeddings(self, encoder: str) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """The arrays in id order, in chunks."""
        if encoder != self.encoder:
            return
        for start in range(0, len(self.ids), self.chunk):
            yield self.ids[start : start + self.chunk], self.vectors[start : start + self.chunk]

    def stored_vectors(
        self, ids: npt.NDArray[np.int64], *, encoder: str, dim: int
    ) -> npt.NDArray[np.float32]:
        """The vectors of ids, in the order given."""
        wanted = np.asarray(ids, dtype=np.int64)
        if encoder != self.encoder or (len(wanted) and len(self.ids) == 0):
            raise IndexCorruptError(f"{len(wanted)} ids have no {encoder} vector in this source")
        if len(wanted) == 0:
            return np.empty((0, dim), dtype=np.float32)
        return np.asarray(in_memory_vector_lookup(self.ids, self.vectors)(wanted), dtype=np.float32)
