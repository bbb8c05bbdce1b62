"""Authentication, the role x route policy, the audit trail of every request, and security headers.

Each route declares who may call it beside itself (`dependencies=[allow(RADIOLOGY, "search")]`);
create_app refuses to start when a route declares nothing. One ASGI middleware does the rest before
the route reads the body: it finds the route, reads its rule (a route without one is refused: fail
closed), authenticates the caller (a bearer JWT from POST /token, or an `X-API-Key` header; never a
query string), checks the role, writes exactly one audit row per request to an audited route
(denials included; an action that changes the archive writes its intent first, "started", and its
outcome after, linked by the request id), and adds
`X-Content-Type-Options: nosniff`, `Cache-Control: no-store` and an `X-Request-ID` to the answer.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import threading
import time
import uuid
from collections import defaultdict, deque
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.catalog import Catalog
from indexer.governance.accounts import Account, account_for_api_key, get_account, is_token_revoked
from indexer.governance.audit import CHANGING_ACTIONS, STARTED, record_audit
from search_api.access import Principal, Rule, documentation_paths, find_route, route_rule

log = logging.getLogger(__name__)

JWT_ALGORITHM = "HS256"  # pinned: tokens are only ever verified with this algorithm
JWT_AUDIENCE = "medcbir-api"
JWT_ISSUER = "medcbir"
API_KEY_HEADER = "x-api-key"


DEV_PRINCIPAL = Principal(username="dev", role="admin", auth="dev")


class AuthError(Exception):
    """Credentials missing or not acceptable; the message is safe to send back."""


# -- tokens --------------------------------------------------------------------------------------


def issue_token(secret: bytes, account: Account, minutes: int, now: datetime | None = None) -> str:
    """A signed JWT naming the user; the role is re-read from the catalog on every request."""
    issued = now or datetime.now(UTC)
    claims = {
        "sub": account.username,
        "role": account.role,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()),
        "exp": int((issued + timedelta(minutes=minutes)).timestamp()),
        "jti": secrets.token_hex(8),
        "gen": account.token_generation,  # a password change bumps the account's: older tokens fail
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def token_subject(secret: bytes, token: str) -> str:
    """The username of a valid token; anything else (forged, expired, other algorithm, alg none) raises."""
    return str(token_claims(secret, token)["sub"])


def token_claims(secret: bytes, token: str) -> dict[str, Any]:
    """The claims of a valid token (sub, jti and exp present); anything else raises AuthError."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            audience=JWT_AUDIENCE,
            issuer=JWT_ISSUER,
            options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]},
            leeway=5,
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("the token has expired; sign in again (POST /token)") from exc
    except jwt.PyJWTError as exc:
        raise AuthError("the token is not valid; sign in again (POST /token)") from exc
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthError("the token names no user")
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise AuthError("the token has no id; sign in again (POST /token)")
    return claims


# -- login rate limit ---------------------------------------------------------------------------


class LoginLimiter:
    """At most `per_minute` sign-in attempts per (client address, username) in any 60 s window."""

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self._attempts: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, client: str, username: str) -> float | None:
        """None when this attempt may go ahead (and counts it); else seconds to wait."""
        now = time.monotonic()
        with self._lock:
            attempts = self._attempts[(client, username.casefold())]
            while attempts and now - attempts[0] > self.window_s:
                attempts.popleft()
            if len(attempts) >= self.per_minute:
                return self.window_s - (now - attempts[0])
            attempts.append(now)
            return None


# -- the middleware ------------------------------------------------------------------------------


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def audit_object(path_params: dict[str, Any]) -> str | None:
    """The audited object of a request from its path: case:N, image:N or user:NAME."""
    for key, kind in (("case_id", "case"), ("image_id", "image"), ("username", "user")):
        if key in path_params:
            return f"{kind}:{str(path_params[key])[:64]}"
    return None


def outcome_of(status: int) -> str:
    """How an audited request ended."""
    if status < 400:
        return "success"
    if status in (401, 403, 429):
        return "denied"
    if status >= 500:
        return "error"
    return "rejected"


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_CREDENTIAL_PARAMS = ("api_key", "apikey", "key", "token", "access_token")


class SecurityMiddleware:
    """Authenticate, authorize (each route's `allow`), audit and add security headers; see the module docstring."""

    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming_id = headers.get("x-request-id", "")
        request_id = incoming_id if _REQUEST_ID.match(incoming_id) else uuid.uuid4().hex
        client = scope["client"][0] if scope.get("client") else None
        scope.setdefault("state", {})
        scope["state"]["request_id"] = request_id
        route, path_params = find_route(self.fastapi_app.router.routes, scope)
        name = getattr(route, "name", None)
        rule = route_rule(route, documentation_paths(self.fastapi_app)) if route is not None else None
        audited = {"done": False}
        principal: Principal | None = None

        async def audit(status: int) -> None:
            # Written before the answer leaves, so a client that has its answer finds its audit row.
            if rule is not None and rule.action and not audited["done"]:
                audited["done"] = True
                await self._audit(rule, principal, scope, path_params, status, client, request_id)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                await audit(int(message["status"]))
                extra = [*_SECURITY_HEADERS, (b"x-request-id", request_id.encode())]
                if rule is None or not rule.public:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if route is None:  # unknown path: the router's 404, nothing to audit
            await self.app(scope, receive, send_with_headers)
            return
        if rule is None:  # a route nobody classified: refuse rather than guess
            log.error("route %r declares no access rule; refusing it", name)
            await self._deny(scope, receive, send_with_headers, 403, "this route is not classified")
            return

        detail = ""
        if not rule.public:
            try:
                principal = await run_in_threadpool(self._authenticate, scope, headers)
                if principal.role not in rule.roles:
                    detail = f"the {principal.role} role may not do this ({rule.action})"
            except AuthError as exc:
                detail = str(exc)
            if detail:
                await self._deny(scope, receive, send_with_headers, 401 if principal is None else 403, detail)
                return
            scope["state"]["principal"] = principal
        if rule.action in CHANGING_ACTIONS:  # the intent first: a killed request leaves a visible row
            await self._audit(rule, principal, scope, path_params, None, client, request_id, STARTED)
        try:
            await self.app(scope, receive, send_with_headers)
        except BaseException:
            await audit(500)
            raise

    def _authenticate(self, scope: Scope, headers: dict[str, str]) -> Principal:
        state = self.fastapi_app.state
        settings = state.api_settings
        catalog: Catalog = state.searcher.archive.catalog
        query = scope.get("query_string", b"").decode("latin-1").lower()
        if any(re.search(rf"(^|&){p}=", query) for p in _CREDENTIAL_PARAMS):
            raise AuthError("credentials in the URL are refused: send Authorization: Bearer or X-API-Key")
        authorization = headers.get("authorization", "")
        api_key = headers.get(API_KEY_HEADER, "")
        if authorization[:7].lower() == "bearer " and authorization[7:].strip():
            claims = token_claims(state.jwt_secret, authorization[7:].strip())
            if is_token_revoked(catalog, claims["jti"]):
                raise AuthError("this token was signed out (POST /logout); sign in again (POST /token)")
            account = get_account(catalog, claims["sub"])
            if account is None or account.disabled:
                raise AuthError("the account of this token is unknown or disabled")
            if claims.get("gen", 0) != account.token_generation:
                raise AuthError(
                    "the password changed after this token was issued; sign in again (POST /token)"
                )
            return Principal(account.username, account.role, "token", claims["jti"], int(claims["exp"]))
        if api_key:
            account = account_for_api_key(catalog, api_key.strip())
            if account is None:
                raise AuthError("the API key is not valid")
            return Principal(account.username, account.role, "api_key")
        if settings.auth_disabled:
            server = scope.get("server")
            client = scope.get("client")
            if is_loopback(server[0] if server else None) and is_loopback(client[0] if client else None):
                return DEV_PRINCIPAL
            raise AuthError("development mode (MEDCBIR_API_AUTH_DISABLED) only serves loopback clients")
        raise AuthError("sign in first: POST /token, then send Authorization: Bearer <token>")

    async def _deny(self, scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
        await JSONResponse({"detail": detail}, status_code=status, headers=extra)(scope, receive, send)

    async def _audit(
        self,
        rule: Rule,
        principal: Principal | None,
        scope: Scope,
        path_params: dict[str, Any],
        status: int | None,
        client: str | None,
        request_id: str,
        outcome: str | None = None,
    ) -> None:
        state = scope["state"]
        username = principal.username if principal else state.get("audit_username")
        role = principal.role if principal else state.get("audit_role")
        try:
            await run_in_threadpool(
                lambda: record_audit(
                    self.fastapi_app.state.searcher.archive.catalog,
                    action=state.get("audit_action") or rule.action or "request",
                    outcome=outcome or outcome_of(status or 500),
                    username=username,
                    role=role,
                    object=state.get("audit_object") or audit_object(path_params),
                    status=status,
                    client=client,
                    request_id=request_id,
                )
            )
        except Exception:  # an audit failure is loud, but never takes patient data with it
            log.exception("could not write the audit row of request %s", request_id)
