"""A real PostgreSQL server for tests marked `postgres`: required when MEDCBIR_TEST_POSTGRES_URL is set, else skipped."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# .ci/run starts a server on loopback and exports this; the default matches what it creates.
DEFAULT_URL = "postgresql+psycopg://medcbir:medcbir@127.0.0.1:5432/medcbir_test"


def _reachable(url: str) -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'psycopg is not installed (pip install "medcbir[postgres]")'
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as exc:
        return (
            f"no PostgreSQL server at {engine.url.render_as_string(hide_password=True)}: {type(exc).__name__}"
        )
    finally:
        engine.dispose()
    return None


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """The test database, emptied before each test (it is dedicated to the tests)."""
    required = "MEDCBIR_TEST_POSTGRES_URL" in os.environ
    url = os.environ.get("MEDCBIR_TEST_POSTGRES_URL", DEFAULT_URL)
    reason = _reachable(url)
    if reason:
        if required:  # CI said a server is there: its absence is a failure, never a silent skip
            pytest.fail(f"MEDCBIR_TEST_POSTGRES_URL is set but {reason}")
        pytest.skip(reason)
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    yield url
