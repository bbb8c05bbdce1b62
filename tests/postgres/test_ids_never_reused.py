"""Ids are never reused on PostgreSQL either: a deleted case's ids and history stay its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.indexer.catalog.id_reuse import check_ids_never_reused

pytestmark = pytest.mark.postgres


def test_deleted_case_ids_never_come_back_postgres(postgres_url: str, tmp_path: Path) -> None:
    check_ids_never_reused(tmp_path / "data", postgres_url)
