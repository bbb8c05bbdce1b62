"""Label-free post-processing of the product's vectors, measured with `medcbir eval`'s protocol.

For each dataset: the same prepared dataset, split and exclusions (same patient / duplicate) as
`medcbir eval`, vectors from its `--cache-dir` (embedded once if absent), then retrieval with plain
vectors and with each post-processing of indexer.vectors.postprocess (fitted on the database only).
Scores are indexer.evaluation.protocol.score_retrieval's. Settings are fixed a priori (literature
defaults) and, where the dataset has val queries, a small grid is scored on val only; its pick is then
reported on test. A paired bootstrap (by query; by patient where known) gives the 95 % interval of
each row's mAP@10 difference to the baseline.

    python scripts/eval_label_free.py --datasets ../shared/datasets --cache-dir artifacts/fb/cache \
        --json-dir benchmarks pneu covid retina brain

`--product SPEC ...` scores each SPEC instead through the product's own path, `medcbir eval
--postprocess SPEC` (indexer.evaluation.runner with the index post-processing of
indexer/vectors/index_postprocess.py fitted on the database only), to check that the wired option
gives the numbers measured here (JSON: label_free_product_<name>.json).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.evaluation import metrics
from indexer.evaluation.datasets import LabeledDataset, ManifestSpec
from indexer.evaluation.protocol import (
    Split,
    banned_neighbours,
    embed_dataset,
    make_split,
    retrieve,
    score_retrieval,
)
from indexer.evaluation.runner import EvaluationConfig, build_encoder, prepare_dataset
from indexer.vectors import postprocess as pp

K = 10
DEPTH = 10


# The datasets as the relevance-feedback commands of docs/EVALUATION.md prepare them (same caches).
def dataset_configs(root: Path) -> dict[str, dict[str, Any]]:
    """Dataset name -> EvaluationConfig options."""
    return {
        "pneu": {"data": root / "medmnist/pneumoniamnist_reconstructed.npz", "max_images": 2000},
        "retina": {"data": root / "medmnist/retinamnist.npz"},
        "brain": {
            "data": root / "brain-tumor-mri",
            "manifest": root / "brain-tumor-mri/labels.csv",
            "dedupe": True,
            "max_images": 1500,
            "spec": ManifestSpec(split_column="split", hash_column="md5"),
        },
        "covid": {
            "data": root / "covid-chestxray/images",
            "manifest": root / "covid-chestxray/metadata.csv",
            "seed": 0,
            "spec": ManifestSpec(
                path_column="filename",
                label_column="finding",
                patient_column="patientid",
                include=(("modality", "X-ray"),),
                ignore_labels=("todo",),
            ),
        },
    }


Array = npt.NDArray[np.float32]
# A method maps (database, queries, banned) to (database', queries', scores): None (rank by inner
# product), a (Q, N) score matrix, or each query's ranked (positions, scores) lists.
Scores = Array | tuple[npt.NDArray[np.int64], Array] | None
Method = Callable[[Array, Array, list[set[int]]], tuple[Array, Array, Scores]]


def _banned_topn(db: Array, queries: Array, banned: list[set[int]], n: int) -> npt.NDArray[np.int64]:
    return retrieve(db, queries, n, banned=banned).positions


def pcaw(power: float, shrinkage: float, dim: int | None = None) -> Method:
    def run(db: Array, q: Array, banned: list[set[int]]) -> tuple[Array, Array, Scores]:
        w = pp.fit_whitening(db, power=power, shrinkage=shrinkage, dim=dim)
        return w.transform(db), w.transform(q), None

    return run


def aqe(n: int, alpha: float) -> Method:
    def run(db: Array, q: Array, banned: list[set[int]]) -> tuple[Array, Array, Scores]:
        positions = _banned_topn(db, q, banned, max(n - 1, 1))
        return db, pp.alpha_query_expansion(q, db, positions, n=n, alpha=alpha), None

    return run


def dba(n: int, alpha: float) -> Method:
    def run(db: Array, q: Array, banned: list[set[int]]) -> tuple[Array, Array, Scores]:
        return pp.database_augmentation(db, n=n, alpha=alpha), q, None

    return run


def rerank(k: int, weight: float) -> Method:
    def run(db: Array, q: Array, banned: list[set[int]]) -> tuple[Array, Array, Scores]:
        sims = q @ db.T
        for row, ban in enumerate(banned):
            if ban:
                sims[row, sorted(ban)] = -10.0
        db_nn, _ = pp.top_neighbours(db, db, k)
        return db, q, pp.shared_neighbour_rerank(sims, db_nn, k=k, weight=weight)

    return run


def diffusion(
    k: int = 50, kq: int = 10, alpha: float = 0.99, gamma: float = 3.0, trunc: int = 1000
) -> Method:
    def run(db: Array, q: Array, banned: list[set[int]]) -> tuple[Array, Array, Scores]:
        allowed = np.ones((len(q), len(db)), dtype=bool)
        for row, ban in enumerate(banned):
            if ban:
                allowed[row, sorted(ban)] = False
        graph, graph_sims = pp.knn_graph(db, k)
        found = pp.diffusion_rerank(
            q @ db.T,
            graph,
            graph_sims,
            depth=DEPTH,
            kq=kq,
            alpha=alpha,
            gamma=gamma,
            trunc=trunc,
            allowed=allowed,
        )
        return db, q, found

    return run


def chain(*steps: Method) -> Method:
    def run(db: Array, q: Array, banned: list[set[int]]) -> tuple[Array, Array, Scores]:
        scores = None
        for step in steps:
            db, q, scores = step(db, q, banned)
        return db, q, scores

    return run


# Fixed a priori: the literature's usual settings.
FIXED: dict[str, Method] = {
    "baseline": chain(),
    "pcaw (power 0.5, shrink 0.1)": pcaw(0.5, 0.1),
    "pcaw (power 0.25, shrink 0.1)": pcaw(0.25, 0.1),
    "pcaw (power 0.5, shrink 0.1, dim 256)": pcaw(0.5, 0.1, 256),
    "pcaw (power 0.25, shrink 0.1, dim 256)": pcaw(0.25, 0.1, 256),
    "aqe (n 3, alpha 3)": aqe(3, 3.0),
    "aqe (n 5, alpha 3)": aqe(5, 3.0),
    "dba (n 3, alpha 3)": dba(3, 3.0),
    "dba + aqe (n 3, alpha 3)": chain(dba(3, 3.0), aqe(3, 3.0)),
    "rerank (k 10, w 0.3)": rerank(10, 0.3),
    "pcaw 0.25 + dba + aqe": chain(pcaw(0.25, 0.1), dba(3, 3.0), aqe(3, 3.0)),
    # Iscen et al. (CVPR 2017) and their code's values, fixed before the first run.
    "diffusion (k 50, kq 10, alpha 0.99, gamma 3)": diffusion(),
    "pcaw 0.25 + diffusion": chain(pcaw(0.25, 0.1), diffusion()),
}
GRID: dict[str, Method] = {
    **{f"pcaw (power {p}, shrink {s})": pcaw(p, s) for p in (0.1, 0.25, 0.5) for s in (0.01, 0.1, 1.0)},
    **{f"aqe (n {n}, alpha {a})": aqe(n, a) for n in (2, 3, 5, 8) for a in (0.0, 3.0)},
    **{f"dba (n {n}, alpha {a})": dba(n, a) for n in (2, 3, 5) for a in (0.0, 3.0)},
    **{f"rerank (k {k}, w {w})": rerank(k, w) for k in (5, 10, 20) for w in (0.1, 0.3)},
    **{f"diffusion (k {k}, alpha {a})": diffusion(k, 10, a) for k in (10, 20, 50) for a in (0.9, 0.99)},
}
FAMILIES = ("pcaw", "aqe", "dba", "rerank", "diffusion")


def run_method(
    method: Method, dataset: LabeledDataset, vectors: Array, train: Any, test: Any, banned: list[set[int]]
) -> dict[str, Any]:
    """Metrics and per-query AP@10 of one method with database = train, queries = test."""
    db, q, scores = method(vectors[train], vectors[test], banned)
    if scores is None:
        found = retrieve(db, q, DEPTH, banned=banned)
        positions, sims = found.positions, found.similarities
    elif isinstance(scores, tuple):
        positions, sims = scores
    else:
        positions = np.argsort(-scores, axis=1, kind="stable")[:, :DEPTH]
        sims = np.take_along_axis(scores, positions, axis=1)
    labels = np.where(positions >= 0, dataset.labels[train][positions], -1)
    result = score_retrieval(dataset.labels[test], labels, sims, dataset.class_names, k=K)
    relevant = metrics.relevance(dataset.labels[test], labels)
    return {"metrics": result.metrics, "ap10": metrics.average_precision_at_k(relevant, K)}


def paired_interval(diff: npt.NDArray[np.float64], groups: npt.NDArray[np.int64]) -> tuple[float, float]:
    """95 % cluster-bootstrap interval (5000 resamples) of the mean difference, in points."""
    rng = np.random.default_rng(0)
    n_groups = int(groups.max()) + 1
    sums = np.bincount(groups, weights=diff, minlength=n_groups)
    counts = np.bincount(groups, minlength=n_groups)
    picks = rng.integers(0, n_groups, size=(5000, n_groups))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(100 * low), float(100 * high)


def evaluate(
    name: str, options: dict[str, Any], cache_dir: Path, family: str | None = None
) -> dict[str, Any]:
    """Every fixed row on test; the val-chosen setting of each family on test where val exists.

    `family` (e.g. 'diffusion') keeps the baseline and that family's rows and grid only.
    """
    config = EvaluationConfig(cache_dir=cache_dir, **options)
    dataset = prepare_dataset(config)
    split: Split = make_split(
        dataset, seed=config.seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction
    )
    encoder = build_encoder(config)
    size = getattr(encoder, "input_size", None)
    vectors = embed_dataset(
        dataset, encoder, cache_dir=cache_dir, cache_tag=f"-{size[0]}px" if size else "", progress=False
    )
    banned = banned_neighbours(dataset, split)
    if dataset.patients is None:
        groups = np.arange(len(split.test))
    else:
        groups = np.unique(np.asarray(dataset.patients)[split.test], return_inverse=True)[1]
    rows: dict[str, Any] = {}
    base: npt.NDArray[np.float64] | None = None
    methods = {k: m for k, m in FIXED.items() if family is None or k == "baseline" or family in k}
    grid = {k: m for k, m in GRID.items() if family is None or k.startswith(family)}
    picks: dict[str, str] = {}
    if len(split.val) > 0:
        as_queries = Split(train=split.train, test=split.val, val=split.val, how=split.how)
        val_banned = banned_neighbours(dataset, as_queries)
        val_scores = {
            label: float(
                run_method(m, dataset, vectors, split.train, split.val, val_banned)["metrics"]["map@10"]
            )
            for label, m in {"baseline": chain(), **grid}.items()
        }
        for fam in FAMILIES:
            if not any(k.startswith(fam) for k in grid):
                continue
            best = max((k for k in val_scores if k.startswith(fam)), key=lambda k: val_scores[k])
            picks[fam] = best
            methods[f"val-chosen {best}"] = GRID[best]
        combo = [
            GRID[picks[f]]
            for f in ("pcaw", "dba", "aqe")
            if f in picks and val_scores[picks[f]] > val_scores["baseline"]
        ]
        if combo:
            methods["val-chosen winners combined"] = chain(*combo)
    for label, method in methods.items():
        out = run_method(method, dataset, vectors, split.train, split.test, banned)
        row = {m: round(100 * out["metrics"][m], 2) for m in ("map@10", "precision@10", "map@5", "acc@1")}
        if base is None:
            base = out["ap10"]
        else:
            row["map@10_diff_95ci"] = [round(x, 2) for x in paired_interval(out["ap10"] - base, groups)]
        rows[label] = row
        print(f"{name:7s} {label:45s} " + " ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return {
        "dataset": dataset.name,
        "database_images": len(split.train),
        "query_images": len(split.test),
        "val_images": len(split.val),
        "split": split.how,
        "encoder": encoder.name,
        "resampled_by": "query" if dataset.patients is None else "patient",
        "val_picks": picks,
        "rows": rows,
    }


def evaluate_product(name: str, options: dict[str, Any], cache_dir: Path, specs: list[str]) -> dict[str, Any]:
    """Each SPEC through `medcbir eval --postprocess`'s path (the product's index), test queries."""
    from indexer.evaluation.runner import run_evaluation

    rows: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for spec in specs:
        result = run_evaluation(
            EvaluationConfig(cache_dir=cache_dir, postprocess=spec, **options), progress=False
        )
        info = result.info
        row = {m: round(100 * result.metrics[m], 2) for m in ("map@10", "precision@10", "map@5", "acc@1")}
        rows[str(result.info["postprocess"])] = row
        print(
            f"{name:7s} product {result.info['postprocess']:60s} "
            + " ".join(f"{k} {v}" for k, v in row.items())
        )
    return {
        "dataset": info.get("dataset"),
        "database_images": info.get("database_images"),
        "query_images": info.get("query_images"),
        "path": "medcbir eval --postprocess (indexer.vectors.index.VectorIndex)",
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="+", choices=["pneu", "retina", "brain", "covid"])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--cache-dir", type=Path, default=Path("artifacts/fb/cache"))
    parser.add_argument("--json-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=None, help="another split seed (patient-split sets only)")
    parser.add_argument(
        "--product",
        nargs="+",
        metavar="SPEC",
        default=None,
        help="score these SPECs through the product's index",
    )
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default=None,
        help="only the baseline and this family's rows and val grid (JSON: label_free_<family>_<name>.json)",
    )
    args = parser.parse_args()
    configs = dataset_configs(args.datasets)
    for name in args.names:
        options = configs[name] if args.seed is None else {**configs[name], "seed": args.seed}
        if args.product:
            report = evaluate_product(name, options, args.cache_dir, args.product)
            stem = "label_free_product_"
        else:
            report = evaluate(name, options, args.cache_dir, args.family)
            stem = "label_free_"
        if args.family:
            stem = f"label_free_{args.family}_" + ("product_" if args.product else "")
        if args.json_dir is not None:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            suffix = "" if args.seed is None else f"_seed{args.seed}"
            path = args.json_dir / f"{stem}{name}{suffix}.json"
            path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
