"""The catalog generation: a counter every change of a stored vector bumps (by trigger): writers see each other."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import BigInteger, Connection, event, text
from sqlalchemy.orm import Mapped, mapped_column

from indexer.catalog.models import Base

log = logging.getLogger(__name__)

# Tables whose rows carry vectors, and the columns whose update changes a vector.
VECTOR_TABLES = {"images": ("embedding", "encoder"), "image_embeddings": ("vector", "encoder")}


class CatalogGeneration(Base):
    """A single row (id 1): how many vector rows were inserted, deleted or changed, ever.

    Database triggers bump it in the writer's own transaction, so every writer (CLI, server, Ray
    driver, PACS follower, receiver, a person with psql) is counted without cooperating; a saved index
    records the generation it was synced to, and a server compares it to the catalog's to know how far
    behind it is.
    """

    __tablename__ = "catalog_generation"

    id: Mapped[int] = mapped_column(primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


def _sqlite_statements() -> list[str]:
    bump = "BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END"
    statements = []
    for table, columns in VECTOR_TABLES.items():
        for change in ("INSERT", "DELETE", f"UPDATE OF {', '.join(columns)}"):
            name = f"{table}_generation_{change.split()[0].lower()}"
            statements.append(f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {change} ON {table} {bump}")
    return statements


POSTGRES_FUNCTION = (
    "CREATE OR REPLACE FUNCTION catalog_generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; RETURN NULL; END $$"
)


def install_generation(connection: Connection) -> None:
    """Create the counter's row and its triggers where missing (idempotent; create_all and migration 0005)."""
    dialect = connection.dialect.name
    tables = (
        set(connection.execute(text(_TABLES_SQL[dialect])).scalars()) if dialect in _TABLES_SQL else set()
    )
    if "catalog_generation" not in tables or not set(VECTOR_TABLES) <= tables:
        return
    if connection.execute(text("SELECT count(*) FROM catalog_generation WHERE id = 1")).scalar() == 0:
        connection.execute(text("INSERT INTO catalog_generation (id, generation) VALUES (1, 0)"))
    if dialect == "sqlite":
        for statement in _sqlite_statements():
            connection.execute(text(statement))
    elif dialect == "postgresql":
        existing = set(
            connection.execute(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")).scalars()
        )
        wanted = {f"{table}_generation" for table in VECTOR_TABLES}
        if wanted <= existing:
            return  # never re-create: that would lock the tables against every other writer
        connection.execute(text(POSTGRES_FUNCTION))
        for table, columns in VECTOR_TABLES.items():
            connection.execute(text(f"DROP TRIGGER IF EXISTS {table}_generation ON {table}"))
            connection.execute(
                text(
                    f"CREATE TRIGGER {table}_generation AFTER INSERT OR DELETE OR UPDATE OF "
                    f"{', '.join(columns)} ON {table} FOR EACH ROW EXECUTE FUNCTION catalog_generation_bump()"
                )
            )
    else:
        log.warning("catalog generation triggers are not available on %s: other writers go unseen", dialect)


_TABLES_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()",
}


def _after_create(_metadata: Any, connection: Connection, **_kw: Any) -> None:
    install_generation(connection)


def sqlite_reuses_ids(connection: Connection) -> bool:
    """True when the SQLite catalog's images table lacks AUTOINCREMENT (made before migration 0005)."""
    if connection.dialect.name != "sqlite":
        return False
    sql = connection.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'images'")
    ).scalar()
    return sql is not None and "AUTOINCREMENT" not in str(sql).upper()


event.listen(Base.metadata, "after_create", _after_create)
