"""Authentication and authorization: every route classified, one role x route table, bad tokens refused."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from indexer.governance.accounts import Account, create_user, get_account, set_disabled
from search_api.access import app_routes, documentation_paths, route_rule
from search_api.app import create_app
from search_api.security import issue_token
from search_api.settings import ApiSettings
from tests.helpers import serve_app
from tests.security.conftest import LOGIN_LIMIT, PASSWORD, USERS, SecuredApi, build_secured_archive

# The routes anyone may call without credentials. A new route fails test_every_route_... until it
# is classified here (public) or in ROLE_MATRIX (protected).
ALLOW_LIST = {
    ("GET", "/health"),
    ("POST", "/token"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}


def _file(api: SecuredApi, index: int = 0) -> dict[str, Any]:
    return {"files": {"file": ("q.dcm", api.files[index].read_bytes())}, "data": {"k": "2"}}


def _stored_files_zip(api: SecuredApi) -> dict[str, Any]:
    """The archive's own files, zipped: an admin ingest of them adds nothing (all already stored)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in api.files:
            archive.writestr(path.name, path.read_bytes())
    return {"files": {"archive": ("stored.zip", buffer.getvalue())}}


Request = Callable[[SecuredApi], dict[str, Any]]
_INSTANCE_IN_NO_PACS = {
    "pacs": "nope",
    "study_instance_uid": "1",
    "series_instance_uid": "2",
    "sop_instance_uid": "3",
}
# (method, path, request, status for a radiologist, status for an admin). Anonymous callers get 401
# everywhere; service accounts (API key, radiologist role) get the radiologist column.
ROLE_MATRIX: list[tuple[str, str, Request, int, int]] = [
    ("GET", "/me", lambda a: {}, 200, 200),
    ("POST", "/search", _file, 200, 200),
    ("POST", "/search/by-image/{image_id}", lambda a: {"data": {"k": "2"}}, 200, 200),
    ("POST", "/search/refine", lambda a: {"data": {"image_id": "1", "positive": "2", "k": "2"}}, 200, 200),
    ("POST", "/search/series", lambda a: {"files": {"files": ("s.dcm", a.files[0].read_bytes())}}, 200, 200),
    # by reference to a PACS instance: the test archive has no PACS configured
    ("POST", "/search/by-instance", lambda a: {"data": _INSTANCE_IN_NO_PACS}, 404, 404),
    ("POST", "/search/series/by-pacs", lambda a: {"data": _INSTANCE_IN_NO_PACS}, 404, 404),
    ("POST", "/render", _file, 200, 200),
    ("GET", "/images/{image_id}/render", lambda a: {}, 200, 200),
    ("GET", "/images/{image_id}/thumbnail", lambda a: {}, 200, 200),
    ("GET", "/cases", lambda a: {}, 200, 200),
    ("POST", "/cases", lambda a: {"data": {"report": "no images"}}, 422, 422),
    ("GET", "/filters", lambda a: {}, 200, 200),
    ("GET", "/cases/{case_id}", lambda a: {}, 200, 200),
    ("GET", "/cases/{case_id}/history", lambda a: {}, 200, 200),
    ("GET", "/cases/{case_id}/feedback-marks", lambda a: {}, 200, 200),
    (
        "PUT",
        "/cases/{case_id}/feedback-marks",
        lambda a: {"json": {"origin": "image:1"}, "missing": True},
        404,
        404,
    ),
    # explanations: nobody's query is an unknown query; the test archive's encoder has no feature maps
    ("GET", "/queries/{query_id}/similarity/{image_id}", lambda a: {}, 404, 404),
    ("GET", "/queries/{query_id}/gradcam", lambda a: {}, 404, 404),
    ("GET", "/images/{image_id}/similarity/{other_id}", lambda a: {}, 409, 409),
    ("GET", "/images/{image_id}/gradcam", lambda a: {"missing": True}, 404, 404),
    # the compare viewer's values: a stored image's pixels; nobody's query is an unknown query
    ("GET", "/images/{image_id}/pixels", lambda a: {}, 200, 200),
    ("GET", "/queries/{query_id}/pixels", lambda a: {}, 404, 404),
    ("GET", "/images/{image_id}/similarity/{other_id}/maps", lambda a: {}, 409, 409),
    ("GET", "/queries/{query_id}/similarity/{image_id}/maps", lambda a: {}, 404, 404),
    ("PATCH", "/cases/{case_id}", lambda a: {"json": {}, "missing": True}, 404, 404),
    ("DELETE", "/cases/{case_id}", lambda a: {"missing": True}, 403, 404),
    ("GET", "/users", lambda a: {}, 403, 200),
    ("POST", "/users", lambda a: {"json": {}}, 403, 422),
    ("PATCH", "/users/{username}", lambda a: {"json": {"role": "admin"}, "missing": True}, 403, 404),
    ("GET", "/audit", lambda a: {}, 403, 200),
    # signs out a fresh token of the caller, never the shared session tokens
    ("POST", "/logout", lambda a: {"fresh_token": True}, 200, 200),
    ("POST", "/admin/ingest", _stored_files_zip, 403, 201),
    ("POST", "/admin/rebuild-index", lambda a: {}, 403, 200),
]


def _url(api: SecuredApi, path: str, missing: bool = False) -> str:
    params = {"image_id": "1", "case_id": "1", "username": USERS["radiologist"]}
    params |= {"other_id": "2", "query_id": "0" * 32}
    if missing:
        params = {"image_id": "999999", "case_id": "999999", "username": "nobody-at-all"}
        params |= {"other_id": "999998", "query_id": "f" * 32}
    return api.url + path.format(**params)


def _call(
    api: SecuredApi, method: str, path: str, request: Request, headers: dict[str, str]
) -> httpx.Response:
    kwargs = dict(request(api))
    missing = kwargs.pop("missing", False)
    if kwargs.pop("fresh_token", False) and headers.get("Authorization", "").startswith("Bearer "):
        subject = jwt.decode(headers["Authorization"][7:], options={"verify_signature": False})["sub"]
        account = get_account(api.archive.catalog, subject)
        assert account is not None
        headers = {"Authorization": f"Bearer {issue_token(api.app.state.jwt_secret, account, 5)}"}
    return httpx.request(method, _url(api, path, missing), headers=headers, timeout=60, **kwargs)


def _app_routes(api: SecuredApi) -> set[tuple[str, str]]:
    routes = set()
    for route, _ in app_routes(api.app.routes):
        for method in getattr(route, "methods", None) or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method, getattr(route, "path", "")))
    return routes


def test_every_route_without_credentials_is_401_except_the_allow_list(secured_api: SecuredApi) -> None:
    routes = _app_routes(secured_api)
    assert routes >= ALLOW_LIST, "the allow-list names a route the app no longer has"
    classified = ALLOW_LIST | {(m, p) for m, p, *_ in ROLE_MATRIX}
    assert routes == classified, f"unclassified routes: {sorted(routes - classified)}"
    for method, path in sorted(routes):
        response = httpx.request(method, _url(secured_api, path), timeout=60)
        if (method, path) in ALLOW_LIST:
            assert response.status_code != 401, (method, path)
        else:
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    # and every route declares its own rule: public exactly for the allow-list
    public = documentation_paths(secured_api.app)
    for route, _ in app_routes(secured_api.app.routes):
        rule = route_rule(route, public)
        assert rule is not None, getattr(route, "path", route)
        methods = {m for m in getattr(route, "methods", None) or () if m not in ("HEAD", "OPTIONS")}
        assert rule.public == all((m, getattr(route, "path", "")) in ALLOW_LIST for m in methods)


@pytest.mark.parametrize(("method", "path", "request_", "radiologist", "admin"), ROLE_MATRIX)
def test_role_matrix(
    secured_api: SecuredApi, method: str, path: str, request_: Request, radiologist: int, admin: int
) -> None:
    api = secured_api
    expected = {
        "anonymous": ({}, 401),
        "radiologist": (api.headers("radiologist"), radiologist),
        "service": ({"X-API-Key": api.service_key}, radiologist),
        "admin": (api.headers("admin"), admin),
    }
    for who, (headers, status) in expected.items():
        response = _call(api, method, path, request_, headers)
        assert response.status_code == status, (who, method, path, response.text)


def test_api_keys_are_refused_in_the_query_string(secured_api: SecuredApi) -> None:
    url = f"{secured_api.url}/cases"
    assert httpx.get(url, params={"api_key": secured_api.service_key}).status_code == 401
    response = httpx.get(
        url, params={"api_key": secured_api.service_key}, headers=secured_api.headers("admin")
    )
    assert response.status_code == 401 and "URL" in response.json()["detail"]
    assert httpx.get(url, headers={"X-API-Key": "mcb_not-a-real-key"}).status_code == 401


def _forge(claims: dict[str, Any], key: bytes | str, algorithm: str) -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def test_forged_expired_wrongly_signed_and_alg_none_tokens_are_refused(secured_api: SecuredApi) -> None:
    api = secured_api
    secret: bytes = api.app.state.jwt_secret
    now = datetime.now(UTC)
    admin = get_account(api.archive.catalog, USERS["admin"])
    assert admin is not None
    good = issue_token(secret, admin, 5)
    assert httpx.get(f"{api.url}/audit", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    claims = jwt.decode(good, options={"verify_signature": False})
    header, payload, signature = good.split(".")
    other = _forge(claims, b"x" * 32, "HS256")
    tampered_payload = jwt.encode({**claims, "sub": USERS["radiologist"]}, b"y" * 32, algorithm="HS256")
    bad_tokens = {
        "forged with another secret": other,
        "expired": issue_token(secret, admin, 5, now=now - timedelta(hours=2)),
        "wrong signature": f"{header}.{payload}.{signature[::-1]}",
        "payload swapped under the old signature": f"{header}.{tampered_payload.split('.')[1]}.{signature}",
        "alg none": _forge(claims, "", "none"),
        "alg none, no signature": ".".join(_forge(claims, "", "none").split(".")[:2]) + ".",
        "HS512 with the right secret (algorithm not pinned)": _forge(claims, secret, "HS512"),
        "no expiry": _forge({k: v for k, v in claims.items() if k != "exp"}, secret, "HS256"),
        "other audience": _forge({**claims, "aud": "someone-else"}, secret, "HS256"),
        "unknown user": issue_token(secret, Account(0, "ghost", "admin", False, False, now), 5),
        "garbage": "not.a.token",
    }
    for what, token in bad_tokens.items():
        response = httpx.get(f"{api.url}/audit", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, what


def test_disabled_users_lose_access_at_once(secured_api: SecuredApi) -> None:
    api = secured_api
    headers = api.headers("disabled")
    assert httpx.get(f"{api.url}/me", headers=headers).status_code == 200
    set_disabled(api.archive.catalog, USERS["disabled"], True)
    assert httpx.get(f"{api.url}/me", headers=headers).status_code == 401
    login = {"username": USERS["disabled"], "password": PASSWORD}
    assert httpx.post(f"{api.url}/token", data=login).status_code == 401


def test_login_is_rate_limited(secured_api: SecuredApi) -> None:
    create_user(secured_api.archive.catalog, "sec-ratelimited", PASSWORD, "radiologist")
    wrong = {"username": "sec-ratelimited", "password": "not the password"}
    statuses = [httpx.post(f"{secured_api.url}/token", data=wrong).status_code for _ in range(LOGIN_LIMIT)]
    assert statuses == [401] * LOGIN_LIMIT
    right = {"username": "sec-ratelimited", "password": PASSWORD}
    response = httpx.post(f"{secured_api.url}/token", data=right)
    assert response.status_code == 429 and int(response.headers["retry-after"]) > 0


def test_patient_data_responses_carry_security_headers_and_cors_is_closed(secured_api: SecuredApi) -> None:
    api = secured_api
    for path in ("/cases/1", "/images/1/thumbnail", "/cases"):
        response = httpx.get(
            f"{api.url}{path}", headers={**api.headers("radiologist"), "Origin": "https://evil.example"}
        )
        assert response.status_code == 200
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        assert len(response.headers["x-request-id"]) >= 8
        assert "access-control-allow-origin" not in response.headers
    preflight = httpx.options(
        f"{api.url}/cases",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_upload_pixel_and_k_limits(secured_api: SecuredApi) -> None:
    import io

    from PIL import Image

    api = secured_api
    headers = api.headers("radiologist")
    big = b"\0" * 400_000
    response = httpx.post(f"{api.url}/search", files={"file": ("big", big)}, headers=headers)
    assert response.status_code == 413
    buffer = io.BytesIO()
    Image.new("L", (300, 300), 7).save(buffer, format="PNG")  # 90,000 pixels > 60,000
    response = httpx.post(f"{api.url}/search", files={"file": ("p.png", buffer.getvalue())}, headers=headers)
    assert response.status_code == 413, response.text
    response = httpx.post(f"{api.url}/search", **_file(api) | {"data": {"k": "21"}}, headers=headers)
    assert response.status_code == 422 and "maximum" in response.json()["detail"]
    not_image = httpx.post(f"{api.url}/search", files={"file": ("x.dcm", b"hello" * 50)}, headers=headers)
    assert not_image.status_code == 415


def test_the_server_refuses_non_loopback_without_authentication(tmp_path) -> None:  # type: ignore[no-untyped-def]
    archive, _files = build_secured_archive(tmp_path)
    try:
        dev_everywhere = create_app(
            archive=archive, api_settings=ApiSettings(host="0.0.0.0", auth_disabled=True)
        )
        with pytest.raises(RuntimeError, match="MEDCBIR_API_AUTH_DISABLED"), TestClient(dev_everywhere):
            pass
        no_accounts = create_app(archive=archive, api_settings=ApiSettings(host="0.0.0.0"))
        with pytest.raises(RuntimeError, match="users create --admin"), TestClient(no_accounts):
            pass
        # Development mode on loopback: loopback clients need no sign-in, others are still refused.
        dev = create_app(archive=archive, api_settings=ApiSettings(auth_disabled=True))
        with TestClient(dev) as client:  # TestClient's client address is "testclient", not loopback
            assert client.get("/cases").status_code == 401
        with serve_app(create_app(archive=archive, api_settings=ApiSettings(auth_disabled=True))) as url:
            me = httpx.get(f"{url}/me").json()
            assert me == {"username": "dev", "role": "admin", "auth": "dev"}
        # With an admin account the server may bind anywhere.
        create_user(archive.catalog, "first-admin", PASSWORD, "admin")
        with TestClient(create_app(archive=archive, api_settings=ApiSettings(host="0.0.0.0"))) as client:
            assert client.get("/cases").status_code == 401
    finally:
        archive.close()
