"""The index's post-processing option: fitted on the database only, by hand-equal search, incremental adds, saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.catalog import Case, Catalog, Image
from indexer.errors import IndexCorruptError
from indexer.settings import IndexerSettings
from indexer.vectors import postprocess as pp
from indexer.vectors.index import VectorIndex
from indexer.vectors.index_postprocess import PostprocessError, parse_postprocess
from indexer.vectors.persistence import postprocess_path

DIM = 16


def _anisotropic(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Unit vectors with a few dominant axes (so whitening changes the ranking), optionally shifted away."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)) * np.linspace(4.0, 0.2, DIM) + shift
    return pp.l2_normalise(x)


@pytest.fixture()
def database() -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(1000, 1000 + 240, dtype=np.int64)[::-1].copy()  # not sorted: the fit sorts by id
    return ids, _anisotropic(240, seed=0)


def _by_id(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(ids)
    return ids[order], vectors[order]


def _stored(index: VectorIndex, ids: np.ndarray) -> np.ndarray:
    return np.stack([index._index.reconstruct(int(i)) for i in ids])


def test_the_fit_uses_the_database_only_and_queries_never_change_it(database) -> None:  # type: ignore[no-untyped-def]
    ids, vectors = database
    index = VectorIndex.build(ids, vectors, encoder="enc", postprocess="pcaw+dba+rerank")
    post = index.postprocess
    assert post is not None and post.whitening is not None
    sorted_ids, sorted_db = _by_id(ids, vectors)
    alone = pp.fit_whitening(sorted_db, power=0.25, shrinkage=0.1)
    np.testing.assert_allclose(post.whitening.mean, alone.mean, atol=1e-12)
    np.testing.assert_allclose(post.whitening.projection, alone.projection, atol=1e-9)
    # the stored rows are DBA over the whitened database alone; each row's neighbour list is the database's
    expected = pp.database_augmentation(alone.transform(sorted_db), n=3, alpha=3.0)
    np.testing.assert_allclose(_stored(index, sorted_ids), expected, atol=1e-5)
    db_nn, _ = pp.top_neighbours(expected, expected, 10)
    assert np.array_equal(post.neighbour_table, sorted_ids[db_nn])
    before = (
        post.whitening.mean.copy(),
        post.whitening.projection.copy(),
        post.neighbour_table.copy(),
        post.version,
    )
    far = _anisotropic(50, seed=9, shift=25.0)  # queries far from the database
    index.search(far, k=10)
    index.search(far, k=10, allowed_ids=sorted_ids[:30])
    assert np.array_equal(post.whitening.mean, before[0])
    assert np.array_equal(post.whitening.projection, before[1])
    assert np.array_equal(post.neighbour_table, before[2]) and post.version == before[3]
    assert len(index) == 240  # no query was stored


def test_pcaw_search_ranks_as_the_whitening_applied_by_hand(database) -> None:  # type: ignore[no-untyped-def]
    ids, vectors = database
    index = VectorIndex.build(ids, vectors, encoder="enc", postprocess="pcaw:power=0.5,shrink=0.01,dim=8")
    sorted_ids, sorted_db = _by_id(ids, vectors)
    by_hand = pp.fit_whitening(sorted_db, power=0.5, shrinkage=0.01, dim=8)
    queries = _anisotropic(20, seed=5)
    sims = by_hand.transform(queries) @ by_hand.transform(sorted_db).T
    expected = sorted_ids[np.argsort(-sims, axis=1, kind="stable")[:, :10]]
    found = index.search(queries, k=10)
    assert np.array_equal(np.stack([r.ids for r in found]), expected)
    np.testing.assert_allclose(
        np.stack([r.similarities for r in found]), np.sort(sims, axis=1)[:, ::-1][:, :10], atol=1e-5
    )
    # and the ranking differs from the plain one (the test would pass vacuously otherwise)
    plain = sorted_ids[np.argsort(-(queries @ sorted_db.T), axis=1)[:, :10]]
    assert not np.array_equal(plain, expected)


def test_the_chain_and_the_rerank_rank_as_postprocess_py_by_hand(database) -> None:  # type: ignore[no-untyped-def]
    ids, vectors = database
    sorted_ids, sorted_db = _by_id(ids, vectors)
    queries = _anisotropic(15, seed=6)
    # pcaw + dba + aqe, as scripts/eval_label_free.py chains them
    index = VectorIndex.build(ids, vectors, encoder="enc", postprocess="aqe+dba+pcaw")  # any order
    assert str(index.postprocess.spec) == "pcaw:dim=0,power=0.25,shrink=0.1+dba:alpha=3,n=3+aqe:alpha=3,n=3"  # type: ignore[union-attr]
    w = pp.fit_whitening(sorted_db, power=0.25, shrinkage=0.1)
    db = pp.database_augmentation(w.transform(sorted_db), n=3, alpha=3.0)
    q = w.transform(queries)
    positions, _ = pp.top_neighbours(q, db, 2)
    q = pp.alpha_query_expansion(q, db, positions, n=3, alpha=3.0)
    expected = sorted_ids[np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :10]]
    assert np.array_equal(np.stack([r.ids for r in index.search(queries, k=10)]), expected)
    # the shared-neighbour re-ranking over a database smaller than its shortlist: exactly the dense formula
    small_ids, small_db = ids[:80], vectors[:80]
    s_ids, s_db = _by_id(small_ids, small_db)
    index = VectorIndex.build(small_ids, small_db, encoder="enc", postprocess="rerank:k=5,w=0.3")
    db_nn, _ = pp.top_neighbours(s_db, s_db, 5)
    scores = pp.shared_neighbour_rerank(queries @ s_db.T, db_nn, k=5, weight=0.3)
    expected = s_ids[np.argsort(-scores, axis=1, kind="stable")[:, :10]]
    found = index.search(queries, k=10)
    assert np.array_equal(np.stack([r.ids for r in found]), expected)
    np.testing.assert_allclose(found[0].similarities, np.sort(scores[0])[::-1][:10], atol=1e-5)


def test_rows_added_after_the_fit_go_through_the_fitted_state(database) -> None:  # type: ignore[no-untyped-def]
    ids, vectors = database
    index = VectorIndex.build(ids, vectors, encoder="enc", postprocess="pcaw:dim=12")
    post = index.postprocess
    assert post is not None and post.whitening is not None
    version, mean = post.version, post.whitening.mean.copy()
    new_ids = np.arange(5000, 5030, dtype=np.int64)
    new = _anisotropic(30, seed=7, shift=3.0)
    index.add(new_ids, new)
    assert post.version == version and np.array_equal(post.whitening.mean, mean)  # not refitted
    np.testing.assert_allclose(_stored(index, new_ids), post.whitening.transform(new), atol=1e-6)
    assert index.search(new[3], k=1)[0].ids[0] == new_ids[3]
    # DBA: a new row is augmented over its nearest stored rows, with the fitted whitening
    index = VectorIndex.build(ids, vectors, encoder="enc", postprocess="pcaw+dba:n=3,alpha=1")
    post = index.postprocess
    assert post is not None and post.whitening is not None
    projected = post.whitening.transform(new[:1])
    neighbours = index.search(new[:1], k=2)[0].ids  # pcaw+dba: the search is over the stored rows
    by_hand = pp.alpha_query_expansion(
        projected, _stored(index, neighbours), np.array([[0, 1]]), n=3, alpha=1.0
    )
    index.add(new_ids[:1], new[:1])
    np.testing.assert_allclose(_stored(index, new_ids[:1]), by_hand, atol=1e-5)


def test_the_fitted_state_is_saved_checked_and_loaded(tmp_path: Path, database) -> None:  # type: ignore[no-untyped-def]
    ids, vectors = database
    index = VectorIndex.build(ids, vectors, encoder="enc", postprocess="pcaw+rerank")
    path = tmp_path / "enc.faiss"
    index.save(path)
    loaded = VectorIndex.load(path, encoder="enc", dim=DIM)
    assert loaded.postprocess is not None and loaded.postprocess.version == index.postprocess.version  # type: ignore[union-attr]
    assert loaded.describe()["postprocess"]["spec"] == "pcaw:dim=0,power=0.25,shrink=0.1+rerank:k=10,w=0.3"
    queries = _anisotropic(5, seed=8)
    assert [r.ids.tolist() for r in loaded.search(queries, 10)] == [
        r.ids.tolist() for r in index.search(queries, 10)
    ]
    state = postprocess_path(path)
    state.write_bytes(state.read_bytes()[:-7] + b"garbage")
    with pytest.raises(IndexCorruptError, match="post-processing state"):
        VectorIndex.load(path, encoder="enc", dim=DIM)
    with pytest.raises(IndexCorruptError, match="dim 16"):
        VectorIndex.load(path, encoder="enc", dim=12)  # the raw dimension is checked, not the stored one


def test_a_bad_spec_names_the_valid_ones() -> None:
    for bad, words in [
        ("whiten", ["unknown post-processing step 'whiten'", "pcaw, dba, aqe, rerank, diffusion"]),
        ("pcaw:strength=2", ["pcaw has no setting 'strength=2'", "power=<number>"]),
        ("aqe:n=two", ["aqe:n needs a number"]),
        ("dba+dba", ["named twice"]),
        ("rerank:w=2", ["out of range"]),
        ("dba:n=2.5", ["whole number"]),
    ]:
        with pytest.raises(PostprocessError) as caught:
            parse_postprocess(bad)
        for word in words:
            assert word in str(caught.value), (bad, str(caught.value))
    assert parse_postprocess(" None ").none and parse_postprocess("").none
    with pytest.raises(ValueError, match="valid: none"):
        IndexerSettings(index_postprocess="whiten")
    assert IndexerSettings(index_postprocess="PCAW").index_postprocess == "pcaw:dim=0,power=0.25,shrink=0.1"
    with pytest.raises(PostprocessError, match="lower dim"):
        VectorIndex.build(np.arange(10), _anisotropic(10, 0), encoder="enc", postprocess="pcaw:dim=12")
    with pytest.raises(ValueError, match="flat, hnsw or ivf_flat"):
        from indexer.vectors.kinds import spec_for_kind

        ids = np.arange(2000)
        spec = spec_for_kind("ivf_sq8", 2000, DIM)
        VectorIndex.build(ids, _anisotropic(2000, 0), encoder="enc", spec=spec, postprocess="dba")


def _catalog(tmp_path: Path, vectors: np.ndarray) -> Catalog:
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    _insert(catalog, vectors, start=0)
    return catalog


def _insert(catalog: Catalog, vectors: np.ndarray, start: int) -> None:
    with catalog.session() as session:
        case = Case(case_key=f"k{start}")
        session.add(case)
        for i, v in enumerate(vectors, start=start):
            session.add(
                Image(
                    case=case,
                    source_uri=f"file:///x/{i}",
                    sha256=f"{i:064d}",
                    format="png",
                    encoder="enc",
                    embedding=np.asarray(v, np.float32).tobytes(),
                )
            )


def test_catalog_rebuilds_refit_same_version_for_the_same_rows_and_keep_the_option_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vectors = _anisotropic(60, seed=1)
    catalog = _catalog(tmp_path, vectors)
    first = VectorIndex.build_from_catalog(catalog, encoder="enc", dim=DIM, postprocess="pcaw:power=0.5")
    again = VectorIndex.build_from_catalog(catalog, encoder="enc", dim=DIM, postprocess="pcaw:power=0.5")
    assert first.postprocess is not None and again.postprocess is not None
    assert first.postprocess.version == again.postprocess.version
    other = VectorIndex.build_from_catalog(catalog, encoder="enc", dim=DIM, postprocess="pcaw:power=0.25")
    assert other.postprocess is not None and other.postprocess.version != first.postprocess.version
    path = tmp_path / "enc.faiss"
    first.save(path)
    _insert(catalog, _anisotropic(3, seed=2), start=100)  # new rows the saved index lacks
    reopened = VectorIndex.open(path, catalog, encoder="enc", dim=DIM)  # stale -> rebuilt, refitted
    assert "REBUILDING" in caplog.text and len(reopened) == 63
    assert reopened.postprocess is not None and str(reopened.postprocess.spec) == str(first.postprocess.spec)
    assert (
        reopened.postprocess.version != first.postprocess.version and reopened.postprocess.fitted_rows == 63
    )
    caplog.clear()
    loaded = VectorIndex.open(path, catalog, encoder="enc", dim=DIM)  # in step: loaded as it is
    assert "REBUILDING" not in caplog.text
    assert loaded.postprocess is not None and loaded.postprocess.version == reopened.postprocess.version


def test_eval_postprocess_retrieves_as_the_label_free_script_with_banned_neighbours(database) -> None:  # type: ignore[no-untyped-def]
    from indexer.evaluation.protocol import retrieve, retrieve_postprocessed

    _, vectors = database
    queries = _anisotropic(12, seed=4)
    banned = [set(range(i, i + 5)) if i % 3 else set() for i in range(12)]  # some queries lose neighbours
    w = pp.fit_whitening(vectors, power=0.25, shrinkage=0.1)
    expected = retrieve(w.transform(vectors), w.transform(queries), 10, banned=banned)
    got = retrieve_postprocessed(vectors, queries, 10, banned=banned, postprocess="pcaw")
    assert np.array_equal(got.positions, expected.positions)
    np.testing.assert_allclose(got.similarities, expected.similarities, atol=1e-5)
    # aqe expands over the list the query is shown (its banned positions left out)
    shown = retrieve(vectors, queries, 2, banned=banned).positions
    expanded = pp.alpha_query_expansion(queries, vectors, shown, n=3, alpha=3.0)
    expected = retrieve(vectors, expanded, 10, banned=banned)
    got = retrieve_postprocessed(vectors, queries, 10, banned=banned, postprocess="aqe")
    assert np.array_equal(got.positions, expected.positions)
    assert all(not (set(row) & ban) for row, ban in zip(got.positions.tolist(), banned, strict=True))
