"""Ids never reused (SQLite tables rebuilt with AUTOINCREMENT) and the catalog generation counter with its triggers.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:00:00.000000

SQLite hands out the highest deleted rowid again unless a table says AUTOINCREMENT, and that can only
be said when a table is created: each table is rebuilt (data, foreign keys, indexes and triggers
kept). PostgreSQL sequences never go back, so there only the generation counter is added.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "cases",
    "diagnoses",
    "images",
    "image_embeddings",
    "ingest_failures",
    "users",
    "api_keys",
    "audit_events",
    "case_edits",
)


class ForeignKeysOnError(RuntimeError):
    """The SQLite connection enforces foreign keys inside a transaction, so tables cannot be rebuilt safely."""


def upgrade() -> None:
    bind = op.get_bind()
    if "catalog_generation" not in set(sa.inspect(bind).get_table_names()):
        op.create_table(
            "catalog_generation",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("generation", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
    if bind.dialect.name == "sqlite":
        _rebuild_with_autoincrement(bind)
    from indexer.catalog.generation import install_generation

    install_generation(bind)


def _rebuild_with_autoincrement(bind: sa.Connection) -> None:
    # Dropping a parent table with foreign keys on would cascade-delete its children's rows.
    bind.exec_driver_sql("PRAGMA foreign_keys=OFF")
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise ForeignKeysOnError(
            "migration 0005 rebuilds tables and needs foreign keys off: run it with `medcbir db upgrade` "
            "(stop the servers and ingests of this catalog first); nothing was changed"
        )
    present = set(sa.inspect(bind).get_table_names())
    for table in TABLES:
        if table not in present or _has_autoincrement(bind, table):
            continue
        # Batch mode re-creates reflected columns, keys and plain indexes; expression indexes and
        # triggers it cannot reflect are kept here and re-created after the copy.
        kept = bind.execute(
            sa.text(
                "SELECT name, sql FROM sqlite_master WHERE tbl_name = :t AND type IN ('index', 'trigger') "
                "AND sql IS NOT NULL"
            ),
            {"t": table},
        ).all()
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
        now = set(
            bind.execute(
                sa.text("SELECT name FROM sqlite_master WHERE tbl_name = :t"), {"t": table}
            ).scalars()
        )
        for name, sql in kept:
            if name not in now:
                bind.exec_driver_sql(str(sql))
    # A case deleted before this migration still has history rows: its id must not come back either.
    last_deleted = (
        bind.execute(sa.text("SELECT max(case_id) FROM case_edits")).scalar()
        if "case_edits" in present
        else None
    )
    if last_deleted is not None:
        bind.execute(
            sa.text("UPDATE sqlite_sequence SET seq = :v WHERE name = 'cases' AND seq < :v"),
            {"v": last_deleted},
        )
        if not bind.execute(sa.text("SELECT count(*) FROM sqlite_sequence WHERE name = 'cases'")).scalar():
            bind.execute(
                sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('cases', :v)"), {"v": last_deleted}
            )
    problems = bind.exec_driver_sql("PRAGMA foreign_key_check").all()
    if problems:
        raise RuntimeError(f"foreign key check failed after rebuilding tables: {problems[:5]}")


def _has_autoincrement(bind: sa.Connection, table: str) -> bool:
    sql = bind.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"), {"t": table}
    ).scalar()
    return "AUTOINCREMENT" in str(sql or "").upper()


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in ("images", "image_embeddings"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_generation ON {table}")
        op.execute("DROP FUNCTION IF EXISTS catalog_generation_bump()")
    elif bind.dialect.name == "sqlite":
        for name in bind.execute(
            sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%_generation_%'")
        ).scalars():
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    # AUTOINCREMENT stays: ids that are never reused are compatible with every older medcbir.
    op.drop_table("catalog_generation")
