"""The FAISS index: one id space with the catalog, filtered search, atomic save, checksum, rebuild."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.catalog import Case, Catalog, Image
from indexer.errors import IndexCorruptError
from indexer.vectors.index import VectorIndex


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_returns_catalog_ids_and_cosine() -> None:
    vectors = _unit(50, 16)
    index = VectorIndex(16, "enc")
    ids = np.arange(1000, 1050, dtype=np.int64)
    index.add(ids, vectors)
    result = index.search(vectors[7], k=3)[0]
    assert result.ids[0] == 1007
    assert result.similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert list(result.similarities) == sorted(result.similarities, reverse=True)


def test_filtered_search_only_returns_allowed_ids_even_when_rare() -> None:
    vectors = _unit(200, 16)
    index = VectorIndex(16, "enc")
    index.add(np.arange(200, dtype=np.int64), vectors)
    allowed = np.array([3, 150], dtype=np.int64)
    result = index.search(vectors[10], k=10, allowed_ids=allowed)[0]
    assert set(result.ids.tolist()) == {3, 150}
    assert index.search(vectors[10], k=5, allowed_ids=np.array([], dtype=np.int64))[0].ids.size == 0


def test_save_load_roundtrip_and_checksum(tmp_path: Path) -> None:
    index = VectorIndex(8, "enc")
    index.add(np.array([5, 9], dtype=np.int64), _unit(2, 8))
    path = tmp_path / "idx" / "enc.faiss"
    index.save(path)
    loaded = VectorIndex.load(path, encoder="enc", dim=8)
    assert sorted(loaded.ids().tolist()) == [5, 9]
    assert not list(path.parent.glob("*.tmp"))

    path.write_bytes(path.read_bytes()[:-10])  # truncated on disk
    with pytest.raises(IndexCorruptError, match="checksum"):
        VectorIndex.load(path, encoder="enc", dim=8)
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path / "absent.faiss", encoder="enc", dim=8)


def test_load_refuses_an_index_of_another_encoder(tmp_path: Path) -> None:
    index = VectorIndex(8, "enc-a")
    index.save(tmp_path / "a.faiss")
    with pytest.raises(IndexCorruptError, match="enc-a"):
        VectorIndex.load(tmp_path / "a.faiss", encoder="enc-b", dim=8)


def _catalog_with_vectors(tmp_path: Path, n: int) -> tuple[Catalog, np.ndarray]:
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    vectors = _unit(n, 8, seed=3)
    with catalog.session() as session:
        case = Case(case_key="k")
        session.add(case)
        for i, v in enumerate(vectors):
            session.add(
                Image(
                    case=case,
                    source_uri=f"file:///x/{i}",
                    sha256=f"{i:064d}",
                    format="png",
                    encoder="enc",
                    embedding=v.tobytes(),
                )
            )
    return catalog, vectors


def test_open_rebuilds_a_corrupt_or_stale_index_from_the_catalog(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog, vectors = _catalog_with_vectors(tmp_path, 12)
    path = tmp_path / "enc.faiss"
    index = VectorIndex.open(path, catalog, encoder="enc", dim=8)  # missing -> rebuilt, never empty
    assert len(index) == 12
    assert "REBUILDING" in caplog.text
    # a stale index (catalog ahead of it after a crash between row and vector) is rebuilt too
    stale = VectorIndex(8, "enc")
    stale.add(index.ids()[:5], vectors[:5])
    stale.save(path)
    caplog.clear()
    assert len(VectorIndex.open(path, catalog, encoder="enc", dim=8)) == 12
    assert "REBUILDING" in caplog.text
    # a good index is loaded as is
    caplog.clear()
    again = VectorIndex.open(path, catalog, encoder="enc", dim=8)
    assert len(again) == 12 and "REBUILDING" not in caplog.text
    first = catalog.image_ids_where(encoder="enc")[0]
    assert again.search(vectors[0], k=1)[0].ids[0] == first


# -- index kinds: tuning, rare filters, persistence, GPU ------------------------------------------

APPROXIMATE = ("hnsw", "ivf_flat", "ivf_sq8")


@pytest.fixture(autouse=True)
def _one_faiss_thread():  # type: ignore[no-untyped-def]
    # On a shared 2-core machine OpenMP's spinning threads make small faiss jobs many times slower.
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _clustered(n: int, dim: int, clusters: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _spec(kind: str, n: int, dim: int):  # type: ignore[no-untyped-def]
    from indexer.vectors.kinds import IndexSpec, spec_for_kind

    spec = spec_for_kind(kind, n, dim)
    if kind == "ivf_pq":  # 8-dim sub-vectors keep the test's codebook training quick
        return IndexSpec(**{**spec.to_dict(), "pq_m": dim // 8})
    return spec


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors, held-out queries) with non-contiguous catalog-like ids."""
    both = _clustered(6100, 32)
    vectors, queries = both[:6000], both[6000:]
    ids = np.arange(6000, dtype=np.int64) * 3 + 11
    return ids, vectors, queries


def _exact_ids(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ vectors.T
    return ids[np.argsort(-sims, axis=1)[:, :k]]


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_tuned_recall_reaches_095_on_held_out_queries(kind: str, clustered) -> None:  # type: ignore[no-untyped-def]
    ids, vectors, queries = clustered
    index = VectorIndex.build(ids, vectors, encoder="enc", spec=_spec(kind, len(ids), 32))
    assert index.kind == kind
    assert index.tuning.recall_at_10 >= 0.95 and index.tuning.queries > 0
    truth = _exact_ids(vectors, ids, queries, 10)
    found = [r.ids for r in index.search(queries, k=10)]
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)])
    assert recall >= 0.95, recall  # measured on queries never seen at build or tuning time
    assert set(np.concatenate(found).tolist()) <= set(ids.tolist())  # one id space with the catalog


def test_ivf_pq_reaches_095_by_re_ranking_its_candidates_with_exact_vectors(clustered) -> None:  # type: ignore[no-untyped-def]
    ids, vectors, queries = clustered
    index = VectorIndex.build(ids, vectors, encoder="enc", spec=_spec("ivf_pq", len(ids), 32))
    assert index.tuning.rerank > 1 and index.tuning.recall_at_10 >= 0.95
    truth = _exact_ids(vectors, ids, queries, 10)

    def recall() -> float:
        found = [r.ids for r in index.search(queries, k=10)]
        return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))

    assert recall() >= 0.95
    reranked = index.search(queries[:3], k=5)
    for query, result in zip(queries[:3], reranked, strict=True):  # exact cosines, best first
        lookup = index.vector_lookup
        assert lookup is not None
        assert np.allclose(result.similarities, lookup(result.ids) @ query, atol=1e-5)
        assert np.all(np.diff(result.similarities) <= 1e-6)
    index.vector_lookup = None  # without exact vectors the 4-byte codes alone rank far worse
    assert recall() < 0.9


@pytest.mark.parametrize("kind", (*APPROXIMATE, "ivf_pq"))
def test_rare_and_common_filters_stay_correct(kind: str, clustered) -> None:  # type: ignore[no-untyped-def]
    ids, vectors, queries = clustered
    index = VectorIndex.build(ids, vectors, encoder="enc", spec=_spec(kind, len(ids), 32))
    index.vector_lookup = lambda wanted: vectors[(wanted - 11) // 3]  # the catalog's exact vectors
    rare = ids[[5, 1234, 4321]]  # three images of a rare modality, far from most queries
    for result in index.search(queries[:10], k=10, allowed_ids=rare):
        assert sorted(result.ids.tolist()) == sorted(rare.tolist())
    exact_rare = _exact_ids(vectors[[5, 1234, 4321]], rare, queries[:10], 3)
    got = np.stack([r.ids for r in index.search(queries[:10], k=3, allowed_ids=rare)])
    assert np.array_equal(got, exact_rare)
    # an allowed id that the index does not hold is ignored, not an error
    assert index.search(queries[0], k=5, allowed_ids=np.array([2], np.int64))[0].ids.size == 0
    common = ids[::2]
    for result in index.search(queries[:10], k=10, allowed_ids=common):
        assert len(result.ids) == 10 and np.isin(result.ids, common).all()


def test_filters_larger_than_the_rare_limit_use_the_index(clustered, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import indexer.vectors.index as vi

    monkeypatch.setattr(vi, "RARE_FILTER_MAX", 10)
    ids, vectors, queries = clustered
    index = VectorIndex.build(ids, vectors, encoder="enc", spec=_spec("ivf_flat", len(ids), 32))
    allowed = ids[:40]  # 40 of 6000: few lists hold any of them; short answers fall back to exact
    for query, result in zip(queries[:5], index.search(queries[:5], k=10, allowed_ids=allowed), strict=True):
        assert np.array_equal(result.ids, _exact_ids(vectors[:40], allowed, query[None], 10)[0])


@pytest.mark.parametrize("kind", ("flat", *APPROXIMATE, "ivf_pq"))
def test_each_kind_saves_loads_and_removes(kind: str, clustered, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids, vectors, queries = clustered
    index = VectorIndex.build(ids[:3000], vectors[:3000], encoder="enc", spec=_spec(kind, 3000, 32))
    path = tmp_path / f"{kind}.faiss"
    index.save(path)
    for mmap in (False, True):
        loaded = VectorIndex.load(path, encoder="enc", dim=32, mmap=mmap)
        loaded.vector_lookup = lambda wanted: vectors[(wanted - 11) // 3]  # as open() gives the catalog's
        assert loaded.kind == kind and loaded.tuning == index.tuning and len(loaded) == 3000
        assert loaded.describe()["memory_mapped"] is mmap
        before = [r.ids.tolist() for r in index.search(queries[:5], k=10)]
        assert [r.ids.tolist() for r in loaded.search(queries[:5], k=10)] == before
        # writing to a memory-mapped index first loads it fully (faiss would abort otherwise)
        assert loaded.remove(ids[:2]) == 2 and len(loaded) == 2998
        loaded.add(ids[3000:3010], vectors[3000:3010])
        assert len(loaded) == 3008 and int(ids[3005]) in set(loaded.ids().tolist())
        assert loaded.search(vectors[3005], k=1)[0].ids[0] == ids[3005]
    meta = __import__("json").loads((tmp_path / f"{kind}.faiss.json").read_text())
    assert meta["spec"]["kind"] == kind and "recall_at_10" in meta["tuning"]


def test_open_rebuilds_in_the_saved_kind(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    catalog, vectors = _catalog_with_vectors(tmp_path, 300)
    path = tmp_path / "enc.faiss"
    hnsw = VectorIndex.build_from_catalog(catalog, encoder="enc", dim=8, spec=_spec("hnsw", 300, 8))
    assert hnsw.kind == "hnsw" and hnsw.tuning.recall_at_10 >= 0.95
    hnsw.save(path)
    path.write_bytes(path.read_bytes()[:-5])  # corrupt it: the rebuild keeps the operator's kind
    rebuilt = VectorIndex.open(path, catalog, encoder="enc", dim=8)
    assert "REBUILDING" in caplog.text and rebuilt.kind == "hnsw" and len(rebuilt) == 300
    first = catalog.image_ids_where(encoder="enc")[0]
    assert rebuilt.search(vectors[0], k=1)[0].ids[0] == first


@pytest.mark.gpu
def test_gpu_index_gives_the_cpu_results(clustered) -> None:  # type: ignore[no-untyped-def]
    from indexer.vectors.index import gpu_available

    if not gpu_available():
        pytest.skip("needs faiss with GPU support (pip install '.[gpu]') and a CUDA device")
    ids, vectors, queries = clustered
    for kind in ("flat", "ivf_flat"):
        cpu = VectorIndex.build(ids, vectors, encoder="enc", spec=_spec(kind, len(ids), 32))
        cpu._use_gpu = False
        gpu = VectorIndex.build(ids, vectors, encoder="enc", spec=_spec(kind, len(ids), 32))
        gpu._use_gpu = True
        assert gpu.describe()["gpu"]
        want = [r.ids.tolist() for r in cpu.search(queries, k=10)]
        got = [r.ids.tolist() for r in gpu.search(queries, k=10)]
        agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got, strict=True)])
        assert agree >= 0.99


def test_cli_rebuild_index_with_a_chosen_kind(tmp_path: Path, real_encoder) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from indexer.cli import app

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    vectors = _clustered(400, real_encoder.dim, seed=5)
    with catalog.session() as session:
        case = Case(case_key="k")
        session.add(case)
        for i, v in enumerate(vectors):
            session.add(
                Image(case=case, source_uri=f"file:///{i}", sha256=f"{i:064d}", format="png",
                      encoder=real_encoder.name, embedding=v.tobytes())
            )  # fmt: skip
    catalog.dispose()
    result = CliRunner().invoke(app, ["rebuild-index", "--data-dir", str(tmp_path), "--kind", "hnsw"])
    assert result.exit_code == 0, result.output
    assert "rebuilt: 400 vectors (hnsw, efSearch=" in result.output
    meta = __import__("json").loads(next((tmp_path / "index").glob("*.faiss.json")).read_text())
    assert meta["spec"]["kind"] == "hnsw" and meta["tuning"]["recall_at_10"] >= 0.95
    bad = CliRunner().invoke(app, ["rebuild-index", "--data-dir", str(tmp_path), "--kind", "annoy"])
    assert bad.exit_code == 2 and "unknown index kind" in bad.output
