"""The sign-in cookie: the API token in a Secure, HttpOnly, SameSite=Strict cookie, so a reload stays signed in.

Streamlit talks to the browser over a websocket, which cannot set cookies, and its page scripts must
never hold the token. So the cookie is set by an HTTP route of the UI's own server (`ui/web_app.py`,
a `st.App` route): after signing in, the page shows an invisible image whose address carries a one-time
code (random, 30 s, single use); the route trades the code for a Set-Cookie of the token and forgets
it. The browser sends the cookie with every websocket handshake of this origin; `st.context.cookies`
reads it and the UI uses it as its bearer token. The cookie lives exactly as long as the token
(Max-Age = the token's expires_in), and the API checks it on every request like any bearer token, so
expiry, sign-out (POST /logout revokes it) and a password change or disabled account end both at once.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import streamlit as st
from starlette.requests import Request
from starlette.responses import Response

COOKIE_NAME = "medcbir_session"
HANDOFF_PATH = "/medcbir-session"
HANDOFF_TTL_S = 30.0
PENDING_KEY = "cookie_handoff"
REFUSED_KEY = "cookie_refused"  # a cookie this session has seen refused or signed out: never adopt it again
# A 1x1 transparent PNG: the image the page loads to set or clear the cookie.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@dataclass(frozen=True)
class Handoff:
    """What one code sets: the token and its lifetime in seconds, or None to clear the cookie."""

    token: str | None
    max_age: int
    created: float


class HandoffStore:
    """One-time codes, kept in this process's memory for `ttl_s`; taking a code removes it."""

    def __init__(self, ttl_s: float = HANDOFF_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._codes: dict[str, Handoff] = {}
        self._lock = threading.Lock()

    def issue(self, token: str | None, max_age: int) -> str:
        """A new code that sets `token` for `max_age` seconds (token None: clears the cookie)."""
        code = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._codes = {c: h for c, h in self._codes.items() if now - h.created < self.ttl_s}
            self._codes[code] = Handoff(token, max(0, int(max_age)), now)
        return code

    def take(self, code: str) -> Handoff | None:
        """The handoff of `code` if it is known and fresh; a code works once."""
        with self._lock:
            handoff = self._codes.pop(code, None)
        if handoff is None or time.monotonic() - handoff.created >= self.ttl_s:
            return None
        return handoff


HANDOFFS = HandoffStore()


async def session_route(request: Request) -> Response:
    """GET /medcbir-session?code=C: set (or clear) the sign-in cookie the code stands for; 404 otherwise."""
    handoff = HANDOFFS.take(request.query_params.get("code", ""))
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    if handoff is None:
        return Response(status_code=404, headers=headers)
    response = Response(PIXEL, media_type="image/png", headers=headers)
    if handoff.token is None or handoff.max_age <= 0:
        response.delete_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="strict")
    else:
        response.set_cookie(
            COOKIE_NAME,
            handoff.token,
            max_age=handoff.max_age,
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )
    return response


def request_cookies() -> Mapping[str, str]:
    """The cookies the browser sent when this session connected (none without a browser)."""
    try:
        return st.context.cookies
    except Exception:  # no browser behind this run (a bare script)
        return {}


def browser_token() -> str | None:
    """The token of the browser's sign-in cookie, unless this session already saw it refused."""
    token = request_cookies().get(COOKIE_NAME)
    if not token or token == st.session_state.get(REFUSED_KEY):
        return None
    return token


def keep_token(token: str, expires_in: int) -> None:
    """After signing in: set the cookie on the next run, for as long as the token is valid."""
    st.session_state[PENDING_KEY] = HANDOFFS.issue(token, expires_in)


def drop_token(token: str | None) -> None:
    """After signing out or a refused token: clear the cookie on the next run, and never adopt it again."""
    if token:
        st.session_state[REFUSED_KEY] = token
    st.session_state[PENDING_KEY] = HANDOFFS.issue(None, 0)


def render_cookie_handoff() -> None:
    """Show the invisible image that makes the browser fetch a pending code's cookie (once)."""
    code = st.session_state.pop(PENDING_KEY, None)
    if isinstance(code, str):
        st.html(
            f'<img src="{HANDOFF_PATH}?code={code}" alt="" width="1" height="1" '
            'style="position:absolute;opacity:0;pointer-events:none">'
        )
