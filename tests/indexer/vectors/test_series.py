"""Two-stage series search: a subset of a series' slices finds that series with the right slice pairs."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.vectors.series import SeriesIndex, max_sim


def _volumes(seed: int = 0, series: int = 60, slices: int = 30, dim: int = 32) -> list[np.ndarray]:
    """Series whose slices drift smoothly (a random walk), like neighbouring CT slices."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(series):
        steps = rng.normal(0, 0.35, (slices, dim)).cumsum(axis=0) + rng.normal(0, 1.0, dim)
        out.append((steps / np.linalg.norm(steps, axis=1, keepdims=True)).astype(np.float32))
    return out


def test_a_subset_of_slices_finds_its_series_with_the_right_pairs() -> None:
    volumes = _volumes()
    index = SeriesIndex(list(range(100, 160)), volumes)
    rng = np.random.default_rng(1)
    chosen = np.arange(5, 25, 4)  # every 4th slice of a middle stretch, with noise
    query = volumes[17][chosen] + rng.normal(0, 0.05, (len(chosen), volumes[17].shape[1])).astype(np.float32)
    hits = index.search(query, k=3, shortlist=10, pairs=len(chosen))
    assert hits[0].series_id == 117
    assert sorted((q, s) for q, s, _ in hits[0].pairs) == [(i, int(c)) for i, c in enumerate(chosen)]
    # the shortlist agrees with the exact MaxSim over every series
    assert [h.series_id for h in hits] == [sid for sid, _ in index.brute_force(query, k=3)]


def test_max_sim_is_the_mean_of_each_query_slices_best_match() -> None:
    query = np.eye(3, dtype=np.float32)[:2]
    slices = np.array([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]], np.float32)
    score, best, values = max_sim(query, slices)
    assert best.tolist() == [1, 0] and values.tolist() == pytest.approx([1.0, 0.8])
    assert score == pytest.approx(0.9)


def test_a_series_needs_slices() -> None:
    with pytest.raises(ValueError, match="at least one slice"):
        SeriesIndex([1, 2], [np.ones((2, 4), np.float32), np.ones((0, 4), np.float32)])
