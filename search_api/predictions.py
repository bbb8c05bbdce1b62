"""Predictions served beside the hits: the kNN vote, the trained head, and when not to trust them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.prediction.heads import LinearHead
from indexer.prediction.ood import GLOBAL_OOD_SIMILARITY, ArchiveOod
from indexer.prediction.vote import LabelVote, vote_labels
from indexer.prediction.vote_fit import VoteCalibrationFile
from search_api.schemas import LabelScore, Prediction

# Without a `medcbir train-head` calibration and before the archive holds enough images for its own
# threshold (`indexer.prediction.ood`): a query whose best cosine similarity to the archive is below this
# is out of distribution (ImageNet-pretrained EfficientNet features: unrelated photographs and noise reach
# ~0.2-0.3 against medical archives, near-duplicates > 0.9), and a top share below DEFAULT_MIN_CONFIDENCE
# is low confidence. A calibration replaces both with values fitted on the archive.
DEFAULT_OOD_SIMILARITY = GLOBAL_OOD_SIMILARITY
DEFAULT_MIN_CONFIDENCE = 0.5


def _prediction(vote: LabelVote, **extra: object) -> Prediction:
    scores = [LabelScore(label=label, score=p, votes=n) for label, p, n in vote.scores]
    if not scores:
        return Prediction(**extra)  # type: ignore[arg-type]
    return Prediction(
        label=scores[0].label,
        confidence=scores[0].score,
        scores=scores,
        labeled_neighbours=vote.labeled_neighbours,
        **extra,  # type: ignore[arg-type]
    )


def vote(neighbours: Sequence[tuple[float, Sequence[str]]]) -> Prediction:
    """The uncalibrated vote (`indexer.prediction.vote`): each labeled neighbour casts max(similarity, 0)."""
    return _prediction(vote_labels(neighbours))


def calibrated_vote(
    neighbours: Sequence[tuple[float, Sequence[str]]], calibration: VoteCalibrationFile
) -> Prediction:
    """The tempered vote that `medcbir train-head` fitted, computed by the same code that fitted it.

    Only the first `calibration.k` neighbours vote (the k it was fitted with), whatever k the search
    asked for; every class of the calibration, and any other label among them, is listed.
    """
    result = vote_labels(
        neighbours,
        classes=calibration.labels,
        k=calibration.k,
        temperature=calibration.temperature,
        epsilon=calibration.epsilon,
    )
    return _prediction(result, method=_vote_method(calibration), calibrated=True)


def _vote_method(calibration: VoteCalibrationFile) -> str:
    if calibration.temperature is None:  # the fit kept the uncalibrated weights (see the card's guard)
        return f"kNN vote, similarity weights kept by train-head (eps={calibration.epsilon:g})"
    return f"calibrated kNN vote (T={calibration.temperature:g}, eps={calibration.epsilon:g})"


def head_prediction(head: LinearHead, vector: npt.NDArray[np.float32]) -> Prediction:
    """The trained head's temperature-scaled softmax over its labels."""
    probabilities = head.predict_proba(vector[None, :])[0]
    scores = sorted(
        (
            LabelScore(label=label, score=float(p))
            for label, p in zip(head.labels, probabilities, strict=True)
        ),
        key=lambda s: (-s.score, s.label),
    )
    return Prediction(
        label=scores[0].label,
        confidence=scores[0].score,
        scores=scores,
        method=f"linear head {head.version} (T={head.temperature:.3g})",
        calibrated=True,
    )


def flag_uncertain(
    prediction: Prediction,
    top_similarity: float | None,
    ood_similarity: float,
    min_confidence: float,
    ood_source: str | None = None,
) -> Prediction:
    """The prediction marked uncertain, with the reason, when it is out of distribution or low-confidence.

    Out of distribution wins: a query below `ood_similarity` to every stored image gets no reliable
    match however peaked the scores are.
    """
    reason: str | None = None
    if top_similarity is None:
        reason = "out_of_distribution: the index is empty"
    elif top_similarity < ood_similarity:
        reason = f"out_of_distribution: top similarity {top_similarity:.2f} < {ood_similarity:.2f}"
        if ood_source:
            reason += f" ({ood_source})"
    elif prediction.label is None:
        reason = "no_labeled_neighbours"
    elif prediction.confidence < min_confidence:
        reason = f"low_confidence: {prediction.confidence:.2f} < {min_confidence:.2f}"
    return prediction.model_copy(
        update={"uncertain": reason is not None, "uncertain_reason": reason, "top_similarity": top_similarity}
    )


@dataclass(frozen=True)
class Predictors:
    """The serving encoder's newest trained head and vote calibration (either may be missing)."""

    head: LinearHead | None = None
    vote: VoteCalibrationFile | None = None
    archive_ood: ArchiveOod | None = None  # fitted on the stored images, used without a vote calibration

    @property
    def ood_similarity(self) -> float:
        """The calibrated OOD threshold, else the archive's own, else DEFAULT_OOD_SIMILARITY."""
        if self.vote:
            return self.vote.ood_similarity
        return self.archive_ood.similarity if self.archive_ood else DEFAULT_OOD_SIMILARITY

    @property
    def ood_source(self) -> str:
        """Where the OOD threshold comes from, in words."""
        if self.vote:
            return f"train-head calibration {self.vote.version}"
        return self.archive_ood.describe() if self.archive_ood else "global default"

    @property
    def min_confidence(self) -> float:
        """The calibrated low-confidence threshold, or DEFAULT_MIN_CONFIDENCE."""
        return self.vote.min_confidence if self.vote else DEFAULT_MIN_CONFIDENCE
