"""Label-free post-processing of unit vectors: PCA-whitening, alpha-QE, DBA, shared-neighbour re-ranking.

Pure numpy over (N, D) L2-normalised float32 vectors; everything is fitted on the database only and
applied to queries afterwards. Inner product on unit vectors is the similarity throughout, as in the
product's flat index. Measured against the plain vectors in docs/EVALUATION.md ("Label-free
post-processing"); none of it is the product default yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
Positions = npt.NDArray[np.int64]


def l2_normalise(vectors: npt.NDArray[np.floating]) -> Vectors:
    """Rows scaled to unit length (an all-zero row stays zero)."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return (array / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Whitening:
    """A PCA-whitening fitted on database vectors: x -> ((x - mean) @ projection), re-normalised.

    `projection` is (D, d): the top-d principal axes, each scaled by (eigenvalue + shrinkage)^-power.
    """

    mean: npt.NDArray[np.float64]
    projection: npt.NDArray[np.float64]
    power: float
    shrinkage: float

    @property
    def dim(self) -> int:
        """The output dimension d."""
        return int(self.projection.shape[1])

    def transform(self, vectors: npt.NDArray[np.floating], *, normalise: bool = True) -> Vectors:
        """(N, D) -> (N, d) whitened vectors, unit length unless `normalise` is False."""
        out = (np.asarray(vectors, dtype=np.float64) - self.mean) @ self.projection
        return l2_normalise(out) if normalise else out.astype(np.float32)


def fit_whitening(
    database: npt.NDArray[np.floating],
    *,
    dim: int | None = None,
    power: float = 0.5,
    shrinkage: float = 0.0,
) -> Whitening:
    """PCA-whitening learned on the database vectors only.

    Parameters
    ----------
    database : (N, D) vectors the whitening is learned on (never the queries).
    dim : output dimension; default min(D, N - 1), the number of non-degenerate axes.
    power : exponent on the eigenvalues; 0.5 whitens fully, 0 only rotates/projects, values in
        between whiten partially (Jegou & Chum's "power" whitening).
    shrinkage : added to every eigenvalue before the power, as a fraction of the mean eigenvalue,
        so that tiny axes of a small database are not blown up.

    Returns
    -------
    Whitening : with `power=0.5, shrinkage=0` the transformed (un-normalised) database has
        covariance ~ identity.
    """
    data = np.asarray(database, dtype=np.float64)
    if data.ndim != 2 or len(data) < 2:
        raise ValueError("whitening needs a 2-D array of at least two database vectors")
    if power < 0 or shrinkage < 0:
        raise ValueError("whitening power and shrinkage must be >= 0")
    n, d_in = data.shape
    limit = min(d_in, n - 1)
    out_dim = limit if dim is None else dim
    if not 1 <= out_dim <= limit:
        raise ValueError(f"whitening dim must be in [1, {limit}] for {n} database vectors of dim {d_in}")
    mean = data.mean(axis=0)
    centred = data - mean
    # The SVD of the centred data gives the covariance's eigenvectors without forming D x D when N < D.
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    eigenvalues = singular[:out_dim] ** 2 / (n - 1)
    ridge = shrinkage * float(eigenvalues.mean())
    scale = (eigenvalues + ridge) ** -power
    projection = axes[:out_dim].T * scale
    return Whitening(mean=mean, projection=projection, power=power, shrinkage=shrinkage)


def top_neighbours(
    queries: npt.NDArray[np.floating], database: npt.NDArray[np.floating], n: int
) -> tuple[Positions, Vectors]:
    """The n most similar database rows of each query by inner product, best first (positions, sims)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    sims = np.asarray(queries, dtype=np.float32) @ np.asarray(database, dtype=np.float32).T
    n = min(n, sims.shape[1])
    part = np.argpartition(-sims, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    positions = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return positions, np.take_along_axis(sims, positions, axis=1).astype(np.float32)


def _weighted_expansion(
    vectors: Vectors,
    database: Vectors,
    positions: Positions,
    n: int,
    alpha: float,
    include_self: bool,
) -> Vectors:
    """Each row replaced by sum_i max(s_i, 0)^alpha x_i over itself (weight 1) and its neighbours."""
    if n < 1:
        raise ValueError("n must be at least 1 (n = 1 keeps every vector as it is)")
    if alpha < 0:
        raise ValueError("alpha must be >= 0")
    take = positions[:, : max(n - 1, 0)] if include_self else positions[:, :n]
    valid = take >= 0
    neighbours = database[np.where(valid, take, 0)]
    sims = np.einsum("qd,qkd->qk", vectors, neighbours)
    weights = np.where(valid, np.maximum(sims, 0.0) ** alpha, 0.0)
    expanded = np.einsum("qk,qkd->qd", weights, neighbours)
    if include_self:
        expanded = expanded + vectors
    return l2_normalise(expanded)


def alpha_query_expansion(
    queries: npt.NDArray[np.floating],
    database: npt.NDArray[np.floating],
    positions: Positions,
    *,
    n: int = 3,
    alpha: float = 3.0,
) -> Vectors:
    """alpha-QE (Radenovic et al.): q' = norm(q + sum_{i < n-1} max(s_i, 0)^alpha x_i).

    `positions` holds each query's database neighbours best first (-1 where fewer were found), as
    the caller's search returned them, so a caller that excludes some neighbours (a query's own
    patient) expands over the same list it shows. `n` counts the query itself: n = 1 is the
    identity; alpha = 0 is plain average query expansion.
    """
    q = l2_normalise(queries)
    db = np.asarray(database, dtype=np.float32)
    return _weighted_expansion(q, db, np.asarray(positions, np.int64), n, alpha, include_self=True)


def database_augmentation(database: npt.NDArray[np.floating], *, n: int = 3, alpha: float = 3.0) -> Vectors:
    """DBA: every database vector replaced by the alpha-weighted mean of its n nearest database
    vectors (itself first, weight 1), re-normalised. Uses the database only; n = 1 is the identity.
    """
    db = l2_normalise(database)
    positions, _ = top_neighbours(db, db, n)
    # A vector's first neighbour is itself (or an exact duplicate, which is the same thing).
    return _weighted_expansion(db, db, positions[:, 1:], n, alpha, include_self=True)


def shared_neighbour_rerank(
    query_sims: npt.NDArray[np.floating],
    database_neighbours: Positions,
    *,
    k: int = 10,
    weight: float = 0.5,
) -> npt.NDArray[np.float32]:
    """A light, k-reciprocal-style re-ranking: boost database items whose own k nearest database
    vectors overlap the query's k nearest (not the full k-reciprocal encoding of Zhong et al.).

    `query_sims` (Q, N): similarities of each query to every database vector; `database_neighbours`
    (N, >= k): each database vector's nearest database positions (itself first). The new score is
    (1 - weight) * sim + weight * Jaccard(top-k of the query, top-k of the item) over database
    positions, label-free and fitted on the database only.
    """
    sims = np.asarray(query_sims, dtype=np.float32)
    if not 0 <= weight <= 1:
        raise ValueError("weight must be in [0, 1]")
    n_db = sims.shape[1]
    k = min(k, n_db)
    db_sets = np.zeros((n_db, n_db), dtype=np.float32)
    rows = np.repeat(np.arange(n_db), k)
    db_sets[rows, np.asarray(database_neighbours)[:, :k].reshape(-1)] = 1.0
    query_top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    query_sets = np.zeros_like(sims)
    np.put_along_axis(query_sets, query_top, 1.0, axis=1)
    overlap = query_sets @ db_sets.T
    jaccard = overlap / (2 * k - overlap)
    return ((1 - weight) * sims + weight * jaccard).astype(np.float32)


# -- diffusion (Iscen et al., CVPR 2017) --------------------------------------------------------------

# Conjugate-gradient iterations and relative tolerance of the diffusion solve (Iscen et al.'s code: 20, 1e-6).
CG_ITERATIONS = 20
CG_TOLERANCE = 1e-6


def knn_graph(database: npt.NDArray[np.floating], k: int) -> tuple[Positions, Vectors]:
    """Each database vector's k nearest *other* database vectors (positions, sims), best first.

    Itself is left out (an exact duplicate is kept as the neighbour it is); -1 / 0 past the end
    when the database has at most k vectors.
    """
    db = np.asarray(database, dtype=np.float32)
    n = len(db)
    if k < 1:
        raise ValueError("k must be at least 1")
    width = min(k + 1, n)
    blocks = [top_neighbours(db[at : at + 512], db, width) for at in range(0, n, 512)]  # bounded memory
    positions = np.concatenate([b[0] for b in blocks])
    sims = np.concatenate([b[1] for b in blocks])
    is_self = positions == np.arange(n)[:, None]
    drop = is_self.copy()
    drop[~is_self.any(axis=1), -1] = True  # self not among them (many duplicates): drop the last
    keep = ~drop
    positions = positions[keep].reshape(n, width - 1)
    sims = sims[keep].reshape(n, width - 1)
    if width - 1 < k:
        positions = np.pad(positions, ((0, 0), (0, k - width + 1)), constant_values=-1)
        sims = np.pad(sims, ((0, 0), (0, k - width + 1)), constant_values=0.0)
    return positions.astype(np.int64), sims.astype(np.float32)


def mutual_affinity(
    neighbours: Positions, sims: npt.NDArray[np.floating], *, gamma: float = 3.0
) -> npt.NDArray[np.float64]:
    """The (m, m) affinity of m nodes: a_ij = max(s_ij, 0)^gamma where i and j are in each other's lists.

    `neighbours` (m, k) holds each node's neighbours as node positions (-1: not a node, skipped),
    `sims` their similarities. Mutual neighbours only (Iscen et al.), so the matrix is symmetric.
    """
    m = len(neighbours)
    table = np.asarray(neighbours, dtype=np.int64)
    affinity = np.zeros((m, m), dtype=np.float64)
    valid = table >= 0
    rows = np.broadcast_to(np.arange(m)[:, None], table.shape)[valid]
    cols = table[valid]
    affinity[rows, cols] = np.maximum(np.asarray(sims, dtype=np.float64)[valid], 0.0) ** gamma
    np.fill_diagonal(affinity, 0.0)
    return np.minimum(affinity, affinity.T)


def conjugate_gradient(
    matrix: npt.NDArray[np.float64],
    rhs: npt.NDArray[np.float64],
    *,
    iterations: int = CG_ITERATIONS,
    tolerance: float = CG_TOLERANCE,
) -> npt.NDArray[np.float64]:
    """x with matrix @ x ~ rhs for a symmetric positive definite matrix, from x = 0, at most `iterations` steps."""
    x = np.zeros_like(rhs)
    residual = rhs.copy()
    direction = residual.copy()
    rr = float(residual @ residual)
    stop = (tolerance * float(np.linalg.norm(rhs))) ** 2
    for _ in range(iterations):
        if rr <= stop:
            break
        image = matrix @ direction
        step = rr / float(direction @ image)
        x += step * direction
        residual -= step * image
        rr_next = float(residual @ residual)
        direction = residual + (rr_next / rr) * direction
        rr = rr_next
    return x


def diffuse(
    seed_sims: npt.NDArray[np.floating],
    neighbours: Positions,
    neighbour_sims: npt.NDArray[np.floating],
    *,
    kq: int = 10,
    alpha: float = 0.99,
    gamma: float = 3.0,
) -> npt.NDArray[np.float64]:
    """Diffusion scores f of m candidate nodes: (I - alpha S) f = y solved by conjugate gradient.

    `seed_sims` (m,): the query's similarity to each candidate, candidates best first; y_i =
    max(s_i, 0)^gamma on the first `kq`, 0 elsewhere. `neighbours` / `neighbour_sims` (m, k): each
    candidate's database neighbours as candidate positions (-1 where the neighbour is not a
    candidate) and their similarities. S = D^-1/2 A D^-1/2 with A the mutual-kNN affinity among the
    candidates (the truncated graph, normalised by its own degrees); a node with no edge keeps f = y.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    sims = np.asarray(seed_sims, dtype=np.float64)
    m = len(sims)
    seed = np.zeros(m, dtype=np.float64)
    top = min(kq, m)
    seed[:top] = np.maximum(sims[:top], 0.0) ** gamma
    affinity = mutual_affinity(neighbours, neighbour_sims, gamma=gamma)
    degrees = affinity.sum(axis=1)
    scale = np.where(degrees > 0, 1.0 / np.sqrt(np.maximum(degrees, 1e-300)), 0.0)
    system = np.eye(m) - alpha * (scale[:, None] * affinity * scale[None, :])
    return conjugate_gradient(system, seed)


def diffusion_rerank(
    query_sims: npt.NDArray[np.floating],
    database_neighbours: Positions,
    database_neighbour_sims: npt.NDArray[np.floating],
    *,
    depth: int,
    kq: int = 10,
    alpha: float = 0.99,
    gamma: float = 3.0,
    trunc: int = 1000,
    allowed: npt.NDArray[np.bool_] | None = None,
) -> tuple[Positions, Vectors]:
    """Diffusion re-ranking of every query over the database's kNN graph (`knn_graph`), truncated.

    `query_sims` (Q, N); `allowed` (Q, N) False where a query may not retrieve an item. Each query's
    `trunc` most similar allowed items are the candidates, scored by `diffuse` and ranked by that
    score (stable: ties, e.g. f = 0 for nodes the solve did not reach, keep the similarity order).
    Returns the first `depth` database positions and scores of each query (-1 / nan past the end).
    """
    sims = np.asarray(query_sims, dtype=np.float32)
    n_q, n_db = sims.shape
    table = np.asarray(database_neighbours, dtype=np.int64)
    table_sims = np.asarray(database_neighbour_sims, dtype=np.float32)
    positions = np.full((n_q, depth), -1, dtype=np.int64)
    scores = np.full((n_q, depth), np.nan, dtype=np.float32)
    local = np.full(n_db + 1, -1, dtype=np.int64)  # database position -> candidate position (last: -1)
    for row in range(n_q):
        masked = np.where(allowed[row], sims[row], -np.inf) if allowed is not None else sims[row]
        order = np.argsort(-masked, kind="stable")
        candidates = order[np.isfinite(masked[order])][:trunc]
        local[candidates] = np.arange(len(candidates))
        neighbours = local[np.where(table[candidates] >= 0, table[candidates], n_db)]
        f = diffuse(
            sims[row, candidates], neighbours, table_sims[candidates], kq=kq, alpha=alpha, gamma=gamma
        )
        local[candidates] = -1
        ranked = np.argsort(-f, kind="stable")[:depth]
        positions[row, : len(ranked)] = candidates[ranked]
        scores[row, : len(ranked)] = f[ranked]
    return positions, scores
