"""What every page of the UI shares: its settings, an API client, and fetches cached across reruns."""

from __future__ import annotations

import sys
from collections.abc import Callable

import streamlit as st

from search_api.schemas import FilterOptions, HealthOut
from ui.client import ApiClient, ApiError
from ui.settings import UiSettings, load_settings


def page_settings() -> UiSettings:
    """The UI settings of this run: `-- --api-url URL` beats MEDCBIR_UI_API_URL, which beats the default."""
    return load_settings(sys.argv[1:])


TOKEN_KEY = "api_token"
USER_KEY = "api_user"


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
