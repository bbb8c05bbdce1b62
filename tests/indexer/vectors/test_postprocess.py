"""Label-free post-processing: whitening, alpha-QE, DBA and shared-neighbour re-ranking."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.vectors import postprocess as pp


def unit(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # anisotropic, so that whitening has something to undo
    data = rng.normal(size=(rows, dim)) * np.linspace(5.0, 0.1, dim)
    return pp.l2_normalise(data)


def test_whitening_makes_database_covariance_identity_and_keeps_shapes() -> None:
    database = unit(200, 16)
    whitening = pp.fit_whitening(database)
    assert whitening.dim == 16
    raw = whitening.transform(database, normalise=False)
    assert raw.shape == (200, 16)
    np.testing.assert_allclose(np.cov(raw, rowvar=False), np.eye(16), atol=1e-4)
    queries = unit(7, 16, seed=1)
    out = whitening.transform(queries)
    assert out.shape == (7, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_whitening_dim_defaults_to_rank_of_a_small_database_and_can_be_cut() -> None:
    database = unit(10, 32)
    assert pp.fit_whitening(database).dim == 9
    assert pp.fit_whitening(database, dim=4).transform(database).shape == (10, 4)
    with pytest.raises(ValueError, match="dim"):
        pp.fit_whitening(database, dim=10)


def test_whitening_is_fitted_on_the_database_only() -> None:
    database = unit(50, 8)
    whitening = pp.fit_whitening(database, power=0.25, shrinkage=0.1)
    np.testing.assert_allclose(whitening.mean, database.mean(axis=0), atol=1e-6)
    # a query is transformed row by row: the same query alone or among others gets the same vector
    queries = unit(5, 8, seed=3)
    alone = whitening.transform(queries[:1])
    np.testing.assert_allclose(whitening.transform(queries)[:1], alone, atol=1e-6)
    far = unit(5, 8, seed=9) * 100
    np.testing.assert_allclose(whitening.transform(np.vstack([queries[:1], far]))[:1], alone, atol=1e-6)


def test_dba_and_qe_never_see_queries_when_fitting_the_database() -> None:
    database = unit(20, 6)
    augmented = pp.database_augmentation(database, n=3)
    # DBA takes only the database; alpha-QE returns new queries and leaves the database untouched
    before = database.copy()
    queries = unit(3, 6, seed=5)
    positions, _ = pp.top_neighbours(queries, augmented, 3)
    pp.alpha_query_expansion(queries, augmented, positions, n=3)
    np.testing.assert_array_equal(database, before)
    np.testing.assert_allclose(pp.database_augmentation(database, n=3), augmented, atol=1e-7)


def test_power_zero_only_rotates() -> None:
    database = unit(40, 6)
    whitening = pp.fit_whitening(database, power=0.0)
    centred = database - database.mean(axis=0)
    raw = whitening.transform(database, normalise=False)
    # an orthogonal projection (full rank) keeps pairwise distances of the centred vectors
    np.testing.assert_allclose(raw @ raw.T, centred @ centred.T, atol=1e-5)


def test_alpha_qe_with_alpha_zero_and_n_one_is_the_identity() -> None:
    database, queries = unit(30, 8), unit(4, 8, seed=2)
    positions, _ = pp.top_neighbours(queries, database, 5)
    out = pp.alpha_query_expansion(queries, database, positions, n=1, alpha=0.0)
    np.testing.assert_allclose(out, queries, atol=1e-6)


def test_alpha_qe_averages_the_query_with_its_neighbours() -> None:
    database = pp.l2_normalise(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    query = pp.l2_normalise(np.array([[1.0, 1.0]]))
    positions = np.array([[0, 1, -1]])
    out = pp.alpha_query_expansion(query, database, positions, n=3, alpha=0.0)
    expected = pp.l2_normalise(query + database[0] + database[1])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # a missing neighbour (-1) adds nothing
    only = pp.alpha_query_expansion(query, database, np.array([[0, -1]]), n=3, alpha=0.0)
    np.testing.assert_allclose(only, pp.l2_normalise(query + database[0]), atol=1e-6)


def test_dba_keeps_norms_one_and_shape_and_n_one_is_identity() -> None:
    database = unit(25, 8)
    out = pp.database_augmentation(database, n=3, alpha=3.0)
    assert out.shape == database.shape
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pp.database_augmentation(database, n=1), database, atol=1e-6)


def test_top_neighbours_best_first() -> None:
    database = pp.l2_normalise(np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]))
    positions, sims = pp.top_neighbours(np.array([[1.0, 0.0]], np.float32), database, 2)
    assert positions.tolist() == [[0, 1]]
    np.testing.assert_allclose(sims, [[1.0, 0.8]], atol=1e-6)


def test_shared_neighbour_rerank_weight_zero_keeps_scores() -> None:
    database, queries = unit(20, 6), unit(3, 6, seed=4)
    sims = queries @ database.T
    db_nn, _ = pp.top_neighbours(database, database, 5)
    np.testing.assert_allclose(pp.shared_neighbour_rerank(sims, db_nn, k=5, weight=0.0), sims, atol=1e-6)
    boosted = pp.shared_neighbour_rerank(sims, db_nn, k=5, weight=1.0)
    assert boosted.shape == sims.shape and (boosted >= 0).all() and (boosted <= 1).all()
