"""Fixtures of the tests marked `pacs`: a real Orthanc on loopback, emptied before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pacs.orthanc import OrthancServer, running_orthanc


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is a `pacs` test (so `-m "not pacs"` leaves them out)."""
    for item in items:
        if "/tests/pacs/" in str(item.path):
            item.add_marker(pytest.mark.pacs)


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the session (its own storage in a temporary folder)."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture()
def orthanc(orthanc_server: OrthancServer) -> OrthancServer:
    """The session's Orthanc with nothing stored in it."""
    orthanc_server.clear()
    return orthanc_server
