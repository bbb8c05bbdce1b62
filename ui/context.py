"""What every page of the UI shares: its settings, an API client, and fetches cached across reruns."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from search_api.schemas import FilterOptions, HealthOut
from ui.client import ApiClient, ApiError
from ui.settings import UiSettings, load_settings


def page_settings() -> UiSettings:
    """The UI settings of this run: `-- --api-url URL` beats MEDCBIR_UI_API_URL, which beats the default."""
    return load_settings(sys.argv[1:])


TOKEN_KEY = "api_token"
USER_KEY = "api_user"
READS_KEY = "session_reads"
READ_TTL_S = 60.0
T = TypeVar("T")


def session_token() -> str | None:
    """The bearer token of this browser session (None before signing in, or in development mode)."""
    token = st.session_state.get(TOKEN_KEY)
    return token if isinstance(token, str) and token else None


def api_client(settings: UiSettings) -> ApiClient:
    """A client of the API carrying this session's token."""
    return ApiClient(settings.api_url, timeout=settings.timeout, token=session_token())


# The token is part of each cache key: one user's cached images are never served to another session.
@st.cache_data(ttl=600, max_entries=2000, show_spinner=False)
def fetch_thumbnail(url: str, api_url: str, timeout: float, token: str | None = None) -> bytes:
    """Thumbnail bytes keyed by absolute URL, fetched server-side (the browser may not reach the API)."""
    with ApiClient(api_url, timeout=timeout, token=token) as client:
        return client.thumbnail(url)


@st.cache_data(ttl=600, max_entries=200, show_spinner=False)
def fetch_render(
    digest: str,
    center: float,
    width: float,
    api_url: str,
    timeout: float,
    _data: bytes,
    _name: str,
    token: str | None = None,
) -> bytes:
    """An uploaded image re-windowed by the API, cached by content digest and window."""
    with ApiClient(api_url, timeout=timeout, token=token) as client:
        return client.render(_data, _name, center, width)


@st.cache_data(ttl=600, max_entries=200, show_spinner=False)
def fetch_image_render(
    image_id: int, center: float, width: float, api_url: str, timeout: float, token: str | None = None
) -> bytes:
    """An archived image re-windowed by the API."""
    with ApiClient(api_url, timeout=timeout, token=token) as client:
        return client.render_image(image_id, center, width)


def thumbnail_fetcher(client: ApiClient, settings: UiSettings) -> Callable[[str], bytes]:
    """A function path -> PNG bytes, through the cache."""
    token = session_token()

    def fetch(path: str) -> bytes:
        return fetch_thumbnail(client.absolute_url(path), client.base_url, settings.timeout, token)

    return fetch


def load_status(client: ApiClient) -> tuple[HealthOut | None, ApiError | None, FilterOptions | None]:
    """(health, the error that stopped it, filter options); an API without /filters gives None options."""
    try:
        health = client.health()
    except ApiError as exc:
        return None, exc, None
    try:
        options = client.filters()
    except ApiError:
        options = None
    return health, None, options


def session_read(key: str, fetch: Callable[[], T], ttl_s: float = READ_TTL_S) -> T:
    """`fetch()` once per `ttl_s` in this browser session: Streamlit reruns the page on every click, and
    a read the API audits (the case listing) must not write a row per click, only when it is fetched."""
    reads: dict[str, tuple[float, object]] = st.session_state.setdefault(READS_KEY, {})
    now = time.monotonic()
    kept = reads.get(key)
    if kept is not None and now - kept[0] < ttl_s:
        return kept[1]  # type: ignore[return-value]
    value = fetch()
    reads[key] = (now, value)
    return value


def forget_reads(prefix: str) -> None:
    """Drop the session's kept reads whose key starts with `prefix` (after a change they would hide)."""
    reads: dict[str, tuple[float, object]] = st.session_state.get(READS_KEY, {})
    for key in [k for k in reads if k.startswith(prefix)]:
        del reads[key]
