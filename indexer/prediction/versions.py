"""Versioned DATA_DIR/heads/<version>/ folders: train-head writes a new one atomically, serving reads the newest."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.catalog import Catalog
from indexer.errors import HeadError
from indexer.prediction.heads import CARD_FILE, HEAD_FILE, LinearHead, train_head
from indexer.prediction.labeled import load_labeled_embeddings
from indexer.prediction.vote_fit import VOTE_FILE, VoteCalibrationFile, fit_vote

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


HEADS_DIR = "heads"


@dataclass(frozen=True)
class TrainedPredictors:
    """What `medcbir train-head` wrote: the version folder, the head (None if it could not be trained)."""

    directory: Path
    head: LinearHead | None
    vote: VoteCalibrationFile


def save_version(
    data_dir: Path, head: LinearHead | None, vote: VoteCalibrationFile, version: str | None = None
) -> Path:
    """Write a new DATA_DIR/heads/<version>/ atomically (temp folder + rename); an old one is never touched."""
    version = version or (head.version if head else vote.version)
    root = data_dir / HEADS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    if final.exists():
        raise HeadError(f"head version {version} already exists; versions are never overwritten")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        if head is not None:
            head.save(staging)
        vote.save(staging)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def train_predictors(
    catalog: Catalog, encoder_name: str, data_dir: Path, *, seed: int = 0, val_fraction: float = 0.2
) -> TrainedPredictors:
    """Train the head (when the labels allow it) and calibrate the vote, then save both as a new version."""
    data = load_labeled_embeddings(catalog, encoder_name)
    head: LinearHead | None
    try:
        head = train_head(catalog, encoder_name, seed=seed, val_fraction=val_fraction, data=data)
    except HeadError as exc:
        log.warning("no head trained: %s", exc)
        head = None
    vote = fit_vote(catalog, encoder_name, seed=seed, data=data)
    if head is not None:  # one version names the folder, the head and the vote calibration in it
        vote = replace(vote, version=head.version)
    directory = save_version(data_dir, head, vote)
    return TrainedPredictors(directory=directory, head=head, vote=vote)


def _versions(data_dir: Path) -> list[Path]:
    root = data_dir / HEADS_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True)


def latest_head(data_dir: Path, encoder: str) -> LinearHead | None:
    """The newest saved head trained on `encoder`'s embeddings, or None."""
    for directory in _versions(data_dir):
        if (directory / CARD_FILE).is_file() and (directory / HEAD_FILE).is_file():
            meta = json.loads((directory / CARD_FILE).read_text())
            if meta.get("encoder") == encoder:
                return LinearHead.load(directory)
    return None


def latest_vote_calibration(data_dir: Path, encoder: str) -> VoteCalibrationFile | None:
    """The newest saved vote calibration fitted on `encoder`'s embeddings, or None."""
    for directory in _versions(data_dir):
        if (directory / VOTE_FILE).is_file():
            vote = VoteCalibrationFile.load(directory)
            if vote.encoder == encoder:
                return vote
    return None


def heads_stamp(data_dir: Path) -> int:
    """A cheap change marker of DATA_DIR/heads (its mtime in ns; a new version folder changes it), 0 if absent."""
    try:
        return (data_dir / HEADS_DIR).stat().st_mtime_ns
    except FileNotFoundError:
        return 0
