"""Predictions you can trust: the calibrated vote, the trained head and the uncertain flag, through the live API."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from tests.helpers import serve_app
from tests.prediction_archive import CLASSES, build_labeled_archive

USER, PASSWORD = "prediction-radiologist", "correct horse battery staple"
DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def astronaut_png() -> bytes:
    """A non-medical photograph (skimage's astronaut): out of distribution for a medical archive."""
    from skimage import data as skdata

    return _png(np.asarray(skdata.astronaut()))


def noise_png() -> bytes:
    """Uniform colour noise."""
    return _png(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory, real_encoder):  # type: ignore[no-untyped-def]
    """(archive, source folder): three classes of real medical pictures by patient, indexed for real."""
    from indexer.archive import Archive
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest
    from indexer.settings import IndexerSettings

    source = tmp_path_factory.mktemp("labeled-api")
    manifest = build_labeled_archive(source, seed=3)
    archive = Archive.open(
        IndexerSettings(data_dir=tmp_path_factory.mktemp("data-api")), encoder=real_encoder
    )
    report = ingest_path(archive, source, load_manifest(manifest, ManifestColumns()), progress=False)
    assert report.indexed == 36, report
    return archive, source


@pytest.fixture(scope="module")
def api(labeled) -> Iterator[tuple[str, dict[str, str]]]:  # type: ignore[no-untyped-def]
    """(url, auth headers) of a live API over the labeled archive, started before any head exists."""
    from indexer.governance.accounts import create_user
    from search_api.app import create_app

    archive, _ = labeled
    create_user(archive.catalog, USER, PASSWORD, "radiologist")
    with serve_app(create_app(archive=archive)) as url:
        token = httpx.post(f"{url}/token", data={"username": USER, "password": PASSWORD}).json()
        yield url, {"Authorization": f"Bearer {token['access_token']}"}


def _search(api: tuple[str, dict[str, str]], data: bytes, name: str = "q.png") -> dict:  # type: ignore[type-arg]
    url, headers = api
    response = httpx.post(f"{url}/search", files={"file": (name, data)}, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_train_head_cli_then_api_returns_calibrated_vote_head_and_ood_flags(labeled, api) -> None:  # type: ignore[no-untyped-def]
    from indexer.cli import app

    archive, source = labeled
    in_archive = (source / "PAT-RETINA-0-0.png").read_bytes()

    # Before train-head: the plain vote, no head, and the default OOD threshold still flags a photo.
    before = _search(api, in_archive)
    assert httpx.get(f"{api[0]}/health", headers=api[1]).json()["head_version"] is None
    assert before["head_prediction"] is None
    assert before["prediction"]["calibrated"] is False
    assert before["prediction"]["method"] == "similarity-weighted kNN vote"
    assert before["prediction"]["label"] == "retina" and before["prediction"]["uncertain"] is False
    photo = _search(api, astronaut_png())
    assert photo["prediction"]["uncertain"] is True
    assert photo["prediction"]["uncertain_reason"].startswith("out_of_distribution: top similarity")

    result = CliRunner().invoke(app, ["train-head", "--data-dir", str(archive.settings.data_dir)])
    assert result.exit_code == 0, result.output
    assert "val accuracy" in result.output
    # The fit either tempers the vote or, when that does not calibrate held-out patients better, keeps
    # the similarity weights (the fit guard of 25855f4); the output says which.
    tempered = "vote: T=" in result.output
    assert tempered or "vote: similarity weights (uncalibrated)" in result.output, result.output
    assert "out of distribution below top similarity" in result.output

    # The running server picks the new version up without a restart.
    trusted = _search(api, in_archive)
    saved = sorted(p.name for p in (archive.settings.data_dir / "heads").iterdir())
    health = httpx.get(f"{api[0]}/health", headers=api[1]).json()
    assert health["head_version"] == health["vote_calibration_version"] == saved[-1]
    vote, head = trusted["prediction"], trusted["head_prediction"]
    assert head is not None, "the API did not load the trained head"
    assert vote["calibrated"] is True
    expected_method = (
        "calibrated kNN vote (T=" if tempered else "kNN vote, similarity weights kept by train-head"
    )
    assert vote["method"].startswith(expected_method), vote["method"]
    assert head["method"].startswith("linear head ") and head["calibrated"] is True
    for prediction in (vote, head):
        assert prediction["label"] == "retina"
        assert prediction["uncertain"] is False and prediction["uncertain_reason"] is None
        assert sum(s["score"] for s in prediction["scores"]) == pytest.approx(1.0, abs=1e-6)
        assert prediction["top_similarity"] == pytest.approx(1.0, abs=1e-3)
    assert sorted(s["label"] for s in head["scores"]) == sorted(CLASSES)

    for data in (astronaut_png(), noise_png()):
        answer = _search(api, data)
        for prediction in (answer["prediction"], answer["head_prediction"]):
            assert prediction["uncertain"] is True, prediction
            assert prediction["uncertain_reason"].startswith("out_of_distribution: top similarity ")


def test_search_by_archived_image_is_not_out_of_distribution(labeled, api) -> None:  # type: ignore[no-untyped-def]
    archive, _ = labeled
    url, headers = api
    image_id = int(archive.catalog.image_ids_where(encoder=archive.encoder.name)[0])
    response = httpx.post(f"{url}/search/by-image/{image_id}", headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    prediction = response.json()["prediction"]
    assert prediction["top_similarity"] < 0.9999  # the image itself is never its own match
    assert not (prediction["uncertain_reason"] or "").startswith("out_of_distribution")


def test_flag_uncertain_reasons() -> None:
    from search_api.predictions import flag_uncertain
    from search_api.schemas import LabelScore, Prediction

    low = Prediction(label="a", confidence=0.4, scores=[LabelScore(label="a", score=0.4)])
    assert flag_uncertain(low, 0.9, 0.6, 0.5).uncertain_reason == "low_confidence: 0.40 < 0.50"
    high = low.model_copy(update={"confidence": 0.8})
    assert flag_uncertain(high, 0.9, 0.6, 0.5).uncertain is False
    far = flag_uncertain(high, 0.41, 0.62, 0.5)
    assert far.uncertain and far.uncertain_reason == "out_of_distribution: top similarity 0.41 < 0.62"
    assert flag_uncertain(Prediction(), 0.9, 0.6, 0.5).uncertain_reason == "no_labeled_neighbours"
    assert flag_uncertain(high, None, 0.6, 0.5).uncertain_reason == "out_of_distribution: the index is empty"


@pytest.mark.skipif(
    not (DATASETS / "brain-tumor-mri" / "labels.csv").is_file(), reason="../shared/datasets is not here"
)
def test_calibration_on_real_brain_mri(tmp_path: Path, real_encoder) -> None:  # type: ignore[no-untyped-def]
    """A real 4-class MRI subsample: the calibrated vote is no worse calibrated than the plain vote."""
    from indexer.archive import Archive
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest
    from indexer.prediction.versions import train_predictors
    from indexer.settings import IndexerSettings
    from search_api.searcher import Searcher

    root = DATASETS / "brain-tumor-mri"
    rows = list(csv.DictReader((root / "labels.csv").open()))
    rng = np.random.default_rng(0)
    source = tmp_path / "mri"
    source.mkdir()
    picked, seen = [], set()
    for label in sorted({r["label"] for r in rows}):
        pool = [r for r in rows if r["label"] == label and r["split"] == "Training"]
        for i in rng.permutation(len(pool)):
            if pool[i]["md5"] not in seen and sum(p["label"] == label for p in picked) < 40:
                seen.add(pool[i]["md5"])
                picked.append(pool[i])
    with (source / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "diagnosis"])
        for n, row in enumerate(picked):
            name = f"{n:03d}.jpg"
            shutil.copyfile(root / row["path"], source / name)
            writer.writerow([name, f"MRI-{n:03d}", row["label"]])
    archive = Archive.open(IndexerSettings(data_dir=tmp_path / "data"), encoder=real_encoder)
    report = ingest_path(
        archive, source, load_manifest(source / "manifest.csv", ManifestColumns()), progress=False
    )
    assert report.indexed == len(picked) == 160, report

    trained = train_predictors(archive.catalog, archive.encoder.name, archive.settings.data_dir)
    vote = trained.vote.card
    assert vote["holdout_ece_after"] <= vote["holdout_ece_before"] + 1e-9, vote
    assert trained.head is not None
    assert trained.head.card["val_accuracy"] > trained.head.card["chance_accuracy"] + 0.2

    searcher = Searcher(archive)
    test_row = next(r for r in rows if r["split"] == "Testing" and r["md5"] not in seen)
    in_domain = searcher.search((root / test_row["path"]).read_bytes(), k=10)
    assert in_domain.head_prediction is not None and in_domain.prediction.calibrated
    assert not (in_domain.prediction.uncertain_reason or "").startswith("out_of_distribution")
    photo = searcher.search(astronaut_png(), k=10)
    assert (
        photo.prediction.uncertain and photo.head_prediction is not None and photo.head_prediction.uncertain
    )
    assert (photo.prediction.uncertain_reason or "").startswith("out_of_distribution")
