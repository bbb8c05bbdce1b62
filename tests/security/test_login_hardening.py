"""Sign-in under attack: forged X-Forwarded-For, a flood of hashes, old tokens, names that differ in case."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from indexer.cli.serve import uvicorn_options
from indexer.governance import accounts
from indexer.governance.accounts import create_user, set_password
from indexer.governance.audit import audit_records
from search_api.app import create_app
from search_api.settings import ApiSettings
from tests.helpers import free_port
from tests.security.conftest import PASSWORD, USERS, SecuredApi


@contextmanager
def served_like_medcbir_serve(app: Any) -> Iterator[str]:
    """The app under uvicorn with exactly the options `medcbir serve` gives it."""
    options = {k: v for k, v in uvicorn_options("127.0.0.1", free_port()).items() if k != "factory"}
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{options['port']}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _logins_from(url: str, username: str, forwarded: list[str]) -> list[int]:
    return [
        httpx.post(
            f"{url}/token",
            data={"username": username, "password": "not the password"},
            headers={"X-Forwarded-For": ip},
        ).status_code
        for ip in forwarded
    ]


def _login_clients(api: SecuredApi, username: str) -> set[str | None]:
    _total, rows = audit_records(api.archive.catalog, username=username, action="login", limit=100)
    return {row.client for row in rows}


def test_a_rotating_x_forwarded_for_cannot_bypass_the_login_limit(secured_api: SecuredApi) -> None:
    create_user(secured_api.archive.catalog, "sec-xff-target", PASSWORD, "radiologist")
    app = create_app(archive=secured_api.archive, api_settings=ApiSettings())  # the default 10 a minute
    with served_like_medcbir_serve(app) as url:
        statuses = _logins_from(url, "sec-xff-target", [f"203.0.113.{i}" for i in range(12)])
    assert statuses == [401] * 10 + [429] * 2
    assert _login_clients(secured_api, "sec-xff-target") == {"127.0.0.1"}  # the peer, never a forged client


def test_x_forwarded_for_is_believed_from_trusted_proxies_only(secured_api: SecuredApi) -> None:
    create_user(secured_api.archive.catalog, "sec-xff-proxied", PASSWORD, "radiologist")
    app = create_app(archive=secured_api.archive, api_settings=ApiSettings(trusted_proxies="127.0.0.1"))  # type: ignore[arg-type]
    with served_like_medcbir_serve(app) as url:
        assert _logins_from(url, "sec-xff-proxied", ["198.51.100.7"]) == [401]
    assert _login_clients(secured_api, "sec-xff-proxied") == {"198.51.100.7"}


class CountingHasher:
    """The real argon2 hasher, counting how many of its hashes and checks run at the same time."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.running = 0
        self.most = 0
        self.calls = 0
        self.lock = threading.Lock()

    def _counted(self, work: Any, *args: Any) -> Any:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)  # widen the window in which overlapping hashes would be seen
            return work(*args)
        finally:
            with self.lock:
                self.running -= 1

    def verify(self, stored: str, password: str) -> Any:
        return self._counted(self.real.verify, stored, password)

    def hash(self, password: str) -> str:
        return str(self._counted(self.real.hash, password))

    def check_needs_rehash(self, stored: str) -> bool:
        return bool(self.real.check_needs_rehash(stored))


def test_concurrent_logins_never_run_more_hashes_than_the_cap(
    secured_api: SecuredApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = ApiSettings().password_hash_concurrency
    assert secured_api.app.state.api_settings.password_hash_concurrency == cap
    counting = CountingHasher(accounts._HASHER)
    monkeypatch.setattr(accounts, "_HASHER", counting)
    # Known users (right and wrong passwords) and unknown ones: every login costs one argon2 check.
    logins = [(USERS["radiologist"], PASSWORD), (USERS["admin"], "wrong password!")] + [
        (f"sec-nobody-{i}", "some password 123") for i in range(6)
    ]

    def sign_in(login: tuple[str, str]) -> int:
        return httpx.post(
            f"{secured_api.url}/token", data={"username": login[0], "password": login[1]}, timeout=60
        ).status_code

    with ThreadPoolExecutor(len(logins)) as pool:
        statuses = list(pool.map(sign_in, logins))
    assert statuses == [200] + [401] * 7
    assert counting.calls == len(logins)  # unknown users were hashed too (same cost, timing-safe)
    assert counting.most == cap  # capped, and the cap was reached: the logins did overlap


def test_tokens_issued_before_a_password_change_are_refused(secured_api: SecuredApi) -> None:
    api = secured_api
    create_user(api.archive.catalog, "sec-rotating", PASSWORD, "radiologist")
    login = {"username": "sec-rotating", "password": PASSWORD}
    old = httpx.post(f"{api.url}/token", data=login).json()["access_token"]
    assert httpx.get(f"{api.url}/me", headers={"Authorization": f"Bearer {old}"}).status_code == 200
    set_password(api.archive.catalog, "sec-rotating", "another long password 7")
    refused = httpx.get(f"{api.url}/me", headers={"Authorization": f"Bearer {old}"})
    assert refused.status_code == 401 and "password changed" in refused.json()["detail"]
    assert httpx.post(f"{api.url}/token", data=login).status_code == 401
    login["password"] = "another long password 7"
    new = httpx.post(f"{api.url}/token", data=login).json()["access_token"]
    assert httpx.get(f"{api.url}/me", headers={"Authorization": f"Bearer {new}"}).status_code == 200


def test_usernames_are_one_whatever_their_case(secured_api: SecuredApi) -> None:
    api = secured_api
    shouting = {"username": USERS["radiologist"].upper(), "password": PASSWORD, "role": "radiologist"}
    taken = httpx.post(f"{api.url}/users", json=shouting, headers=api.headers("admin"))
    assert taken.status_code == 409 and "whatever their case" in taken.json()["detail"]
    login = httpx.post(
        f"{api.url}/token", data={"username": USERS["radiologist"].upper(), "password": PASSWORD}
    )
    assert login.status_code == 200 and login.json()["username"] == USERS["radiologist"]
