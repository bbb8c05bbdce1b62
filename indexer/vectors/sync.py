"""One truth for many processes: an index catches up with the catalog's generation, and is saved only in step with it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from indexer.errors import IndexCorruptError
from indexer.vectors.index import VectorIndex
from indexer.vectors.persistence import index_file_lock, saved_generation
from indexer.vectors.store import VectorSource

log = logging.getLogger(__name__)


class CatalogVectors(VectorSource, Protocol):
    """A VectorSource that also counts its changes: `indexer.catalog.Catalog`."""

    def generation(self) -> int:
        """How many vector rows were ever inserted, deleted or changed (bumped by every writer)."""
        ...

    def ids_with_vector(self, ids: npt.NDArray[np.int64], *, encoder: str) -> npt.NDArray[np.int64]:
        """The subset of ids that (still) have a vector from `encoder`, sorted."""
        ...


@dataclass(frozen=True)
class CatchUp:
    """What a catch-up did: the generation it reached and the vectors it added and removed."""

    generation: int
    added: int
    removed: int


def catch_up(current: Callable[[], VectorIndex], source: CatalogVectors, lock: threading.RLock) -> CatchUp:
    """Add the catalog's vectors the index lacks and drop those the catalog no longer has.

    `current` gives the live index (a rebuild may swap it); `lock` is the one that every writer of it
    and every search holds. The catalog is read outside the lock; the changes are re-checked and applied
    under it, so a case added or deleted by this process meanwhile is neither lost nor resurrected.
    """
    generation = source.generation()  # read first: the ids read next are at least this new
    index = current()
    stored = np.unique(source.image_ids_where(encoder=index.encoder))
    with lock:
        have = np.unique(current().ids())
    adds = np.setdiff1d(stored, have, assume_unique=True)
    removes = np.setdiff1d(have, stored, assume_unique=True)
    try:
        vectors = source.stored_vectors(adds, encoder=index.encoder, dim=index.dim)
    except IndexCorruptError:  # a row went between the two reads: the next catch-up takes the new state
        return CatchUp(index.generation, 0, 0)
    with lock:
        index = current()
        changed = np.concatenate([adds, removes])
        exists = source.ids_with_vector(changed, encoder=index.encoder) if len(changed) else changed
        present = index.ids()
        add = np.isin(adds, exists) & ~np.isin(adds, present)
        gone = removes[~np.isin(removes, exists) & np.isin(removes, present)]
        index.add(adds[add], vectors[add])
        if len(gone):
            index.remove(gone)
        index.generation = max(index.generation, generation)
        index.synced_at = time.time()
    if add.any() or len(gone):
        log.info(
            "index caught up with the catalog (generation %d): %d vectors added, %d removed",
            generation,
            int(add.sum()),
            len(gone),
        )
    return CatchUp(generation, int(add.sum()), len(gone))


def refresh(current: Callable[[], VectorIndex], source: CatalogVectors, lock: threading.RLock) -> CatchUp:
    """Catch up when the catalog moved since the index was last in step; cheap (one row) when it did not."""
    generation = source.generation()
    index = current()
    if generation == index.generation:
        index.synced_at = time.time()
        return CatchUp(generation, 0, 0)
    return catch_up(current, source, lock)


class StaleIndexError(IndexCorruptError):
    """The index on disk records a newer catalog generation than this process could reach."""


def save_in_step(
    current: Callable[[], VectorIndex], source: CatalogVectors, lock: threading.RLock, path: Path
) -> None:
    """Save under the index's writer lock, never older than the file on disk (compare-and-swap on generation).

    Under the lock the index first catches up with the catalog when the catalog (or the file) is
    newer than it, so what is written holds every row committed by any writer up to its generation.
    """
    with lock, index_file_lock(path):
        index = current()
        on_disk = saved_generation(path)
        if source.generation() != index.generation or (on_disk is not None and on_disk > index.generation):
            catch_up(current, source, lock)
            index = current()
        on_disk = saved_generation(path)
        if on_disk is not None and on_disk > index.generation:
            raise StaleIndexError(
                f"{path} records catalog generation {on_disk}, newer than this process reached "
                f"({index.generation}): not overwriting it. Was the catalog restored from a backup? "
                "Run `medcbir rebuild-index`"
            )
        index.save(path)


class PeriodicRefresh:
    """A daemon thread that calls `refresh` every `seconds` (a serving process following other writers)."""

    def __init__(self, refresh: Callable[[], object], seconds: float, name: str = "index-refresh") -> None:
        self._refresh = refresh
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> PeriodicRefresh:
        """Start following (a no-op when `seconds` is 0 or less: following is off)."""
        if self.seconds > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and wait for an in-flight refresh to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self._refresh()
            except Exception:  # the next round tries again; /health shows how far behind the index is
                log.exception(
                    "could not catch the index up with the catalog; retrying in %.0f s", self.seconds
                )
