"""Search-parameter tuning of approximate indexes: ladders, recall@10 against exact search, the chosen Tuning."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

TARGET_RECALL = 0.95
RECALL_K = 10
TUNING_QUERIES = 200
TUNING_MARGIN = 0.02
NPROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096)
EF_SEARCH_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)

# Lossy product codes rank poorly on their own: an IVF-PQ search fetches rerank x k candidates and
# re-ranks them by their exact stored vectors (the catalog's, or the build's in memory); tuning climbs
# nprobe at each factor of this ladder until recall@10 reaches the target.
RERANK_LADDER = (10, 30, 100)


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

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Tuning:
        """Read the sidecar's form back (missing fields: an exact, untuned index)."""
        return cls(
            str(raw.get("param", "")),
            int(raw.get("value", 0)),
            float(raw.get("recall_at_10", 1.0)),
            int(raw.get("queries", 0)),
            int(raw.get("rerank", 1)),
        )


EXACT_TUNING = Tuning("", 0, 1.0, 0)

# Measures recall@10 of the index set to a candidate tuning, on the held-out queries.
RecallProbe = Callable[[Tuning], float]


def climb(
    kind: str, nlist: int, reranks: Sequence[int], queries: int, probe: RecallProbe, target_recall: float
) -> Tuning:
    """The smallest nprobe / efSearch (and re-rank factor) whose measured recall@10 reaches the target.

    When no setting reaches it, the best one measured is returned and its recall says so.
    """
    ladder: tuple[int, ...]
    param, ladder = ("efSearch", EF_SEARCH_LADDER) if kind == "hnsw" else ("nprobe", NPROBE_LADDER)
    if param == "nprobe":
        ladder = (*(v for v in ladder if v < nlist), nlist)
    best: Tuning | None = None
    for rerank in reranks:
        previous: Tuning | None = None
        last = Tuning(param, ladder[-1], 0.0, queries, rerank)
        for value in ladder:
            candidate = Tuning(param, value, 0.0, queries, rerank)
            last = Tuning(param, value, probe(candidate), queries, rerank)
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
    return best


def exact_topk(
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


def recall_at_10(found: Sequence[np.ndarray] | np.ndarray, truth: npt.NDArray[np.int64]) -> float:
    """The fraction of the true top-10 ids that the found rows hold in their first 10."""
    hits = 0
    total = 0
    for row, expected in zip(found, truth, strict=True):
        want = {int(i) for i in expected if i >= 0}
        hits += len(want.intersection(int(i) for i in row[:RECALL_K] if i >= 0))
        total += len(want)
    return hits / total if total else 1.0
