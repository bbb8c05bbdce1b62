"""Ids are never reused on SQLite: new catalogs say AUTOINCREMENT, and migration 0005 rebuilds older ones intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from indexer.catalog import Catalog
from indexer.catalog.migrations import _config, upgrade_database
from tests.indexer.catalog.id_reuse import check_ids_never_reused

ADD_USER = (
    "INSERT INTO users (username, role, disabled, service, created_at, token_generation) "
    "VALUES (:u, 'admin', 0, 0, '2026-01-01', 0)"
)


def test_deleted_case_ids_never_come_back_sqlite(tmp_path: Path) -> None:
    check_ids_never_reused(tmp_path / "data", None)


def _old_catalog(url: str) -> sa.Engine:
    """A catalog at revision 0004 (tables without AUTOINCREMENT), with rows in every related table."""
    engine = sa.create_engine(url)
    command.upgrade(_config(engine), "0004")
    with engine.begin() as c:
        c.execute(
            sa.text("INSERT INTO cases (id, case_key, created_at) VALUES (:i, :k, '2026-01-01')"),
            [{"i": 1, "k": "a"}, {"i": 2, "k": "b"}, {"i": 3, "k": "c"}],
        )
        c.execute(sa.text("INSERT INTO diagnoses (case_id, label) VALUES (1, 'x'), (2, 'y')"))
        for i in (1, 2):
            c.execute(
                sa.text(
                    "INSERT INTO images (id, case_id, source_uri, sha256, format, frames, frame_index, encoder, "
                    "embedding, created_at) VALUES (:i, :i, 'file:///x', :s, 'png', 1, 0, 'e', :b, '2026-01-01')"
                ),
                {"i": i, "s": f"{i:064d}", "b": b"\0" * 8},
            )
        c.execute(sa.text(ADD_USER), {"u": "alice"})
        c.execute(
            sa.text(
                "INSERT INTO audit_events (at, action, outcome) VALUES ('2026-01-01', 'search', 'success')"
            )
        )
        # case 3 was deleted: only its history is left (its id must not come back after the migration)
        c.execute(sa.text("INSERT INTO case_edits (case_id, at, field) VALUES (4, '2026-01-01', 'deleted')"))
    return engine


def test_migration_0005_rebuilds_old_tables_keeping_rows_keys_and_triggers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = _old_catalog(url)
    with engine.connect() as c:
        assert (
            "AUTOINCREMENT"
            not in c.execute(sa.text("SELECT sql FROM sqlite_master WHERE name='cases'")).scalar()
        )
    assert upgrade_database(engine, "0005")[1] == "0005"
    with engine.begin() as c:
        for table in ("cases", "images", "diagnoses", "audit_events", "case_edits", "users"):
            sql = c.execute(sa.text("SELECT sql FROM sqlite_master WHERE name=:t"), {"t": table}).scalar()
            assert "AUTOINCREMENT" in sql, table
        assert c.execute(sa.text("SELECT count(*) FROM images")).scalar() == 2
        assert c.execute(sa.text("SELECT count(*) FROM diagnoses")).scalar() == 2
        names = set(c.execute(sa.text("SELECT name FROM sqlite_master")).scalars())
        # the expression index of migration 0004 and the append-only triggers survive the rebuild
        assert {"uq_users_username_lower", "audit_events_no_update", "images_generation_insert"} <= names
        with pytest.raises(sa.exc.IntegrityError):
            c.execute(sa.text(ADD_USER), {"u": "ALICE"})
    with engine.begin() as c, pytest.raises(sa.exc.DatabaseError):
        c.execute(sa.text("UPDATE audit_events SET outcome = 'x'"))
    engine.dispose()
    catalog = Catalog(url)  # foreign keys on: deleting a case still cascades to its rows
    try:
        with catalog.engine.begin() as c:
            c.execute(sa.text("DELETE FROM cases WHERE id = 3"))
            c.execute(sa.text("INSERT INTO cases (case_key, created_at) VALUES ('d', '2026-01-01')"))
            new_id = c.execute(sa.text("SELECT id FROM cases WHERE case_key = 'd'")).scalar()
            assert new_id == 5  # not 3 (deleted now) nor 4 (deleted before the migration)
            c.execute(sa.text("DELETE FROM cases WHERE id = 2"))
            assert c.execute(sa.text("SELECT count(*) FROM images WHERE case_id = 2")).scalar() == 0
        generation = catalog.generation()
        assert generation == 1  # the cascaded image delete bumped it
    finally:
        catalog.dispose()
