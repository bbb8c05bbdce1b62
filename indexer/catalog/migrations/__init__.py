"""Catalog schema migrations (Alembic, configured in code): upgrade, baseline and report the revision."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

INITIAL_REVISION = "0001"


def _config(engine: Engine):  # type: ignore[no-untyped-def]
    try:
        from alembic.config import Config
    except ImportError as exc:  # a core dependency, but say what to do if a slim install lacks it
        raise RuntimeError('Alembic is missing; pip install "medcbir" (it depends on alembic)') from exc
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    config.attributes["engine"] = engine
    return config


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated (or stamped)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with this version of medcbir."""
    from alembic.script import ScriptDirectory

    with_engine = ScriptDirectory(str(Path(__file__).parent))
    head = with_engine.get_current_head()
    if head is None:
        raise RuntimeError("no migration revisions found; the medcbir installation is incomplete")
    return head


def upgrade_database(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the catalog schema to `revision`; returns (before, after).

    A catalog without migration history (tables present, no version table) is stamped first: at head
    when its schema already equals the models (`Catalog` creates missing tables from them), else at
    the initial revision, the schema older catalogs were created with, and upgraded from there.
    """
    from alembic import command

    config = _config(engine)
    before = current_revision(engine)
    if before is None and inspect(engine).has_table("images"):
        baseline = "head" if not _schema_differences(engine) else INITIAL_REVISION
        log.warning("catalog has tables but no migration history: stamping it at revision %s", baseline)
        command.stamp(config, baseline)
    command.upgrade(config, revision)
    return before, current_revision(engine)


def _schema_differences(engine: Engine) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from indexer.catalog import Base

    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
