"""Fitting the kNN vote's calibration (temperature, uniform share) and the OOD threshold on leave-one-patient-out runs."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.catalog import Catalog
from indexer.errors import HeadError
from indexer.prediction.constrained import ACCURACY_TOLERANCE, fit_vote_guarded, scores
from indexer.prediction.heads import version_stamp
from indexer.prediction.labeled import (
    LabeledEmbeddings,
    grouped_split,
    load_labeled_embeddings,
    top_neighbours,
)
from indexer.prediction.vote import vote_probabilities

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


VOTE_FILE = "vote_calibration.json"


# Neighbours of the vote at calibration time (the API's default k).
VOTE_K = 10


# A query whose best similarity to the archive is below this quantile of the stored images' own best
# similarity to other patients is out of distribution.
OOD_QUANTILE = 0.01


# Below this top-class probability a prediction is flagged uncertain.
MIN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class VoteCalibrationFile:
    """The kNN vote's fitted temperature and uniform share, the OOD threshold and how they were measured.

    `temperature` None: the uncalibrated weights max(cosine, 0) (with the uniform share `epsilon`), chosen
    when every tempered vote cost accuracy or scored worse.
    """

    encoder: str
    version: str
    labels: list[str]
    temperature: float | None
    epsilon: float
    k: int
    ood_similarity: float
    min_confidence: float
    card: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        """Write vote_calibration.json into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / VOTE_FILE).write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, directory: Path) -> VoteCalibrationFile:
        """Read a vote_calibration.json."""
        data = json.loads((directory / VOTE_FILE).read_text())
        return cls(**data)


def fit_vote(
    catalog: Catalog,
    encoder_name: str,
    *,
    seed: int = 0,
    k: int = VOTE_K,
    holdout_fraction: float = 0.5,
    max_queries: int = 4000,
    data: LabeledEmbeddings | None = None,
    tolerance: float = ACCURACY_TOLERANCE,
    balanced: bool = True,
) -> VoteCalibrationFile:
    """Fit the vote's (T, eps) on leave-one-patient-out neighbour lists; measure it on held-out patients.

    Each stored image (up to `max_queries`, sampled) queries every stored image of other patients. The
    (T, eps) is chosen on the fit patients under an accuracy constraint (`indexer.prediction.constrained`:
    never below the uncalibrated vote's accuracy or balanced accuracy by more than `tolerance`; NLL
    class-balanced). The card reports accuracy, balanced accuracy, per-class recall, ECE and NLL of the
    uncalibrated and the calibrated vote on the held-out patients. The same runs give the OOD threshold:
    the OOD_QUANTILE of each query's best similarity to other patients.
    """
    data = data or load_labeled_embeddings(catalog, encoder_name)
    rng = np.random.default_rng(seed)
    queries = np.arange(len(data.ids))
    if len(queries) > max_queries:
        queries = np.sort(rng.choice(queries, size=max_queries, replace=False))
    positions, sims = top_neighbours(data, queries, k)
    top1 = sims[:, 0]
    finite_top1 = top1[np.isfinite(top1)]
    if len(finite_top1) == 0:
        raise HeadError("every stored image belongs to one patient: no leave-one-patient-out neighbours")
    ood = float(np.quantile(finite_top1, OOD_QUANTILE))
    neighbour_shares = data.neighbour_shares(positions)
    true = data.classes[queries]
    usable = true >= 0
    card: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "queries": len(queries),
        "ood_quantile": OOD_QUANTILE,
        "top1_similarity_median": float(np.median(finite_top1)),
    }
    temperature: float | None = None
    epsilon = 0.0
    n_classes = len(data.labels)
    if n_classes >= 2 and usable.sum() >= 4:
        q_groups = [data.groups[i] for i in queries[usable]]
        holdout = grouped_split(q_groups, true[usable], holdout_fraction, seed)
        fit_part = ~holdout
        if holdout.any() and fit_part.any():
            shares_u, sims_u, true_u = neighbour_shares[usable], sims[usable], true[usable]
            fit_groups = [g for g, keep in zip(q_groups, fit_part, strict=True) if keep]
            fitted = fit_vote_guarded(
                true_u[fit_part],
                shares_u[fit_part],
                sims_u[fit_part],
                n_classes,
                k,
                grouped_split(fit_groups, true_u[fit_part], 0.5, seed + 1),
                tolerance=tolerance,
                balanced=balanced,
            )
            temperature, epsilon = fitted.temperature, fitted.epsilon
            truth = true_u[holdout]
            before = vote_probabilities(shares_u[holdout], sims_u[holdout], k, fixed=n_classes)
            after = vote_probabilities(
                shares_u[holdout],
                sims_u[holdout],
                k,
                temperature=temperature,
                epsilon=epsilon,
                fixed=n_classes,
            )
            held_before, held_after = scores(truth, before, n_classes), scores(truth, after, n_classes)
            card.update(
                n_fit=int(fit_part.sum()),
                n_holdout=int(holdout.sum()),
                selection=f"lowest ECE + 0.1 * NLL ({fitted.class_weighting} class weights) on the fit "
                f"patients among the (T, eps) whose accuracy and balanced accuracy stay within "
                f"{fitted.tolerance:g} of the uncalibrated vote's (T null: the uncalibrated weights)",
                fit=fitted.card(),
                holdout_accuracy_before=held_before["accuracy"],
                holdout_accuracy=held_after["accuracy"],
                holdout_balanced_accuracy_before=held_before["balanced_accuracy"],
                holdout_balanced_accuracy=held_after["balanced_accuracy"],
                holdout_per_class_recall_before=dict(
                    zip(data.labels, held_before["per_class_recall"], strict=True)
                ),
                holdout_per_class_recall=dict(zip(data.labels, held_after["per_class_recall"], strict=True)),
                holdout_ece_before=held_before["ece"],
                holdout_ece_after=held_after["ece"],
                holdout_nll_before=held_before["nll"],
                holdout_nll_after=held_after["nll"],
                holdout_class_counts={label: int((truth == c).sum()) for c, label in enumerate(data.labels)},
            )
    else:
        card["note"] = "too few labeled images for a vote calibration: only the OOD threshold was fitted"
    payload = json.dumps([encoder_name, temperature, epsilon, ood, data.labels]).encode()
    return VoteCalibrationFile(
        encoder=encoder_name,
        version=version_stamp(payload),
        labels=list(data.labels),
        temperature=temperature,
        epsilon=epsilon,
        k=k,
        ood_similarity=ood,
        min_confidence=MIN_CONFIDENCE,
        card=card,
    )
