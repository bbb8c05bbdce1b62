"""choose_index_kind: a pure function of vector count, dimension and memory budget."""

from __future__ import annotations

import pytest

from indexer.vectors.kinds import (
    INDEX_KINDS,
    IndexBudgetError,
    IndexSpec,
    TooFewVectorsError,
    choose_index_kind,
    ivf_lists,
    spec_for_kind,
)

GIB = 2**30


@pytest.mark.parametrize(
    ("n", "dim", "budget", "kind"),
    [
        (0, 1280, 12 * GIB, "flat"),
        (10_000, 1280, 12 * GIB, "flat"),
        (50_000, 1280, 12 * GIB, "flat"),
        (50_001, 1280, 12 * GIB, "hnsw"),
        (300_000, 1280, 12 * GIB, "hnsw"),
        (1_000_000, 1280, 12 * GIB, "ivf_flat"),
        (10_000_000, 1280, 16 * GIB, "ivf_sq8"),
        (10_000_000, 1280, 4 * GIB, "ivf_pq"),
        (40_000, 1280, 100 * 2**20, "ivf_sq8"),  # a tiny budget pushes even a small archive off flat
    ],
)
def test_chooser_table(n: int, dim: int, budget: int, kind: str) -> None:
    spec = choose_index_kind(n, dim, budget)
    assert spec.kind == kind, spec.reason
    assert spec.dim == dim and spec.reason
    assert n * spec.bytes_per_vector <= budget


def test_chooser_is_pure_and_its_parameters_are_sane() -> None:
    assert choose_index_kind(1_000_000, 1280, 12 * GIB) == choose_index_kind(1_000_000, 1280, 12 * GIB)
    ivf = choose_index_kind(1_000_000, 1280, 12 * GIB)
    assert ivf.nlist == ivf_lists(1_000_000) == 2048
    assert ivf.train_size == 40 * 2048 and ivf.factory == "IVF2048,Flat"
    pq = choose_index_kind(10_000_000, 1280, 4 * GIB)
    assert 1280 % pq.pq_m == 0 and pq.factory.endswith(f",PQ{pq.pq_m}")
    assert choose_index_kind(300_000, 768, 12 * GIB).factory == "IDMap2,HNSW32"
    assert choose_index_kind(100, 1280, 12 * GIB).factory == "IDMap2,Flat"
    assert "HNSW32" in spec_for_kind("ivf_flat", 200_000_000, 64).factory  # huge nlist: graph quantizer


def test_chooser_refuses_what_cannot_fit() -> None:
    with pytest.raises(IndexBudgetError, match="raise the memory budget"):
        choose_index_kind(1_000_000_000, 1280, GIB)
    with pytest.raises(ValueError):
        choose_index_kind(-1, 1280, GIB)


def test_spec_roundtrips_through_the_sidecar_form() -> None:
    for kind in INDEX_KINDS:
        spec = spec_for_kind(kind, 100_000, 1280)
        assert IndexSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown index kind"):
        spec_for_kind("annoy", 10, 8)


@pytest.mark.parametrize(("kind", "needed"), [("ivf_flat", 16), ("ivf_sq8", 16), ("ivf_pq", 256)])
def test_ivf_kinds_refuse_archives_too_small_to_train_them(kind: str, needed: int) -> None:
    """Asking for an IVF index over 3 vectors is the caller's mistake (a 422, not a FAISS crash)."""
    with pytest.raises(TooFewVectorsError, match=f"at least {needed} vectors.*use the flat or hnsw"):
        spec_for_kind(kind, 3, 64)
    assert spec_for_kind(kind, needed, 64).kind == kind
    assert spec_for_kind("flat", 3, 64).kind == "flat"
