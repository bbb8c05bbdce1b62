"""The FAISS index: one id space with the catalog, filtered search, atomic save, checksum, rebuild."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.catalog import Case, Catalog, Image
from indexer.errors import IndexCorruptError
from indexer.vector_index import VectorIndex


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
