"""`rebuild-index --postprocess` on a real archive (real encoder, real images): fit, keep, restart, ingest, refit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from indexer.archive import Archive
from indexer.cli import app
from indexer.ingest.local import ingest_path
from indexer.settings import IndexerSettings
from search_api.searcher import Searcher


@pytest.fixture()
def archive_dirs(tmp_path: Path, small_archive: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """(data folder, image folder holding all but the fundus photograph, the held-back photograph)."""
    for name in ("MEDCBIR_DATABASE_URL", "DATABASE_URL", "MEDCBIR_ENCODER", "MEDCBIR_INDEX_POSTPROCESS"):
        monkeypatch.delenv(name, raising=False)
    folder, _ = small_archive
    images = tmp_path / "images"
    shutil.copytree(folder, images, ignore=shutil.ignore_patterns("*.csv", "retina.png"))
    return tmp_path / "data", images, folder / "raster" / "retina.png"


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def test_postprocess_survives_rebuild_restart_and_ingest(archive_dirs, real_encoder) -> None:  # type: ignore[no-untyped-def]
    data, images, later = archive_dirs
    settings = IndexerSettings(data_dir=data)
    archive = Archive.open(settings, encoder=real_encoder)
    assert ingest_path(archive, images, progress=False, workers=0).indexed == 6
    archive.close()

    out = _cli("rebuild-index", "--postprocess", "pcaw:power=0.5", "--data-dir", str(data))
    assert "rebuilt: 6 vectors" in out and "postprocess: pcaw:dim=0,power=0.5,shrink=0.1 (version" in out
    version = out.split("(version ")[1].split(",")[0]
    stats = _cli("stats", "--data-dir", str(data))
    assert f"postprocess pcaw:dim=0,power=0.5,shrink=0.1 (version {version}, fitted on 6 rows)" in stats
    # a rebuild without the flag keeps the option; the catalog did not change, so neither does the version
    assert f"(version {version}," in _cli("rebuild-index", "--data-dir", str(data))

    # a restart loads it from the saved state; a search ranks as the whitening by hand
    archive = Archive.open(settings, encoder=real_encoder)
    post = archive.index.postprocess
    assert post is not None and post.version == version and post.whitening is not None
    ids, raw = zip(*archive.catalog.embeddings(real_encoder.name), strict=True)
    all_ids, all_raw = np.concatenate(ids), np.concatenate(raw)
    query = all_raw[2:3]  # an archived image's own real embedding
    sims = post.whitening.transform(query) @ post.whitening.transform(all_raw).T
    found = archive.index.search(query, k=6)[0]
    assert found.ids.tolist() == all_ids[np.argsort(-sims[0])].tolist()

    # the server path: /health says what is served; an archived image's own bytes find it first
    searcher = Searcher(archive)
    health = searcher.health()
    assert (health.index_postprocess, health.index_postprocess_version) == (str(post.spec), version)
    top = searcher.search((images / "raster" / "ihc.jpg").read_bytes(), k=3).hits[0]
    assert top.source_uri.endswith("ihc.jpg") and top.similarity > 0.99

    # an image ingested after the fit goes through the fitted whitening (not refitted)
    assert ingest_path(archive, later, progress=False, workers=0).indexed == 1
    archive.save_index()
    new_id = int(np.setdiff1d(archive.catalog.image_ids_where(encoder=real_encoder.name), all_ids)[0])
    stored_raw = archive.catalog.stored_vectors(
        np.array([new_id]), encoder=real_encoder.name, dim=real_encoder.dim
    )
    np.testing.assert_allclose(
        archive.index._index.reconstruct(new_id), post.whitening.transform(stored_raw)[0], atol=1e-5
    )
    assert archive.index.postprocess.version == version  # type: ignore[union-attr]
    archive.close()
    assert f"(version {version}, fitted on 6 rows)" in _cli("stats", "--data-dir", str(data))

    # rebuild-index refits on the 7 rows: a new version; the catalog's raw vectors are untouched
    out = _cli("rebuild-index", "--data-dir", str(data))
    assert "rebuilt: 7 vectors" in out and f"(version {version}," not in out and "fitted on 7 rows" in out
    after = archive.catalog.stored_vectors(
        np.array([new_id]), encoder=real_encoder.name, dim=real_encoder.dim
    )
    assert np.array_equal(after, stored_raw)
    # and back to plain vectors
    assert "postprocess: none" in _cli("rebuild-index", "--postprocess", "none", "--data-dir", str(data))
    assert "postprocess none" in _cli("stats", "--data-dir", str(data))


def test_a_bad_postprocess_spec_is_refused_naming_the_valid_ones(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["rebuild-index", "--postprocess", "whiten", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert (
        "unknown post-processing step 'whiten'" in result.output and "pcaw, dba, aqe, rerank" in result.output
    )
    result = CliRunner().invoke(app, ["eval", "--data", str(tmp_path), "--postprocess", "pcaw:strength=2"])
    assert result.exit_code != 0 and "pcaw has no setting 'strength=2'" in result.output
