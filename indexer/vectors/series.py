"""Series search in two stages: series vectors shortlist, per-slice MaxSim (late interaction) re-ranks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SeriesHit:
    """A series, its late-interaction score, and the best (query slice, its slice, cosine) pairs."""

    series_id: int
    score: float
    pairs: list[tuple[int, int, float]]


def _unit(vectors: npt.ArrayLike) -> Vectors:
    array = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12), dtype=np.float32)


def max_sim(query: Vectors, slices: Vectors) -> tuple[float, npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Late interaction: the mean over query slices of their best cosine among `slices`.

    Returns the score, and for each query slice the index of its best slice and that cosine.
    """
    sims = query @ slices.T
    best = sims.argmax(axis=1)
    values = sims[np.arange(len(query)), best]
    return float(values.mean()), best.astype(np.int64), values.astype(np.float32)


class SeriesIndex:
    """Per-slice vectors grouped by series (contiguous), a series vector each (the renormalised mean of
    its slices) in an exact inner-product FAISS index; ids are the caller's (catalog series ids)."""

    def __init__(self, series_ids: Sequence[int], slices: Sequence[Vectors]) -> None:
        if len(series_ids) != len(slices) or not slices:
            raise ValueError("give one array of slice vectors per series id, and at least one series")
        self.series_ids = np.asarray(series_ids, np.int64)
        sizes = np.array([len(s) for s in slices], np.int64)
        if (sizes < 1).any():
            raise ValueError("every series needs at least one slice vector")
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.slices = _unit(np.concatenate(slices))
        means = np.add.reduceat(self.slices, self.offsets[:-1], axis=0)
        self.series_vectors = _unit(means)
        self._index = faiss.IndexFlatIP(self.slices.shape[1])
        self._index.add(self.series_vectors)

    def __len__(self) -> int:
        return len(self.series_ids)

    def slices_of(self, position: int) -> Vectors:
        """The slice vectors of the series at `position` (not its id)."""
        return self.slices[self.offsets[position] : self.offsets[position + 1]]

    def search(
        self,
        query_slices: Vectors,
        k: int = 10,
        shortlist: int = 200,
        pairs: int = 3,
        allowed_ids: npt.NDArray[np.int64] | None = None,
    ) -> list[SeriesHit]:
        """Two stages: the `shortlist` series whose vectors are closest to the query's series vector,
        re-ranked by MaxSim over their slices; k hits, each with its `pairs` best slice pairs.

        `allowed_ids` (series ids; None: all) restricts both stages to those series, never a top-k after.
        """
        query = _unit(query_slices)
        centre = _unit(query.mean(axis=0, keepdims=True))
        params = None
        pool = len(self)
        if allowed_ids is not None:
            positions = np.flatnonzero(np.isin(self.series_ids, allowed_ids)).astype(np.int64)
            if len(positions) == 0:
                return []
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(positions))  # type: ignore[call-arg]
            pool = len(positions)
        depth = min(max(shortlist, k), pool)
        _, found = self._index.search(centre, depth, params=params)
        scored = []
        for position in (int(p) for p in found[0] if p >= 0):
            score, best, values = max_sim(query, self.slices_of(position))
            scored.append((score, position, best, values))
        scored.sort(key=lambda item: -item[0])
        return [
            self._hit(score, position, best, values, pairs) for score, position, best, values in scored[:k]
        ]

    def brute_force(self, query_slices: Vectors, k: int = 10) -> list[tuple[int, float]]:
        """Exact MaxSim of every series (one pass over all slices): the reference the shortlist is judged by."""
        query = _unit(query_slices)
        sims = query @ self.slices.T  # (q, all slices)
        per_series = np.maximum.reduceat(sims, self.offsets[:-1], axis=1)  # best slice per query slice
        scores = per_series.mean(axis=0)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(self.series_ids[p]), float(scores[p])) for p in top]

    def _hit(
        self,
        score: float,
        position: int,
        best: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        pairs: int,
    ) -> SeriesHit:
        order = np.argsort(-values, kind="stable")[:pairs]
        return SeriesHit(
            series_id=int(self.series_ids[position]),
            score=score,
            pairs=[(int(q), int(best[q]), float(values[q])) for q in order],
        )
