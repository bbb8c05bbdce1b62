"""The audit trail is append-only in the database itself, on SQLite and PostgreSQL, and the migrations say so."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from indexer.catalog import Catalog
from indexer.catalog.migrations import upgrade_database
from indexer.governance.audit import audit_records, record_audit


def _raw_changes_are_refused(url: str) -> None:
    catalog = Catalog(url)
    try:
        record_audit(catalog, action="search", outcome="success", username="someone", status=200)
        engine = catalog.engine
        # Plain SQL, past the ORM's own guard: the database must refuse on its own.
        for statement in (
            "UPDATE audit_events SET outcome = 'denied'",
            "DELETE FROM audit_events",
        ):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(statement))
        total, rows = audit_records(catalog)
        assert total == 1 and rows[0].outcome == "success" and rows[0].username == "someone"
        # appending still works
        record_audit(catalog, action="search", outcome="denied", status=403)
        assert audit_records(catalog)[0] == 2
    finally:
        catalog.dispose()


def test_sqlite_migrated_catalog_refuses_audit_update_and_delete(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    upgrade_database(create_engine(url))
    _raw_changes_are_refused(url)


@pytest.mark.postgres
def test_postgres_migrated_catalog_refuses_audit_update_delete_and_truncate(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    before, after = upgrade_database(engine)
    assert before is None and after is not None and after >= "0003"
    engine.dispose()
    _raw_changes_are_refused(postgres_url)
    engine = create_engine(postgres_url)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text("TRUNCATE audit_events"))
    engine.dispose()


@pytest.mark.postgres
def test_postgres_catalog_made_by_create_all_is_append_only_too(postgres_url: str) -> None:
    # Catalog() creates missing tables itself (no migration ran): the trigger comes with the table.
    _raw_changes_are_refused(postgres_url)


@pytest.mark.postgres
def test_postgres_migration_0003_adds_the_trigger_to_an_existing_audit_table(postgres_url: str) -> None:
    from alembic import command

    from indexer.catalog.migrations import _config

    engine = create_engine(postgres_url)
    command.upgrade(_config(engine), "0002")  # a catalog migrated before 0003: no trigger yet
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO audit_events (at, action, outcome) VALUES (now(), 'search', 'success')")
        )
        connection.execute(text("UPDATE audit_events SET outcome = 'changed'"))  # allowed before 0003
    before, after = upgrade_database(engine)
    assert before == "0002" and after is not None and after >= "0003"
    for statement in ("UPDATE audit_events SET outcome = 'again'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT outcome FROM audit_events")).scalar_one() == "changed"
        assert connection.execute(text("SELECT count(*) FROM revoked_tokens")).scalar_one() == 0
    engine.dispose()
