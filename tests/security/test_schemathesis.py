"""Property-based run of every operation of the OpenAPI schema against a live app with an admin token:
whatever schemathesis sends, the API answers without a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from indexer.governance.accounts import create_user  # noqa: E402
from search_api.app import create_app  # noqa: E402
from search_api.settings import ApiSettings  # noqa: E402
from tests.helpers import serve_app  # noqa: E402
from tests.security.conftest import PASSWORD, build_secured_archive  # noqa: E402

EXAMPLES_PER_OPERATION = 15


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """Its own archive and server: the run may delete cases and create users."""
    archive, _files = build_secured_archive(tmp_path_factory.mktemp("fuzz"))
    create_user(archive.catalog, "fuzz-admin", PASSWORD, "admin")
    app = create_app(archive=archive, api_settings=ApiSettings(login_attempts_per_minute=10_000))
    try:
        with serve_app(app) as url:
            token = httpx.post(f"{url}/token", data={"username": "fuzz-admin", "password": PASSWORD}).json()
            yield url, {"Authorization": f"Bearer {token['access_token']}"}
    finally:
        archive.close()


def test_no_5xx_from_any_operation(fuzzed_api: tuple[str, dict[str, str]]) -> None:
    url, headers = fuzzed_api
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    failures: list[str] = []

    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            case = data.draw(operation.as_strategy())  # noqa: B023
            response = case.call(base_url=url, headers=headers, timeout=60)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"
                )

        run()
    assert not failures, failures
    assert httpx.get(f"{url}/health").status_code == 200
