"""Which FAISS index kind to build: a pure, documented function of vector count, dimension and memory budget.

The choice, autofaiss-style (n vectors of dimension d, budget B bytes, fixed costs ignored):

| condition (first that holds)                         | kind       | why                                            |
|------------------------------------------------------|------------|------------------------------------------------|
| n <= 50,000 and n * (4d + 16) <= B                   | `flat`     | exact; a scan of 50k x 1280-d is a few ms       |
| n <= 300,000 and n * (4d + 16 + 8M) <= B             | `hnsw`     | graph search, sub-ms; build cost grows with n  |
| n * (4d + 24) <= B                                   | `ivf_flat` | cheap to build at millions; exact distances    |
| n * (d + 24) <= B                                    | `ivf_sq8`  | 4x smaller, near-exact 8-bit scalar codes      |
| n * (m + 24) <= B for the largest m in 64/48/32/16/8 | `ivf_pq`   | product codes of m bytes; recall is measured   |
| otherwise                                            | error      | raise the budget or shard                      |

IVF kinds use nlist = the power of two nearest 2 * sqrt(n) (16 .. 65,536; an HNSW coarse quantizer from
8,192 lists) and train on 40 * nlist sampled vectors. Every kind keeps the catalog ids as FAISS ids.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from indexer.errors import IndexerError

IndexKind = Literal["flat", "hnsw", "ivf_flat", "ivf_sq8", "ivf_pq"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)

FLAT_MAX_VECTORS = 50_000
HNSW_MAX_VECTORS = 300_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_QUANTIZER_MIN_LISTS = 8192
TRAIN_POINTS_PER_LIST = 40
PQ_M_CANDIDATES = (64, 48, 32, 16, 8)
PQ_CODEBOOK_SIZE = 256  # 8-bit codes: each sub-quantizer learns 256 centroids
_ID_OVERHEAD = 16  # id map and reverse map, bytes per vector
_IVF_OVERHEAD = 24  # list id, direct-map hashtable entry


class IndexBudgetError(IndexerError, ValueError):
    """No index kind fits the memory budget; raise the budget (bytes) or shard the archive."""


class TooFewVectorsError(IndexerError, ValueError):
    """An IVF kind was asked for with fewer vectors than its training needs; use flat or hnsw."""


@dataclass(frozen=True)
class IndexSpec:
    """A chosen index kind with its build parameters and its estimated memory per vector."""

    kind: IndexKind
    dim: int
    nlist: int = 0
    pq_m: int = 0
    hnsw_m: int = 0
    ef_construction: int = 0
    train_size: int = 0
    bytes_per_vector: float = 0.0
    reason: str = ""

    @property
    def factory(self) -> str:
        """The `faiss.index_factory` string; `IDMap2` wraps kinds that lack native ids."""
        if self.kind == "flat":
            return "IDMap2,Flat"
        if self.kind == "hnsw":
            return f"IDMap2,HNSW{self.hnsw_m}"
        coarse = f"IVF{self.nlist}" + ("_HNSW32" if self.nlist >= HNSW_QUANTIZER_MIN_LISTS else "")
        codes = {"ivf_flat": "Flat", "ivf_sq8": "SQ8", "ivf_pq": f"PQ{self.pq_m}"}[self.kind]
        return f"{coarse},{codes}"

    @property
    def needs_training(self) -> bool:
        """IVF kinds learn centroids (and codebooks) from a sample before vectors are added."""
        return self.kind.startswith("ivf")

    @property
    def exact(self) -> bool:
        """True when search is exhaustive (no tuning needed, recall 1.0 by construction)."""
        return self.kind == "flat"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in the index sidecar."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexSpec:
        """Inverse of to_dict; unknown keys are ignored so older sidecars still load."""
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        if known.get("kind") not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {known.get('kind')!r}; expected one of {INDEX_KINDS}")
        return cls(**known)


def ivf_lists(n_vectors: int) -> int:
    """The power of two nearest 2 * sqrt(n), between 16 and 65,536."""
    target = 2.0 * math.sqrt(max(n_vectors, 1))
    return int(min(65_536, max(16, 2 ** round(math.log2(target)))))


def spec_for_kind(kind: str, n_vectors: int, dim: int, reason: str = "asked for") -> IndexSpec:
    """The spec of one named kind with the default parameters for n vectors of this dimension."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if kind == "flat":
        return IndexSpec("flat", dim, bytes_per_vector=4 * dim + _ID_OVERHEAD, reason=reason)
    if kind == "hnsw":
        return IndexSpec(
            "hnsw",
            dim,
            hnsw_m=HNSW_M,
            ef_construction=HNSW_EF_CONSTRUCTION,
            bytes_per_vector=4 * dim + _ID_OVERHEAD + 8 * HNSW_M,
            reason=reason,
        )
    nlist = ivf_lists(n_vectors)
    # k-means needs at least one training vector per list (and PQ 256 per 8-bit codebook)
    needed = max(nlist, PQ_CODEBOOK_SIZE) if kind == "ivf_pq" else nlist
    if 0 < n_vectors < needed:
        raise TooFewVectorsError(
            f"{kind} needs at least {needed} vectors to train, the archive has {n_vectors}; "
            "use the flat or hnsw kind (or auto)"
        )
    train = min(n_vectors, TRAIN_POINTS_PER_LIST * nlist)
    if kind == "ivf_flat":
        per = 4 * dim + _IVF_OVERHEAD
        return IndexSpec("ivf_flat", dim, nlist=nlist, train_size=train, bytes_per_vector=per, reason=reason)
    if kind == "ivf_sq8":
        per = dim + _IVF_OVERHEAD
        return IndexSpec("ivf_sq8", dim, nlist=nlist, train_size=train, bytes_per_vector=per, reason=reason)
    m = next((c for c in PQ_M_CANDIDATES if dim % c == 0), 0)
    if m == 0:
        raise ValueError(f"ivf_pq needs a dimension divisible by one of {PQ_M_CANDIDATES}; got {dim}")
    train = min(n_vectors, max(train, 256 * TRAIN_POINTS_PER_LIST))
    return IndexSpec(
        "ivf_pq",
        dim,
        nlist=nlist,
        pq_m=m,
        train_size=train,
        bytes_per_vector=m + _IVF_OVERHEAD,
        reason=reason,
    )


def choose_index_kind(n_vectors: int, dim: int, memory_budget_bytes: int) -> IndexSpec:
    """The index kind for n vectors of this dimension within the budget (see the module table).

    Pure: the same inputs always give the same spec; nothing is measured or read from the machine.
    """
    if n_vectors < 0 or dim < 1 or memory_budget_bytes < 1:
        raise ValueError(f"need n >= 0, dim >= 1, budget >= 1; got {n_vectors}, {dim}, {memory_budget_bytes}")
    budget = memory_budget_bytes
    gib = budget / 2**30

    def fits(per_vector: float) -> bool:
        return n_vectors * per_vector <= budget

    if n_vectors <= FLAT_MAX_VECTORS and fits(4 * dim + _ID_OVERHEAD):
        return spec_for_kind("flat", n_vectors, dim, f"{n_vectors} <= {FLAT_MAX_VECTORS} vectors: exact")
    if n_vectors <= HNSW_MAX_VECTORS and fits(4 * dim + _ID_OVERHEAD + 8 * HNSW_M):
        return spec_for_kind(
            "hnsw", n_vectors, dim, f"{n_vectors} <= {HNSW_MAX_VECTORS} vectors, fits {gib:.1f} GiB"
        )
    if fits(4 * dim + _IVF_OVERHEAD):
        return spec_for_kind("ivf_flat", n_vectors, dim, f"full vectors fit {gib:.1f} GiB")
    if fits(dim + _IVF_OVERHEAD):
        return spec_for_kind("ivf_sq8", n_vectors, dim, f"8-bit codes fit {gib:.1f} GiB, float32 does not")
    for m in PQ_M_CANDIDATES:
        if dim % m == 0 and fits(m + _IVF_OVERHEAD):
            spec = spec_for_kind("ivf_pq", n_vectors, dim, f"only {m}-byte PQ codes fit {gib:.1f} GiB")
            return IndexSpec(**{**spec.to_dict(), "pq_m": m, "bytes_per_vector": m + _IVF_OVERHEAD})
    raise IndexBudgetError(
        f"{n_vectors} vectors of dimension {dim} do not fit {budget} bytes even as 8-byte PQ codes; "
        "raise the memory budget or shard the archive"
    )


def default_memory_budget() -> int:
    """Half of the machine's physical memory (the rest is for the catalog, the encoder and the OS)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return int(total // 2)
