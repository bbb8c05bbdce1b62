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
    # Iscen et al. (CVPR 2017) and their public code: graph k 50, query seeds kq 10, alpha 0.99,
    # gamma 3, truncation to the query's 1000 first candidates.
    "diffusion": {"k": 50, "kq": 10, "alpha": 0.99, "gamma": 3.0, "trunc": 1000},
}
_INTEGER = {"dim", "n", "k", "kq", "trunc"}
SPEC_HELP = (
    "valid: none, or steps joined by '+' from pcaw, dba, aqe, rerank, diffusion (rerank and diffusion "
    "exclude each other), each optionally with settings (pcaw:power=0.25,shrink=0.1,dim=0; dba:n=3,alpha=3; "
    "aqe:n=3,alpha=3; rerank:k=10,w=0.3; diffusion:k=50,kq=10,alpha=0.99,gamma=3,trunc=1000), "
    "e.g. 'pcaw+dba+aqe'"
)
# A re-ranked search scores at least this many candidates of the first search.
RERANK_SHORTLIST = 100
# A row added after the fit is linked into the older rows' diffusion lists among its LINK_WIDTH * k nearest.
LINK_WIDTH = 3
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
    if "rerank" in found and "diffusion" in found:
        raise PostprocessError(f"rerank and diffusion both re-rank: choose one in {text!r}; {SPEC_HELP}")
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
    if name == "diffusion" and (
        params["k"] < 1
        or params["kq"] < 1
        or params["trunc"] < 1
        or not 0 < params["alpha"] < 1
        or params["gamma"] <= 0
    ):
        raise PostprocessError(
            f"diffusion settings out of range in {text!r}: valid k >= 1, kq >= 1, trunc >= 1, "
            "0 < alpha < 1, gamma > 0 (defaults k=50,kq=10,alpha=0.99,gamma=3,trunc=1000)"
        )


@dataclass
class FittedPostprocess:
    """A SPEC fitted on the database: the whitening, the re-ranking's neighbour lists and the diffusion graph, by id.

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
    # diffusion: each stored row's k nearest other stored rows (ids, -1 past the end) and similarities
    graph_ids: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    graph_table: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty((0, 0), np.int64))
    graph_sims: npt.NDArray[np.float32] = field(default_factory=lambda: np.empty((0, 0), np.float32))

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

    @property
    def reranks(self) -> bool:
        """Whether a search re-scores a shortlist (rerank or diffusion)."""
        return self.spec.has("rerank") or self.spec.has("diffusion")

    def shortlist(self, k: int) -> int:
        """How many candidates of the first search a re-ranked search of k results scores."""
        if self.spec.has("diffusion"):
            return max(k, int(self.spec.get("diffusion", "trunc")))
        return max(k, RERANK_SHORTLIST, int(self.spec.get("rerank", "k")))

    def rescore(
        self, candidate_ids: npt.NDArray[np.int64], candidate_sims: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """New scores of one query's candidates (best first) by the SPEC's re-ranking."""
        if self.spec.has("diffusion"):
            return self.diffuse(candidate_ids, candidate_sims)
        return self.rerank(candidate_ids, candidate_sims)

    def remember_graph(
        self, ids: npt.NDArray[np.int64], table: npt.NDArray[np.int64], sims: npt.NDArray[np.float32]
    ) -> None:
        """Set the diffusion graph: rows `ids` (sorted), each with its nearest other ids and similarities."""
        order = np.argsort(ids, kind="stable")
        self.graph_ids = np.ascontiguousarray(ids[order], dtype=np.int64)
        self.graph_table = np.ascontiguousarray(table[order], dtype=np.int64)
        self.graph_sims = np.ascontiguousarray(sims[order], dtype=np.float32)

    @property
    def link_width(self) -> int:
        """How many nearest stored rows (itself included) `link_new` needs for each new row."""
        return LINK_WIDTH * int(self.spec.get("diffusion", "k")) + 1

    def link_new(
        self, ids: npt.NDArray[np.int64], found: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]
    ) -> None:
        """Put rows added after the fit into the diffusion graph (never refitted: the version stays).

        `found`: each new row's `link_width` nearest stored ids and similarities (itself among them,
        dropped). A new row gets its k nearest as its list, and enters the list of each older row among
        those whose current k-th neighbour it beats. Exact (the graph a refit would build) unless an
        older row that should list the new one is not among the new row's LINK_WIDTH * k nearest.
        """
        k = int(self.spec.get("diffusion", "k"))
        new_table = np.full((len(ids), k), -1, dtype=np.int64)
        new_sims = np.zeros((len(ids), k), dtype=np.float32)
        wide = []
        for row, (vid, (nb_ids, nb_sims)) in enumerate(zip(ids, found, strict=True)):
            keep = nb_ids != vid
            wide.append((nb_ids[keep], nb_sims[keep]))
            new_table[row, : min(k, int(keep.sum()))] = nb_ids[keep][:k]
            new_sims[row, : min(k, int(keep.sum()))] = nb_sims[keep][:k]
        keep = ~np.isin(self.graph_ids, ids)
        self.remember_graph(
            np.concatenate([self.graph_ids[keep], ids.astype(np.int64)]),
            np.concatenate([_pad(self.graph_table[keep], k), new_table]),
            np.concatenate([_pad_sims(self.graph_sims[keep], k), new_sims]),
        )
        new = set(ids.tolist())
        for vid, (nb_ids, nb_sims) in zip(ids, wide, strict=True):
            for other, sim in zip(nb_ids.tolist(), nb_sims, strict=True):
                pos = int(np.searchsorted(self.graph_ids, other))
                if other < 0 or other in new or pos >= len(self.graph_ids) or self.graph_ids[pos] != other:
                    continue  # new rows' lists are already exact; an id outside the graph has no list
                row_ids, row_sims = self.graph_table[pos], self.graph_sims[pos]
                full = bool((row_ids >= 0).all())
                if vid in row_ids or (full and sim <= row_sims[-1]):
                    continue
                at = int(np.searchsorted(-row_sims[row_ids >= 0], -sim, side="right"))
                self.graph_table[pos] = np.insert(row_ids, at, vid)[:k]
                self.graph_sims[pos] = np.insert(row_sims, at, sim)[:k]

    def diffuse(
        self, candidate_ids: npt.NDArray[np.int64], candidate_sims: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Diffusion scores of one query's candidates (best first) over the graph truncated to them."""
        m = len(candidate_ids)
        if m == 0 or len(self.graph_ids) == 0:
            return np.asarray(candidate_sims, dtype=np.float32)
        pos = np.clip(np.searchsorted(self.graph_ids, candidate_ids), 0, len(self.graph_ids) - 1)
        known = self.graph_ids[pos] == candidate_ids
        table = np.where(known[:, None], self.graph_table[pos], -1)
        sims = np.where(known[:, None], self.graph_sims[pos], 0.0)
        # neighbour ids -> candidate positions (-1: not a candidate)
        order = np.argsort(candidate_ids, kind="stable")
        sorted_ids = candidate_ids[order]
        at = np.clip(np.searchsorted(sorted_ids, table), 0, m - 1)
        local = np.where((sorted_ids[at] == table) & (table >= 0), order[at], -1)
        f = pp.diffuse(
            candidate_sims,
            local,
            sims,
            kq=int(self.spec.get("diffusion", "kq")),
            alpha=self.spec.get("diffusion", "alpha"),
            gamma=self.spec.get("diffusion", "gamma"),
        )
        return f.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """What `stats` and /health show."""
        return {"spec": str(self.spec), "version": self.version, "fitted_rows": self.fitted_rows}

    # -- saving --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The fitted state as an .npz file's bytes (numbers only, no pickle)."""
        arrays: dict[str, npt.NDArray[Any]] = {
            "neighbour_ids": self.neighbour_ids,
            "neighbour_table": self.neighbour_table,
            "graph_ids": self.graph_ids,
            "graph_table": self.graph_table,
            "graph_sims": self.graph_sims,
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
                graph_ids=data["graph_ids"].astype(np.int64)
                if "graph_ids" in data
                else np.empty(0, np.int64),
                graph_table=(
                    data["graph_table"].astype(np.int64)
                    if "graph_table" in data
                    else np.empty((0, 0), np.int64)
                ),
                graph_sims=(
                    data["graph_sims"].astype(np.float32)
                    if "graph_sims" in data
                    else np.empty((0, 0), np.float32)
                ),
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
    if spec.has("diffusion"):
        positions, sims = pp.knn_graph(stored, int(spec.get("diffusion", "k")))
        fitted.remember_graph(ids, np.where(positions >= 0, ids[np.maximum(positions, 0)], -1), sims)
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


def _pad_sims(table: npt.NDArray[np.float32], width: int) -> npt.NDArray[np.float32]:
    table = np.asarray(table, dtype=np.float32)
    if table.size == 0:
        return np.zeros((len(table), width), dtype=np.float32)
    table = table.reshape(len(table), -1)
    if table.shape[1] >= width:
        return table[:, :width]
    return np.pad(table, ((0, 0), (0, width - table.shape[1])), constant_values=0.0)
