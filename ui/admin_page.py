"""The admin page: user accounts (create, change role, disable, enable) and the audit trail."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui.client import ApiError
from ui.context import USER_KEY, api_client, page_settings

ROLES = ["radiologist", "admin"]


def users_section(client) -> None:  # type: ignore[no-untyped-def]
    st.subheader("Users")
    try:
        users = client.users()
    except ApiError as exc:
        st.error(f"Could not list users: {exc.message}")
        return
    st.dataframe(pd.DataFrame([u.model_dump() for u in users]), hide_index=True, key="users_table")
    with st.form("create_user", clear_on_submit=True):
        st.markdown("**Create a user**")
        username = st.text_input("Username", key="new_username")
        password = st.text_input("First password (12+ characters)", type="password", key="new_password")
        role = st.selectbox("Role", ROLES, key="new_role")
        if st.form_submit_button("Create user"):
            try:
                client.create_user(username.strip(), password, role)
                st.success(f"Created {role} {username.strip()}.")
            except ApiError as exc:
                st.error(f"Could not create the user: {exc.message}")
    names = [u.username for u in users]
    if not names:
        return
    st.markdown("**Change a user**")
    who = st.selectbox("User", names, key="change_user")
    left, middle, right = st.columns(3)
    new_role = left.selectbox("New role", ROLES, key="change_role")
    try:
        if left.button("Set role", key="set_role"):
            client.update_user(who, role=new_role)
            st.success(f"{who} is now {new_role}.")
        if middle.button("Disable", key="disable_user"):
            client.update_user(who, disabled=True)
            st.success(f"{who} is disabled.")
        if right.button("Enable", key="enable_user"):
            client.update_user(who, disabled=False)
            st.success(f"{who} is enabled.")
    except ApiError as exc:
        st.error(exc.message)


def audit_section(client) -> None:  # type: ignore[no-untyped-def]
    st.subheader("Audit trail")
    left, right = st.columns(2)
    user = left.text_input("User", key="audit_user")
    action = right.text_input("Action (search, view_case, login, ...)", key="audit_action")
    try:
        page = client.audit(limit=200, username=user.strip() or None, action=action.strip() or None)
    except ApiError as exc:
        st.error(f"Could not read the audit trail: {exc.message}")
        return
    st.caption(f"{len(page.events)} of {page.total} rows, newest first (times in UTC)")
    st.dataframe(pd.DataFrame([e.model_dump() for e in page.events]), hide_index=True, key="audit_table")


def main() -> None:
    """Draw the admin page once."""
    me = st.session_state.get(USER_KEY)
    st.title("Administration")
    if me is None or me.role != "admin":
        st.error("Only admins can see this page.")
        return
    with api_client(page_settings()) as client:
        users_section(client)
        st.divider()
        audit_section(client)


main()
