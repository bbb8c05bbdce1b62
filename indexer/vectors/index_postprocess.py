"""The index's label-free post-processing option: a SPEC parsed, fitted on the stored vectors, versioned, applied."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from indexer.errors import IndexerError
from indexer.vectors import postprocess as pp

# Steps in the order they are applied (whatever order the SPEC names them in), with their settings
# and defaults. pcaw's defaults are the safer half-whitening of docs/EVALUATION.md; the others are the
# literature's usual values. dim 0 means min(D, N - 1).
STEP_DEFAULTS: dict[str, dict[str, float]] = {
    "pcaw": {"power": 0.25, "shrink": 0.1, "dim": 0},
    "dba": {"n": 3, "alpha": 3.0},
    "aqe": {"n": 3, "alpha": 3.0},
    "rerank": {"k": 10, "w": 0.3},
}
_INTEGER = {"dim", "n", "k"}
SPEC_HELP = (
    "valid: none, or steps joined by '+' from pcaw, dba, aqe, rerank, each optionally with settings "
    "(pcaw:power=0.25,shrink=0.1,dim=0; dba:n=3,alpha=3; aqe:n=3,alpha=3; rerank:k=10,w=0.3), "
    "e.g. 'pcaw+dba+aqe'"
)
# A re-ranked search scores at least this many candidates of the first search.
RERANK_SHORTLIST = 100
Neighbours = Callable[[npt.NDArray[np.float32], int], tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]


class PostprocessError(IndexerError, ValueError):
    """A post-processing SPEC that cannot be read or fitted; the message names the valid ones."""


@dataclass(frozen=True)
class PostprocessSpec:
    """Parsed SPEC: the steps in application order, each with every setting (defaults filled in)."""

    steps: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()

    def has(self, step: str) -> bool:
        """Whether the step is part of the SPEC."""
        return any(name == step for name, _ in self.steps)

    def get(self, step: str, key: str) -> float:
        """One setting of one step."""
        return dict(dict(self.steps)[step])[key]

    @property
    def none(self) -> bool:
        """True for the identity (plain vectors)."""
        return not self.steps

    def __str__(self) -> str:
        if not self.steps:
            return "none"
        parts = []
        for name, params in self.steps:
            settings = ",".join(f"{k}={int(v) if k in _INTEGER else v:g}" for k, v in params)
            parts.append(f"{name}:{settings}")
        return "+".join(parts)


def parse_postprocess(text: str | None) -> PostprocessSpec:
    """'none' (or empty), or steps joined by '+', e.g. 'pcaw:power=0.25+dba:n=3+aqe'; clear errors otherwise."""
    raw = (text or "").strip().lower()
    if raw in ("", "none"):
        return PostprocessSpec()
    found: dict[str, dict[str, float]] = {}
    for part in raw.split("+"):
        name, _, settings = part.strip().partition(":")
        name = name.strip()
        if name not in STEP_DEFAULTS:
            raise PostprocessError(f"unknown post-processing step {name!r} in {text!r}; {SPEC_HELP}")
        if name in found:
            raise PostprocessError(f"post-processing step {name!r} is named twice in {text!r}; {SPEC_HELP}")
        params = dict(STEP_DEFAULTS[name])
        for item in filter(None, (s.strip() for s in settings.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if key not in params or not eq:
                valid = ", ".join(f"{k}=<number>" for k in STEP_DEFAULTS[name])
                raise PostprocessError(f"{name} has no setting {item!r} in {text!r}; valid: {valid}")
            try:
                number = float(value)
            except ValueError:
                raise PostprocessError(f"{name}:{key} needs a number, got {value!r} in {text!r}") from None
            params[key] = number
        _check(name, params, raw)
        found[name] = params
    ordered = tuple((n, tuple(sorted(found[n].items()))) for n in STEP_DEFAULTS if n in found)
    return PostprocessSpec(ordered)


def _check(name: str, params: dict[str, float], text: str) -> None:
    for key in _INTEGER & params.keys():
        if params[key] != int(params[key]):
            raise PostprocessError(f"{name}:{key} must be a whole number in {text!r}")
    bad = (
        (name == "pcaw" and (params["power"] < 0 or params["shrink"] < 0 or params["dim"] < 0))
        or (name in ("dba", "aqe") and (params["n"] < 1 or params["alpha"] < 0))
        or (name == "rerank" and (params["k"] < 1 or not 0 <= params["w"] <= 1))
    )
    if bad:
        raise PostprocessError(
            f"{name} settings out of range in {text!r}: power, shrink, dim, alpha >= 0; n, k >= 1; 0 <= w <= 1"
        )


@dataclass
class FittedPostprocess:
    """A SPEC fitted on the database: the whitening, and the re-ranking's neighbour lists by id.

    `version` identifies the fit: a hash of the SPEC and of the (id, raw vector) rows it was fitted
    on, so the same catalog gives the same version and any new or changed row a new one. Rows added
    after the fit are transformed with this state (never refitted); `rebuild-index` refits.
    """

    spec: PostprocessSpec
    version: str
    input_dim: int
    fitted_rows: int
    whitening: pp.Whitening | None = None
    neighbour_ids: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    neighbour_table: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty((0, 0), np.int64))

    @property
    def output_dim(self) -> int:
        """The dimension of the vectors the index stores and searches."""
        return self.whitening.dim if self.whitening is not None else self.input_dim

    @property
    def pointwise(self) -> bool:
        """True when a stored vector is a function of its own raw vector alone (no DBA)."""
        return not self.spec.has("dba")

    def project(self, vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Raw unit vectors -> the stored space before any neighbour step (whitened when pcaw)."""
        if self.whitening is None:
            return pp.l2_normalise(vectors)
        return self.whitening.transform(vectors)

    def augment_new(
        self, projected: npt.NDArray[np.float32], neighbours: Neighbours
    ) -> npt.NDArray[np.float32]:
        """DBA of rows added after the fit, over their nearest stored vectors (the fitted database)."""
        if not self.spec.has("dba") or len(projected) == 0:
            return projected
        n = int(self.spec.get("dba", "n"))
        if n <= 1:
            return projected
        ids, vectors = neighbours(projected, n - 1)
        return _expand(projected, ids, vectors, n, self.spec.get("dba", "alpha"))

    def expand_queries(
        self, queries: npt.NDArray[np.float32], neighbours: Neighbours
    ) -> npt.NDArray[np.float32]:
        """alpha-QE of projected queries over their nearest stored vectors (as the search would show)."""
        if not self.spec.has("aqe"):
            return queries
        n = int(self.spec.get("aqe", "n"))
        if n <= 1:
            return queries
        ids, vectors = neighbours(queries, n - 1)
        return _expand(queries, ids, vectors, n, self.spec.get("aqe", "alpha"))

    def remember_neighbours(self, ids: npt.NDArray[np.int64], table: npt.NDArray[np.int64]) -> None:
        """Record stored rows' own nearest stored ids (itself first) for the re-ranking; replaces old rows."""
        k = int(self.spec.get("rerank", "k"))
        table = _pad(table, k)
        keep = ~np.isin(self.neighbour_ids, ids)
        all_ids = np.concatenate([self.neighbour_ids[keep], ids.astype(np.int64)])
        all_table = np.concatenate([_pad(self.neighbour_table[keep], k), table])
        order = np.argsort(all_ids, kind="stable")
        self.neighbour_ids, self.neighbour_table = all_ids[order], all_table[order]

    def rerank(
        self, candidate_ids: npt.NDArray[np.int64], candidate_sims: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """New scores of one query's candidates (best first): (1 - w) sim + w Jaccard of top-k sets."""
        k = int(self.spec.get("rerank", "k"))
        weight = self.spec.get("rerank", "w")
        k = max(1, min(k, len(candidate_ids)))
        query_set = candidate_ids[:k]
        pos = np.clip(
            np.searchsorted(self.neighbour_ids, candidate_ids), 0, max(len(self.neighbour_ids) - 1, 0)
        )
        known = (
            self.neighbour_ids[pos] == candidate_ids
            if len(self.neighbour_ids)
            else np.zeros(len(candidate_ids), bool)
        )
        table = self.neighbour_table[pos][:, :k] if len(self.neighbour_ids) else np.full((len(pos), k), -1)
        overlap = np.where(known, (np.isin(table, query_set) & (table >= 0)).sum(axis=1), 0).astype(
            np.float32
        )
        jaccard = overlap / (2 * k - overlap)
        return ((1 - weight) * candidate_sims + weight * jaccard).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """What `stats` and /health show."""
        return {"spec": str(self.spec), "version": self.version, "fitted_rows": self.fitted_rows}

    # -- saving --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The fitted state as an .npz file's bytes (numbers only, no pickle)."""
        arrays: dict[str, npt.NDArray[Any]] = {
            "neighbour_ids": self.neighbour_ids,
            "neighbour_table": self.neighbour_table,
        }
        if self.whitening is not None:
            arrays["mean"] = self.whitening.mean
            arrays["projection"] = self.whitening.projection
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    def meta(self, blob: bytes) -> dict[str, Any]:
        """The sidecar entry: SPEC, version, input dimension, fitted rows and the state file's checksum."""
        return {
            "spec": str(self.spec),
            "version": self.version,
            "input_dim": self.input_dim,
            "fitted_rows": self.fitted_rows,
            "sha256": hashlib.sha256(blob).hexdigest(),
        }

    @classmethod
    def from_saved(cls, meta: dict[str, Any], blob: bytes) -> FittedPostprocess:
        """Inverse of to_bytes/meta; ValueError when the state does not match its sidecar entry."""
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            raise ValueError("the post-processing state fails its checksum")
        spec = parse_postprocess(str(meta["spec"]))
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            whitening = None
            if spec.has("pcaw"):
                whitening = pp.Whitening(
                    mean=data["mean"],
                    projection=data["projection"],
                    power=spec.get("pcaw", "power"),
                    shrinkage=spec.get("pcaw", "shrink"),
                )
            return cls(
                spec=spec,
                version=str(meta["version"]),
                input_dim=int(meta["input_dim"]),
                fitted_rows=int(meta["fitted_rows"]),
                whitening=whitening,
                neighbour_ids=data["neighbour_ids"].astype(np.int64),
                neighbour_table=data["neighbour_table"].astype(np.int64),
            )


def fit_version(spec: PostprocessSpec, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> str:
    """A hash of the SPEC and the rows (sorted by id): the same database gives the same version."""
    digest = hashlib.sha256(str(spec).encode())
    digest.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def fit_postprocess(
    spec: PostprocessSpec, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]
) -> tuple[FittedPostprocess, npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Fit on the database rows only; returns the state and the rows sorted by id in the stored space."""
    if spec.none:
        raise PostprocessError("nothing to fit for post-processing 'none'")
    order = np.argsort(ids, kind="stable")
    ids = np.ascontiguousarray(ids[order], dtype=np.int64)
    raw = np.ascontiguousarray(vectors[order], dtype=np.float32)
    n, dim = raw.shape
    whitening = None
    if spec.has("pcaw"):
        if n < 2:
            raise PostprocessError(f"pcaw needs at least 2 stored vectors to fit, the archive has {n}")
        out_dim = int(spec.get("pcaw", "dim")) or None
        if out_dim is not None and out_dim > min(dim, n - 1):
            raise PostprocessError(
                f"pcaw dim={out_dim} is more than the {min(dim, n - 1)} axes {n} stored vectors of "
                f"dimension {dim} allow; lower dim or use dim=0"
            )
        whitening = pp.fit_whitening(
            raw, dim=out_dim, power=spec.get("pcaw", "power"), shrinkage=spec.get("pcaw", "shrink")
        )
    fitted = FittedPostprocess(spec, fit_version(spec, ids, raw), dim, n, whitening)
    stored = fitted.project(raw)
    if spec.has("dba") and spec.get("dba", "n") > 1 and n > 1:
        positions = knn(stored, stored, int(spec.get("dba", "n")))[:, 1:]
        stored = pp.alpha_query_expansion(
            stored, stored, positions, n=int(spec.get("dba", "n")), alpha=spec.get("dba", "alpha")
        )
    if spec.has("rerank"):
        table = knn(stored, stored, int(spec.get("rerank", "k")))
        fitted.remember_neighbours(ids, np.where(table >= 0, ids[np.maximum(table, 0)], -1))
    return fitted, ids, stored


def knn(queries: npt.NDArray[np.float32], database: npt.NDArray[np.float32], n: int) -> npt.NDArray[np.int64]:
    """The n nearest database positions of each query by inner product (exact, faiss), -1 past the end."""
    if len(database) == 0:
        return np.full((len(queries), n), -1, np.int64)
    found = faiss.knn(
        np.ascontiguousarray(queries, dtype=np.float32),
        np.ascontiguousarray(database, dtype=np.float32),
        min(n, len(database)),
        metric=faiss.METRIC_INNER_PRODUCT,
    )[1]
    return _pad(found.astype(np.int64), n)


def _expand(
    rows: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    n: int,
    alpha: float,
) -> npt.NDArray[np.float32]:
    """pp's weighted expansion over each row's own neighbour vectors ((Q, m, d); ids -1 where none)."""
    q, m = ids.shape
    flat = vectors.reshape(q * m, -1)
    positions = np.where(ids >= 0, np.arange(q * m).reshape(q, m), -1)
    return pp.alpha_query_expansion(rows, flat, positions, n=n, alpha=alpha)


def _pad(table: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.int64]:
    table = np.asarray(table, dtype=np.int64)
    if table.size == 0:
        return np.full((len(table), width), -1, dtype=np.int64)
    table = table.reshape(len(table), -1)
    if table.shape[1] >= width:
        return table[:, :width]
    return np.pad(table, ((0, 0), (0, width - table.shape[1])), constant_values=-1)
