"""Migration 0004 on SQLite and PostgreSQL: usernames unique whatever their case; case duplicates stop it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from indexer.catalog import Catalog
from indexer.catalog.migrations import _config, current_revision, head_revision, upgrade_database
from indexer.governance.accounts import AccountConflictError, authenticate, create_user, get_account

PASSWORD = "correct horse battery"


def _add_user(engine: Engine, username: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (username, password_hash, role, disabled, service, created_at) "
                "VALUES (:u, NULL, 'radiologist', false, false, CURRENT_TIMESTAMP)"
            ),
            {"u": username},
        )


def _at_0003(url: str) -> Engine:
    from alembic import command

    engine = create_engine(url)
    command.upgrade(_config(engine), "0003")  # a catalog as it was before usernames ignored case
    return engine


def _case_duplicates_stop_the_upgrade(url: str) -> None:
    engine = _at_0003(url)
    _add_user(engine, "alice")
    _add_user(engine, "Alice")
    with pytest.raises(RuntimeError, match=r"differ only in case: Alice, alice\. Keep one name"):
        upgrade_database(engine)
    assert current_revision(engine) == "0003"  # nothing changed: rename, then upgrade again
    with engine.begin() as connection:
        connection.execute(text("UPDATE users SET username = 'alice2' WHERE username = 'Alice'"))
    assert upgrade_database(engine)[1] == head_revision()
    engine.dispose()


def _upgraded_catalog_refuses_another_case(url: str) -> None:
    engine = _at_0003(url)
    _add_user(engine, "bob")
    assert upgrade_database(engine)[1] == head_revision()
    with engine.connect() as connection:
        generation = connection.execute(text("SELECT token_generation FROM users")).scalar_one()
    assert generation == 0  # existing users start at generation 0
    with pytest.raises(IntegrityError):  # the database itself refuses, not only create_user
        _add_user(engine, "BOB")
    engine.dispose()


def _accounts_ignore_case(url: str) -> None:
    catalog = Catalog(url)
    try:
        create_user(catalog, "carol", PASSWORD, "radiologist")
        with pytest.raises(AccountConflictError, match="'carol' already exists"):
            create_user(catalog, "Carol", PASSWORD, "radiologist")
        signed_in = authenticate(catalog, "CAROL", PASSWORD)
        assert signed_in is not None and signed_in.username == "carol"
        account = get_account(catalog, "Carol")
        assert account is not None and account.username == "carol"
    finally:
        catalog.dispose()


CHECKS: list[Callable[[str], None]] = [
    _case_duplicates_stop_the_upgrade,
    _upgraded_catalog_refuses_another_case,
    _accounts_ignore_case,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.strip("_"))
def test_sqlite(check: Callable[[str], None], tmp_path: Path) -> None:
    check(f"sqlite:///{tmp_path / 'c.sqlite3'}")


@pytest.mark.postgres
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.strip("_"))
def test_postgres(check: Callable[[str], None], postgres_url: str) -> None:
    check(postgres_url)
