"""The catalog on SQLite and PostgreSQL: Alembic migrations match the models; ingest, search and rebuild work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect

from indexer.catalog import Base, Catalog
from indexer.catalog.migrations import INITIAL_REVISION, current_revision, head_revision, upgrade_database


def _schema_differences(url: str) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def _check_migrations(url: str) -> None:
    engine = create_engine(url)
    before, after = upgrade_database(engine)
    assert before is None and after == head_revision()
    assert {"cases", "images", "diagnoses", "image_embeddings", "ingest_failures"} <= set(
        inspect(engine).get_table_names()
    )
    assert upgrade_database(engine) == (after, after)  # idempotent
    engine.dispose()
    assert _schema_differences(url) == []  # the migrations build exactly the models' schema


def test_sqlite_migrations_build_the_models_schema(tmp_path: Path) -> None:
    _check_migrations(f"sqlite:///{tmp_path / 'c.sqlite3'}")


def test_a_catalog_made_before_migrations_is_baselined(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    Catalog(url).dispose()  # create_all, no version table
    engine = create_engine(url)
    assert current_revision(engine) is None
    before, after = upgrade_database(engine)
    assert before is None and after == head_revision()
    engine.dispose()


def test_a_catalog_with_only_the_initial_schema_is_upgraded_from_it(tmp_path: Path) -> None:
    from alembic import command

    from indexer.catalog.migrations import _config

    url = f"sqlite:///{tmp_path / 'v1.sqlite3'}"
    engine = create_engine(url)
    command.upgrade(_config(engine), INITIAL_REVISION)  # the first schema, as an older medcbir made it
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE alembic_version")  # ... before migrations existed
    before, after = upgrade_database(engine)
    assert before is None and after == head_revision()
    engine.dispose()
    assert _schema_differences(url) == []


def test_cli_db_upgrade(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from indexer.cli import app

    result = CliRunner().invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"-> {head_revision()}" in result.output
    result = CliRunner().invoke(app, ["db", "current", "--data-dir", str(tmp_path)])
    assert f"current: {head_revision()}" in result.output


@pytest.mark.postgres
def test_postgres_migrations_build_the_models_schema(postgres_url: str) -> None:
    _check_migrations(postgres_url)


@pytest.mark.postgres
def test_postgres_catalog_ingests_searches_and_rebuilds(
    postgres_url: str, small_archive: tuple[Path, Path], tmp_path: Path
) -> None:
    from indexer.archive import Archive
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest
    from indexer.settings import IndexerSettings
    from indexer.vectors.index import VectorIndex
    from tests.conftest import ARCHIVE_ROWS
    from tests.helpers import ThumbnailEncoder

    upgrade_database(create_engine(postgres_url))
    settings = IndexerSettings(data_dir=tmp_path, database_url=postgres_url, batch_size=3)
    archive = Archive.open(settings, encoder=ThumbnailEncoder())
    assert archive.catalog.engine.dialect.name == "postgresql"
    folder, manifest = small_archive
    report = ingest_path(archive, folder, load_manifest(manifest, ManifestColumns()), progress=False)
    assert report.indexed == len(ARCHIVE_ROWS) and report.failed == 0
    again = ingest_path(archive, folder, load_manifest(manifest, ManifestColumns()), progress=False)
    assert again.indexed == 0  # re-ingest is a no-op on PostgreSQL too
    ids = np.sort(archive.catalog.image_ids_where(encoder=archive.encoder.name))
    assert np.array_equal(np.sort(archive.index.ids()), ids)  # one id space
    first = archive.catalog.image(int(ids[0]))
    assert first is not None
    hit = archive.index.search(first.vector(), k=1)[0]
    assert hit.ids[0] == ids[0]
    ct = archive.catalog.image_ids_where(encoder=archive.encoder.name, modality="ct")
    assert len(ct) == 1
    assert archive.index.search(first.vector(), k=5, allowed_ids=ct)[0].ids.tolist() == ct.tolist()
    rebuilt = VectorIndex.build_from_catalog(
        archive.catalog, encoder=archive.encoder.name, dim=archive.encoder.dim
    )
    assert np.array_equal(np.sort(rebuilt.ids()), ids)
    archive.close()
    # a plain postgresql:// URL gets the psycopg 3 driver
    catalog = Catalog(postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    assert catalog.stats().images == len(ARCHIVE_ROWS)
    catalog.dispose()
