"""Several writers, one truth: an index catches up with other processes' rows and is never saved older than disk."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from indexer.archive import Archive
from indexer.cases import CaseManager
from indexer.cli import app
from indexer.ingest.local import ingest_path
from indexer.settings import IndexerSettings
from indexer.vectors.index import VectorIndex
from indexer.vectors.persistence import meta_path, saved_generation
from tests.helpers import ThumbnailEncoder


def _images(root: Path, seeds: range) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        blocks = np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)
        PILImage.fromarray(blocks).resize((64, 64)).save(root / f"{seed}.png")
    return root


def _open(data: Path) -> Archive:
    return Archive.open(IndexerSettings(data_dir=data), encoder=ThumbnailEncoder())  # type: ignore[arg-type]


def _ids(archive: Archive) -> list[int]:
    return sorted(archive.index.ids().tolist())


def _catalog_ids(archive: Archive) -> list[int]:
    return sorted(archive.catalog.image_ids_where(encoder=archive.encoder.name).tolist())


def test_a_serving_process_takes_in_other_writers_rows_and_deletions(tmp_path: Path) -> None:
    server = _open(tmp_path / "data")
    cli = _open(tmp_path / "data")
    try:
        ingest_path(cli, _images(tmp_path / "a", range(6)), progress=False, workers=0)
        assert len(server.index) == 0
        caught = server.refresh_index()
        assert (caught.added, caught.removed) == (6, 0)
        assert _ids(server) == _catalog_ids(server)
        case_id = int(cli.catalog.list_cases(limit=1)[1][0].id)
        CaseManager(cli, cli.index_lock).delete_case(case_id, "someone")
        assert server.refresh_index().removed == 1
        assert _ids(server) == _catalog_ids(server) == _ids(cli)
        assert server.refresh_index() == server.refresh_index()  # nothing new: nothing done
        assert server.index.generation == server.catalog.generation()
    finally:
        server.close()
        cli.close()


def test_a_stale_process_never_saves_over_a_newer_index(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = _open(data)  # opened before the CLI's ingest, and never refreshed
    cli = _open(data)
    try:
        ingest_path(cli, _images(tmp_path / "a", range(5)), progress=False, workers=0)
        cli_generation = saved_generation(cli.index_path)
        assert cli_generation == cli.catalog.generation() > 0
        # the server adds a case of its own and saves: the CLI's five vectors must stay in the file
        png = io.BytesIO()
        PILImage.fromarray(np.full((40, 40), 7, np.uint8)).save(png, format="PNG")
        CaseManager(server, server.index_lock).add_case([png.getvalue()], "r", ["x"], "someone")
        on_disk = VectorIndex.load(server.index_path, encoder=server.encoder.name, dim=server.encoder.dim)
        assert sorted(on_disk.ids().tolist()) == _catalog_ids(server)
        assert len(on_disk) == 6
        assert on_disk.generation == server.catalog.generation() > cli_generation  # type: ignore[operator]
    finally:
        server.close()
        cli.close()


def _sidecars(path: Path) -> dict[str, str]:
    good = json.loads(meta_path(path).read_text())
    return {
        "list": "[]",
        "null": "null",
        "truncated": meta_path(path).read_text()[:20],
        "wrong types": json.dumps({**good, "spec": 3, "tuning": "fast", "generation": "new"}),
        "wrong checksum type": json.dumps({**good, "sha256": 5, "dim": "512"}),
    }


@pytest.mark.parametrize("kind", ["list", "null", "truncated", "wrong types", "wrong checksum type"])
def test_a_malformed_sidecar_is_rebuilt_loudly_from_the_catalog(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    first = _open(data)
    ingest_path(first, _images(tmp_path / "a", range(4)), progress=False, workers=0)
    path = first.index_path
    first.close()
    meta_path(path).write_text(_sidecars(path)[kind])
    with caplog.at_level(logging.WARNING):
        archive = _open(data)
    try:
        assert _ids(archive) == _catalog_ids(archive) and len(archive.index) == 4
        rebuilt = [r.getMessage() for r in caplog.records if "REBUILDING" in r.getMessage()]
        assert rebuilt and path.name in rebuilt[0]  # names the file
        assert json.loads(meta_path(path).read_text())["count"] == 4  # saved again, well-formed
    finally:
        archive.close()


@pytest.mark.parametrize("kind", ["list", "null", "truncated", "wrong types"])
def test_verify_reports_a_malformed_sidecar_without_a_traceback(
    tmp_path: Path, kind: str, real_encoder: object
) -> None:
    data = tmp_path / "data"
    archive = Archive.open(IndexerSettings(data_dir=data), encoder=real_encoder)  # type: ignore[arg-type]
    ingest_path(archive, _images(tmp_path / "a", range(2)), progress=False, workers=0)
    path = archive.index_path
    archive.close()
    meta_path(path).write_text(_sidecars(path)[kind])
    result = CliRunner().invoke(app, ["verify", "--data-dir", str(data)])
    assert result.exit_code == 2  # the CLI's "error:" exit
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an AttributeError
    assert "Traceback" not in result.output
    assert "rebuild-index" in result.output and path.name in result.output
