"""Diffusion re-ranking (Iscen et al.): follows a manifold, graph fitted on the database only, saved, checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.vectors import postprocess as pp
from indexer.vectors.index import VectorIndex
from indexer.vectors.index_postprocess import PostprocessError, parse_postprocess

DIM = 8
STEP, GAP, POINTS = 0.03, 0.15, 30  # along each chain, between the chains, points per chain


def _chains() -> tuple[np.ndarray, np.ndarray]:
    """Two parallel arcs on the unit sphere, 0.03 rad between neighbours on a chain, 0.15 rad apart.

    Returns the vectors (chain A first) and each point's chain (0 or 1). Far points of chain A are
    less similar to A's start than the near points of chain B, but A is one connected chain.
    """
    theta = np.arange(POINTS) * STEP
    rows = []
    for chain in (0, 1):
        tilt = GAP * chain
        arc = np.zeros((POINTS, DIM))
        arc[:, 0] = np.cos(theta) * np.cos(tilt)
        arc[:, 1] = np.sin(theta) * np.cos(tilt)
        arc[:, 2] = np.sin(tilt)
        rows.append(arc)
    return pp.l2_normalise(np.concatenate(rows)), np.repeat([0, 1], POINTS)


def _query() -> np.ndarray:
    q = np.zeros((1, DIM))
    q[0, 0], q[0, 1] = np.cos(-0.01), np.sin(-0.01)  # just before chain A's first point
    return pp.l2_normalise(q)


SPEC = "diffusion:k=4,kq=2"


def test_diffusion_follows_the_chain_where_cosine_jumps_to_the_other_one() -> None:
    vectors, chain = _chains()
    ids = np.arange(500, 500 + len(vectors), dtype=np.int64)
    query = _query()
    plain = ids[np.argsort(-(query @ vectors.T)[0], kind="stable")][:POINTS]
    assert (chain[plain - 500] == 1).sum() >= 10  # cosine: many nearer chain-B points among the first 30
    index = VectorIndex.build(ids, vectors, encoder="enc", postprocess=SPEC)
    found = index.search(query, k=POINTS)[0]
    assert (chain[found.ids - 500] == 0).all(), chain[found.ids - 500]  # diffusion: all of chain A first
    assert np.all(np.diff(found.similarities) <= 1e-6)  # scores are returned best first
    # the same ranking as postprocess.py's dense re-ranking by hand
    nb, nb_sims = pp.knn_graph(vectors, 4)
    positions, scores = pp.diffusion_rerank(query @ vectors.T, nb, nb_sims, depth=POINTS, kq=2)
    assert np.array_equal(ids[positions[0]], found.ids)
    np.testing.assert_allclose(scores[0], found.similarities, rtol=1e-4, atol=1e-6)
    # the graph holds each point's 4 nearest same-chain neighbours (the chains never touch)
    post = index.postprocess
    assert post is not None
    same = chain[post.graph_table - 500] == chain[post.graph_ids - 500][:, None]
    assert same.all() and post.graph_table.shape == (2 * POINTS, 4)


def test_the_graph_is_fitted_on_the_database_only_and_queries_never_change_it() -> None:
    vectors, _ = _chains()
    ids = np.arange(len(vectors), dtype=np.int64)[::-1].copy()  # not sorted: the fit sorts by id
    index = VectorIndex.build(ids, vectors, encoder="enc", postprocess="diffusion:k=6")
    post = index.postprocess
    assert post is not None
    order = np.argsort(ids)
    by_hand, by_hand_sims = pp.knn_graph(vectors[order], 6)
    assert np.array_equal(post.graph_ids, ids[order])
    assert np.array_equal(post.graph_table, ids[order][by_hand])
    np.testing.assert_allclose(post.graph_sims, by_hand_sims, atol=1e-6)
    before = (post.graph_ids.copy(), post.graph_table.copy(), post.graph_sims.copy(), post.version)
    rng = np.random.default_rng(3)
    queries = pp.l2_normalise(rng.normal(size=(20, DIM)))
    index.search(queries, k=10)
    index.search(queries, k=10, allowed_ids=ids[:25])
    assert np.array_equal(post.graph_ids, before[0]) and np.array_equal(post.graph_table, before[1])
    assert np.array_equal(post.graph_sims, before[2]) and post.version == before[3]
    assert len(index) == len(vectors)
    # a search restricted to allowed ids only returns those, the graph truncated to them
    hits = index.search(queries[:3], k=10, allowed_ids=ids[:25])
    assert all(set(r.ids.tolist()) <= set(ids[:25].tolist()) and len(r.ids) == 10 for r in hits)


def test_rows_added_after_the_fit_join_the_graph_as_a_refit_would_place_them() -> None:
    vectors, _ = _chains()
    ids = np.arange(len(vectors), dtype=np.int64)
    first, later = np.arange(0, len(vectors), 2), np.arange(1, len(vectors), 2)  # every other point later
    index = VectorIndex.build(ids[first], vectors[first], encoder="enc", postprocess="diffusion:k=4")
    post = index.postprocess
    assert post is not None
    version = post.version
    index.add(ids[later], vectors[later])
    assert post.version == version  # not refitted
    refit = VectorIndex.build(ids, vectors, encoder="enc", postprocess="diffusion:k=4").postprocess
    assert refit is not None
    assert np.array_equal(post.graph_ids, refit.graph_ids)
    np.testing.assert_allclose(post.graph_sims, refit.graph_sims, atol=1e-6)
    # equal similarities may swap places; the neighbour sets by similarity are the same
    assert all(
        set(a.tolist()) == set(b.tolist()) or np.allclose(sa, sb, atol=1e-6)
        for a, b, sa, sb in zip(
            post.graph_table, refit.graph_table, post.graph_sims, refit.graph_sims, strict=True
        )
    )


def test_the_graph_survives_save_and_load(tmp_path: Path) -> None:
    vectors, _ = _chains()
    ids = np.arange(len(vectors), dtype=np.int64)
    index = VectorIndex.build(ids, vectors, encoder="enc", postprocess="pcaw:power=0.25+" + SPEC)
    path = tmp_path / "enc.faiss"
    index.save(path)
    loaded = VectorIndex.load(path, encoder="enc", dim=DIM)
    post, again = index.postprocess, loaded.postprocess
    assert post is not None and again is not None and again.version == post.version
    assert (
        str(again.spec) == "pcaw:dim=0,power=0.25,shrink=0.1+diffusion:alpha=0.99,gamma=3,k=4,kq=2,trunc=1000"
    )
    assert np.array_equal(again.graph_table, post.graph_table) and np.array_equal(
        again.graph_ids, post.graph_ids
    )
    assert np.array_equal(again.graph_sims, post.graph_sims)
    query = _query()
    assert loaded.search(query, 20)[0].ids.tolist() == index.search(query, 20)[0].ids.tolist()


def test_a_bad_diffusion_setting_names_the_valid_ones() -> None:
    for bad, words in [
        (
            "diffusion:beta=2",
            ["diffusion has no setting 'beta=2'", "k=<number>", "kq=<number>", "trunc=<number>"],
        ),
        ("diffusion:alpha=1", ["out of range", "0 < alpha < 1", "k >= 1", "gamma > 0"]),
        ("diffusion:gamma=0", ["out of range", "gamma > 0"]),
        ("diffusion:k=0", ["out of range", "k >= 1"]),
        ("diffusion:trunc=10.5", ["whole number"]),
        ("rerank+diffusion", ["choose one", "rerank and diffusion"]),
        (
            "difusion",
            ["unknown post-processing step 'difusion'", "diffusion:k=50,kq=10,alpha=0.99,gamma=3,trunc=1000"],
        ),
    ]:
        with pytest.raises(PostprocessError) as caught:
            parse_postprocess(bad)
        for word in words:
            assert word in str(caught.value), (bad, str(caught.value))
    assert str(parse_postprocess("diffusion")) == "diffusion:alpha=0.99,gamma=3,k=50,kq=10,trunc=1000"


def test_conjugate_gradient_solves_the_diffusion_system() -> None:
    rng = np.random.default_rng(0)
    nb, sims = pp.knn_graph(pp.l2_normalise(rng.normal(size=(40, DIM))), 5)
    affinity = pp.mutual_affinity(nb, sims, gamma=3.0)
    assert np.array_equal(affinity, affinity.T) and (affinity >= 0).all() and affinity.any()
    degrees = affinity.sum(axis=1)
    scale = np.where(degrees > 0, degrees**-0.5, 0.0)
    system = np.eye(40) - 0.5 * scale[:, None] * affinity * scale[None, :]
    rhs = rng.random(40)
    solved = pp.conjugate_gradient(system, rhs, iterations=200, tolerance=1e-10)
    np.testing.assert_allclose(solved, np.linalg.solve(system, rhs), atol=1e-8)
