"""Signing in: the login form, the session's token (kept across reloads by the sign-in cookie), who is signed in."""

from __future__ import annotations

import contextlib

import streamlit as st

from search_api.schemas import MeOut
from ui.client import ApiClient, ApiError
from ui.context import TOKEN_KEY, USER_KEY, api_client, page_settings, session_token
from ui.session_cookie import browser_token, drop_token, keep_token


def sign_out() -> None:
    """Revoke this session's token at the API, forget it and everything fetched with it, clear the cookie."""
    token = session_token()
    if token is not None:
        # Already expired or revoked, or the API is down: the session and the cookie go anyway.
        with api_client(page_settings()) as client, contextlib.suppress(ApiError):
            client.logout()
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    drop_token(token)


def current_user() -> MeOut | None:
    """Who this session is signed in as (checked with the API on each run: expired or revoked tokens
    sign out). A new session (a reload) takes its token from the sign-in cookie."""
    settings = page_settings()
    if session_token() is None and (kept := browser_token()) is not None:
        st.session_state[TOKEN_KEY] = kept
    with api_client(settings) as client:
        try:
            me = client.me()
        except ApiError as exc:
            if exc.status_code == 401:
                refused = st.session_state.pop(TOKEN_KEY, None)
                st.session_state.pop(USER_KEY, None)
                if refused is not None:
                    drop_token(refused)
                return None
            raise
    st.session_state[USER_KEY] = me
    return me


def login_form() -> None:
    """The sign-in form; on success the token is kept in this session's state and in the sign-in cookie."""
    settings = page_settings()
    st.title("Sign in")
    st.caption("medcbir: similar case search. Ask an administrator for an account.")
    with st.form("login", clear_on_submit=False):
        username = st.text_input("Username", key="login_username")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    with ApiClient(settings.api_url, timeout=settings.timeout) as client:
        try:
            token = client.login(username.strip(), password)
        except ApiError as exc:
            if exc.status_code == 401:
                st.error("Wrong username or password.")
            else:
                code = f" (HTTP {exc.status_code})" if exc.status_code else ""
                st.error(f"Could not sign in{code}: {exc.message}")
            return
    st.session_state.pop("login_password", None)
    st.session_state[TOKEN_KEY] = token.access_token
    keep_token(token.access_token, token.expires_in)
    st.rerun()


def signed_in_user() -> MeOut | None:
    """The signed-in user, or None after drawing the login form (the page should stop)."""
    try:
        me = current_user()
    except ApiError as exc:
        st.error(f"Cannot reach the search API: {exc.message}")
        return None
    if me is None:
        login_form()
    return me


def render_account(me: MeOut) -> None:
    """Sidebar block: who is signed in, with a sign-out button."""
    mode = " (development mode: no sign-in)" if me.auth == "dev" else ""
    st.caption(f"Signed in as **{me.role}**{mode}")
    st.text(me.username)
    if me.auth != "dev" and st.button("Sign out", key="sign_out"):
        sign_out()
        st.rerun()
