"""The feedback_marks table (migration 0007) on SQLite and PostgreSQL: saved per refined search, replaced,
read back, deleted with the case; an 0006 catalog upgrades to it with its rows kept, and downgrades."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from indexer.catalog import Case, Catalog
from indexer.catalog.migrations import _config, current_revision, upgrade_database
from indexer.errors import NotFoundError
from tests.postgres.conftest import postgres_url  # noqa: F401 - the fixture, for the PostgreSQL run

ORIGIN = "query:" + "ab" * 16


def _case(catalog: Catalog, key: str) -> int:
    with catalog.session() as session:
        case = catalog.get_or_create_case(
            session, key, patient_ref=None, study_instance_uid=None, report=None, labels=["x"]
        )
        session.commit()
        return case.id


def _marks(catalog: Catalog, case_id: int) -> list[tuple[str, int, bool, int, str | None]]:
    return [(m.origin, m.image_id, m.relevant, m.round, m.username) for m in catalog.feedback_marks(case_id)]


def _saved_replaced_and_deleted_with_the_case(url: str) -> None:
    catalog = Catalog(url)
    try:
        case_id, other = _case(catalog, "c1"), _case(catalog, "c2")
        catalog.save_feedback_marks(
            case_id, ORIGIN, positive=[5, 3, 5], negative=[9], round_number=1, username="ana"
        )
        catalog.save_feedback_marks(
            case_id, "image:7", positive=[2], negative=[], round_number=1, username="ana"
        )
        catalog.save_feedback_marks(other, ORIGIN, positive=[1], negative=[], round_number=1, username="bo")
        assert _marks(catalog, case_id) == [
            ("image:7", 2, True, 1, "ana"),
            (ORIGIN, 3, True, 1, "ana"),
            (ORIGIN, 5, True, 1, "ana"),  # a repeated id is one mark
            (ORIGIN, 9, False, 1, "ana"),
        ]
        # round 2 sends every mark so far: it replaces that search's marks (5 flipped to not relevant)
        catalog.save_feedback_marks(
            case_id, ORIGIN, positive=[3, 4], negative=[5, 9], round_number=2, username="ana"
        )
        assert _marks(catalog, case_id) == [
            ("image:7", 2, True, 1, "ana"),
            (ORIGIN, 3, True, 2, "ana"),
            (ORIGIN, 4, True, 2, "ana"),
            (ORIGIN, 5, False, 2, "ana"),
            (ORIGIN, 9, False, 2, "ana"),
        ]
        assert all(m.at is not None for m in catalog.feedback_marks(case_id))
        with pytest.raises(NotFoundError, match="case 999999 does not exist"):
            catalog.save_feedback_marks(
                999999, ORIGIN, positive=[1], negative=[], round_number=1, username=None
            )
        with catalog.session() as session:
            session.delete(session.get(Case, case_id))
            session.commit()
        assert catalog.feedback_marks(case_id) == []
        assert _marks(catalog, other) == [(ORIGIN, 1, True, 1, "bo")]  # another case keeps its marks
    finally:
        catalog.dispose()


def _an_0006_catalog_upgrades_keeping_its_rows_and_downgrades(url: str) -> None:
    engine = create_engine(url)
    command.upgrade(_config(engine), "0006")
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO cases (id, case_key, created_at) VALUES (1, 'old', '2026-01-01 00:00:00')")
        )
    assert not inspect(engine).has_table("feedback_marks")
    assert upgrade_database(engine) == ("0006", "0007")
    assert inspect(engine).has_table("feedback_marks")
    catalog = Catalog(url)
    try:
        catalog.save_feedback_marks(1, ORIGIN, positive=[1], negative=[2], round_number=3, username="cy")
        assert _marks(catalog, 1) == [(ORIGIN, 1, True, 3, "cy"), (ORIGIN, 2, False, 3, "cy")]
        with catalog.session() as session:
            assert session.get(Case, 1) is not None  # the case written before the upgrade is still there
    finally:
        catalog.dispose()
    command.downgrade(_config(engine), "0006")
    assert current_revision(engine) == "0006"
    assert not inspect(engine).has_table("feedback_marks")
    engine.dispose()


CHECKS = [
    _saved_replaced_and_deleted_with_the_case,
    _an_0006_catalog_upgrades_keeping_its_rows_and_downgrades,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.strip("_"))
def test_sqlite(check: Callable[[str], None], tmp_path: Path) -> None:
    check(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")


@pytest.mark.postgres
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.strip("_"))
def test_postgres(check: Callable[[str], None], postgres_url: str) -> None:  # noqa: F811
    check(postgres_url)
