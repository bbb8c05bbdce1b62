"""Without a train-head calibration the OOD threshold is fitted on the archive's own stored images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from indexer.prediction.ood import (
    GLOBAL_OOD_SIMILARITY,
    MIN_ARCHIVE_IMAGES,
    ArchiveOod,
    ArchiveOodCache,
    fit_archive_ood,
)
from tests.helpers import serve_app
from tests.prediction_archive import build_labeled_archive
from tests.search_api.test_predictions import astronaut_png, noise_png

USER, PASSWORD = "ood-radiologist", "correct horse battery staple"


def _unit(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _exact_search(vectors: npt.NDArray[np.float32], ids: npt.NDArray[np.int64]):  # type: ignore[no-untyped-def]
    def search(queries: npt.NDArray[np.float32], k: int):  # type: ignore[no-untyped-def]
        sims = queries @ vectors.T
        order = np.argsort(-sims, axis=1)[:, :k]
        return [(ids[row], sims[q, row]) for q, row in enumerate(order)]

    return search


def test_fit_ignores_the_same_patients_copies_and_takes_the_low_quantile() -> None:
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    patients = 60
    base = _unit(centre + rng.normal(scale=1.0, size=(patients, 64)))  # other patients: cos ~0.5
    twins = _unit(base + rng.normal(scale=0.02, size=base.shape))  # each patient's second image: cos ~1
    vectors = np.concatenate([base, twins])
    ids = np.arange(100, 100 + 2 * patients, dtype=np.int64)
    group = {int(i): f"patient:{n % patients}" for n, i in enumerate(ids)}
    fit = fit_archive_ood(
        ids,
        lambda sample: vectors[np.searchsorted(ids, sample)],
        _exact_search(vectors, ids),
        lambda wanted: {i: group[i] for i in wanted},
    )
    assert fit is not None
    # the expected value: every image's best similarity to another patient, computed by hand
    sims = vectors @ vectors.T
    same = np.array([[group[int(a)] == group[int(b)] for b in ids] for a in ids])
    best_other = np.where(same, -np.inf, sims).max(axis=1)
    assert fit.queries == 2 * patients and fit.index_size == 2 * patients
    assert fit.fitted == pytest.approx(float(np.quantile(best_other, 0.01)), abs=1e-5)
    assert fit.fitted < 0.9  # the twins (cos ~1) were skipped
    assert fit.similarity == max(fit.fitted, GLOBAL_OOD_SIMILARITY)


def test_too_few_images_or_one_patient_gives_no_fit() -> None:
    vectors = _unit(np.random.default_rng(1).normal(size=(MIN_ARCHIVE_IMAGES + 5, 16)))
    ids = np.arange(len(vectors), dtype=np.int64)
    search = _exact_search(vectors, ids)
    one_patient = fit_archive_ood(ids, lambda s: vectors[s], search, lambda w: dict.fromkeys(w, "patient:X"))
    assert one_patient is None
    few = ids[: MIN_ARCHIVE_IMAGES - 1]
    assert fit_archive_ood(few, lambda s: vectors[s], search, lambda w: {i: f"p{i}" for i in w}) is None


def test_a_fit_is_stale_only_after_the_index_changed_by_a_tenth() -> None:
    fit = ArchiveOod(fitted=0.7, queries=100, index_size=100)
    assert not fit.stale(100) and not fit.stale(110) and not fit.stale(90)
    assert fit.stale(111) and fit.stale(89)
    assert ArchiveOod(fitted=0.3, queries=100, index_size=100).similarity == GLOBAL_OOD_SIMILARITY


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory, real_encoder):  # type: ignore[no-untyped-def]
    """(archive, folder of held-out crops): three classes of real medical pictures by patient, no head."""
    from indexer.archive import Archive
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest
    from indexer.settings import IndexerSettings

    source = tmp_path_factory.mktemp("ood-archive")
    manifest = build_labeled_archive(source, patients_per_class=12, images_per_patient=3, seed=5)
    archive = Archive.open(
        IndexerSettings(data_dir=tmp_path_factory.mktemp("ood-data")), encoder=real_encoder
    )
    report = ingest_path(archive, source, load_manifest(manifest, ManifestColumns()), progress=False)
    assert report.indexed == 108, report
    held_out = tmp_path_factory.mktemp("ood-held-out")
    build_labeled_archive(held_out, patients_per_class=5, images_per_patient=2, seed=99)
    return archive, held_out


@pytest.fixture(scope="module")
def api(labeled) -> Iterator[tuple[str, dict[str, str], object]]:  # type: ignore[no-untyped-def]
    from indexer.governance.accounts import create_user
    from search_api.app import create_app

    archive, _ = labeled
    create_user(archive.catalog, USER, PASSWORD, "radiologist")
    app = create_app(archive=archive)
    with serve_app(app) as url:
        token = httpx.post(f"{url}/token", data={"username": USER, "password": PASSWORD}).json()
        yield url, {"Authorization": f"Bearer {token['access_token']}"}, app


def _search(url: str, headers: dict[str, str], data: bytes) -> dict:  # type: ignore[type-arg]
    response = httpx.post(f"{url}/search", files={"file": ("q.png", data)}, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_noise_and_photographs_are_flagged_by_the_archive_threshold_and_held_out_images_are_not(
    labeled,  # type: ignore[no-untyped-def]
    api,
) -> None:
    from indexer.prediction.ood import fit_from_archive

    archive, held_out = labeled
    url, headers, _ = api
    fit = fit_from_archive(archive, archive.index_lock)
    assert fit is not None and fit.queries == 108
    # crops of three pictures: patients of a class resemble each other far more than 0.5
    assert fit.similarity > GLOBAL_OOD_SIMILARITY

    for data in (noise_png(), astronaut_png()):
        prediction = _search(url, headers, data)["prediction"]
        assert prediction["uncertain"] is True
        reason = prediction["uncertain_reason"]
        assert reason.startswith("out_of_distribution: top similarity ")
        assert f"< {fit.similarity:.2f} (archive default: 1% quantile" in reason, reason
        assert prediction["top_similarity"] < fit.similarity

    # New crops of new patients are in distribution: a 1% quantile flags about 1 in 100 of them by design,
    # so the rate is asserted, not each one.
    held = sorted(held_out.glob("*.png"))
    flagged = [
        p.name
        for p in held
        if (_search(url, headers, p.read_bytes())["prediction"]["uncertain_reason"] or "").startswith(
            "out_of_distribution"
        )
    ]
    assert len(held) == 30 and len(flagged) <= 3, flagged


def test_queries_never_enter_the_fit_and_growth_refits(labeled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest
    from search_api.searcher import Searcher

    archive, _ = labeled
    searcher = Searcher(archive)
    before = searcher.predictors().archive_ood
    assert before is not None and before.index_size == len(archive.index)
    for _ in range(3):
        searcher.search(noise_png(), k=5)
    assert searcher.predictors().archive_ood == before  # searches changed nothing

    source = tmp_path / "more"
    manifest = build_labeled_archive(source, patients_per_class=4, images_per_patient=1, seed=7)
    report = ingest_path(archive, source, load_manifest(manifest, ManifestColumns()), progress=False)
    assert report.indexed == 12  # 108 -> 120 images: more than a tenth
    after = searcher.predictors().archive_ood
    assert after is not None and after.index_size == 120 and after.queries == 120
    assert ArchiveOodCache().get(archive, archive.index_lock) == after  # a fresh process fits the same
