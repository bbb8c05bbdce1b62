"""The archive's own out-of-distribution threshold, measured on its stored vectors without any label."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from indexer.prediction.vote_fit import OOD_QUANTILE

if TYPE_CHECKING:
    from indexer.archive import Archive

log = logging.getLogger(__name__)

# The threshold without any fit, and the floor of the label-free fit: photographs and noise reached 0.16-0.45
# against every archive measured (README, Predictions); an archive whose own images are isolated (a low
# quantile) must not lower it below that.
GLOBAL_OOD_SIMILARITY = 0.5
# Fewer stored images than this (of at least two patients) give no archive threshold: the global default
# stays. Below ~100 the 1% quantile is just the minimum of a few values, too noisy to serve.
MIN_ARCHIVE_IMAGES = 100
# Stored images sampled as queries; their neighbours are searched among the whole index.
MAX_QUERIES = 256
# Neighbours fetched per query to find the first one of another patient.
NEIGHBOURS = 32
# Refit when the index grew or shrank by this fraction since the last fit.
REFIT_CHANGE = 0.10

# (queries, k) -> per query (ids, similarities), best first; -1 ids are padding.
SearchFn = Callable[
    [npt.NDArray[np.float32], int], Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]
]


@dataclass(frozen=True)
class ArchiveOod:
    """The fitted threshold: the OOD_QUANTILE of stored images' best similarity to other patients' images."""

    fitted: float  # the quantile itself
    queries: int
    index_size: int
    quantile: float = OOD_QUANTILE
    median: float = float("nan")

    @property
    def similarity(self) -> float:
        """The threshold served: the fitted quantile, never below GLOBAL_OOD_SIMILARITY."""
        return max(self.fitted, GLOBAL_OOD_SIMILARITY)

    def stale(self, index_size: int) -> bool:
        """Whether the index changed enough since this fit to refit."""
        return abs(index_size - self.index_size) > REFIT_CHANGE * max(self.index_size, 1)

    def describe(self) -> str:
        """One line for reasons and logs (no patient data)."""
        return (
            f"archive default: {self.quantile:.0%} quantile {self.fitted:.2f} of {self.queries} stored "
            f"images' best similarity to other patients, floor {GLOBAL_OOD_SIMILARITY:.2f}"
        )


def best_other_patient(
    query_groups: Sequence[str],
    neighbour_ids: Sequence[npt.NDArray[np.int64]],
    neighbour_sims: Sequence[npt.NDArray[np.float32]],
    group_of: Callable[[int], str | None],
) -> npt.NDArray[np.float64]:
    """Each query's similarity to its best neighbour of another patient group (nan when none was fetched)."""
    top = np.full(len(query_groups), np.nan, dtype=np.float64)
    for q, (group, ids, sims) in enumerate(zip(query_groups, neighbour_ids, neighbour_sims, strict=True)):
        for image_id, similarity in zip(ids, sims, strict=True):
            other = group_of(int(image_id)) if image_id >= 0 else None
            if other is not None and other != group:
                top[q] = float(similarity)
                break
    return top


def fit_archive_ood(
    ids: npt.NDArray[np.int64],
    vectors_of: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]],
    search: SearchFn,
    groups_of: Callable[[Sequence[int]], dict[int, str]],
    *,
    max_queries: int = MAX_QUERIES,
    seed: int = 0,
) -> ArchiveOod | None:
    """Fit the threshold on the stored images alone, as `train-head` fits it on labeled ones; None if too few.

    A sample of stored images queries the index; each one's best similarity to an image of another patient
    (patient id, else its case) is what an in-distribution query reaches; the OOD_QUANTILE of those is the
    threshold. Only the archive's own images enter the fit (never a query).
    """
    if len(ids) < MIN_ARCHIVE_IMAGES:
        return None
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(ids, size=min(max_queries, len(ids)), replace=False)).astype(np.int64)
    results = search(vectors_of(sample), NEIGHBOURS)
    neighbour_ids = [r[0] for r in results]
    wanted = {int(i) for i in sample} | {int(i) for r in neighbour_ids for i in r if i >= 0}
    groups = groups_of(sorted(wanted))
    top = best_other_patient(
        [groups.get(int(i), f"image:{int(i)}") for i in sample],
        neighbour_ids,
        [r[1] for r in results],
        groups.get,
    )
    finite = top[np.isfinite(top)]
    if len(finite) < MIN_ARCHIVE_IMAGES:  # one patient, or every neighbour list held only the same patient
        return None
    return ArchiveOod(
        fitted=float(np.quantile(finite, OOD_QUANTILE)),
        queries=len(finite),
        index_size=len(ids),
        median=float(np.median(finite)),
    )


class ArchiveOodCache:
    """The archive threshold of a serving process, refitted when the index changed by REFIT_CHANGE."""

    def __init__(self) -> None:
        self._fit: ArchiveOod | None = None
        self._fitted_size = -1
        self._lock = threading.Lock()

    def get(self, archive: Archive, index_lock: threading.RLock | threading.Lock) -> ArchiveOod | None:
        """The current fit, refitted first when the index changed enough (or grew past a None fit)."""
        with index_lock:
            size = len(archive.index)
        with self._lock:
            fresh = self._fit is not None and not self._fit.stale(size)
            if fresh or (self._fit is None and size == self._fitted_size):
                return self._fit
            self._fit, self._fitted_size = fit_from_archive(archive, index_lock), size
            if self._fit is not None:
                log.info(
                    "archive OOD threshold %.3f (quantile %.3f of %d stored images of %d; median %.3f)",
                    self._fit.similarity,
                    self._fit.fitted,
                    self._fit.queries,
                    size,
                    self._fit.median,
                )
            return self._fit


def fit_from_archive(archive: Archive, index_lock: threading.RLock | threading.Lock) -> ArchiveOod | None:
    """`fit_archive_ood` over an open archive: its index, its catalog's stored vectors and patients."""
    catalog, encoder = archive.catalog, archive.encoder

    def search(
        queries: npt.NDArray[np.float32], k: int
    ) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        with index_lock:
            return [(r.ids, r.similarities) for r in archive.index.search(queries, k)]

    def groups_of(ids: Sequence[int]) -> dict[int, str]:
        rows = catalog.images_by_ids(list(ids))
        return {
            i: f"patient:{row.case.patient_ref}" if row.case.patient_ref else f"case:{row.case_id}"
            for i, row in rows.items()
        }

    with index_lock:
        ids = archive.index.ids().copy()
    return fit_archive_ood(
        ids,
        lambda sample: catalog.stored_vectors(sample, encoder=encoder.name, dim=encoder.dim),
        search,
        groups_of,
    )
