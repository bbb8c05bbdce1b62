"""Property-based run of every operation of the OpenAPI schema against a live app, signed in as an admin:
whatever schemathesis sends, the API answers without a 5xx, and the answers come from past the sign-in
(most answers of each operation are not 401), so the fuzz reaches the routes' own code."""

from __future__ import annotations

import time
from collections import Counter
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
ADMIN = "fuzz-admin"
# POST /token answers 401 to the wrong credentials it is fuzzed with: that is its job, not a sign-in wall.
SIGN_IN = ("POST", "/token")
# Operations that revoke the token they are called with: each case gets a fresh token of its own.
TOKEN_REVOKING = {("POST", "/logout")}
# The whole run (about 25 operations x 15 cases) takes ~20 s on 2 cores; this bounds a slow drift.
RUN_BUDGET_S = 240


def sign_in(url: str) -> dict[str, str]:
    response = httpx.post(f"{url}/token", data={"username": ADMIN, "password": PASSWORD}, timeout=30)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Its own archive and server: the run may delete cases and create users."""
    archive, _files = build_secured_archive(tmp_path_factory.mktemp("fuzz"))
    create_user(archive.catalog, ADMIN, PASSWORD, "admin")
    app = create_app(archive=archive, api_settings=ApiSettings(login_attempts_per_minute=10_000))
    try:
        with serve_app(app) as url:
            yield url
    finally:
        archive.close()


def test_every_operation_is_fuzzed_past_sign_in_without_a_5xx(fuzzed_api: str) -> None:
    url = fuzzed_api
    headers = sign_in(url)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    keys = {(op.method.upper(), op.path) for op in operations}
    assert SIGN_IN in keys and keys >= TOKEN_REVOKING, sorted(keys)
    failures: list[str] = []
    statuses: dict[tuple[str, str], Counter[int]] = {}
    started = time.monotonic()

    for operation in operations:
        key = (operation.method.upper(), operation.path)
        counts = statuses.setdefault(key, Counter())

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            case = data.draw(operation.as_strategy())  # noqa: B023
            # disabling or demoting the fuzzing admin itself would turn the rest of the run into 401s
            parameters = case.path_parameters or {}
            if key == ("PATCH", "/users/{username}") and str(parameters.get("username", "")).lower() == ADMIN:  # noqa: B023
                parameters["username"] = "someone-else"
            case_headers = sign_in(url) if key in TOKEN_REVOKING else headers  # noqa: B023
            response = case.call(base_url=url, headers=case_headers, timeout=60)
            counts[response.status_code] += 1  # noqa: B023
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"
                )

        run()
    elapsed = time.monotonic() - started
    assert not failures, failures
    # Past the sign-in: every operation (but the sign-in itself) answered mostly something other than 401.
    walled = {
        f"{method} {path}": dict(counts)
        for (method, path), counts in statuses.items()
        if (method, path) != SIGN_IN and counts[401] * 2 >= sum(counts.values())
    }
    assert not walled, f"operations answered mostly 401, the fuzz never got past the sign-in: {walled}"
    assert all(sum(counts.values()) > 0 for counts in statuses.values()), statuses
    # The admin's token survived the run (nothing revoked it, nothing disabled the account).
    assert httpx.get(f"{url}/me", headers=headers).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200
    assert elapsed < RUN_BUDGET_S, f"the fuzz took {elapsed:.0f} s"
