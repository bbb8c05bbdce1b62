"""The medcbir Streamlit app: sign in, then search, case and admin pages over the HTTP API (served by ui/web_app.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _ensure_importable() -> None:
    """Let `streamlit run ui/app.py` work from a checkout that is not installed (Streamlit adds ui/ only)."""
    if importlib.util.find_spec("ui") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


_ensure_importable()

import streamlit as st  # noqa: E402

# Our own fixed CSS (no data in it): tight margins and a smaller title, so that at 1366x768 the first row
# of neighbour cards is above the fold; compact plain-text blocks and padding on the cards (ui/hits.py).
PAGE_CSS = """
<style>
[data-testid="stMainBlockContainer"] { padding: 3rem 1.25rem 2rem 1.25rem; }
[data-testid="stMainBlockContainer"] h1 { font-size: 1.8rem; padding: 0.25rem 0 0.5rem 0; }
[class*="st-key-hit_card_"] { padding: 0.4rem !important; gap: 0.5rem !important; }
[data-testid="stText"] { font-size: 0.88rem; line-height: 1.35; }
[data-testid="stVerticalBlockBorderWrapper"] [data-testid="stText"] { font-size: 0.82rem; }
[data-testid="stAppDeployButton"] { display: none; }
</style>
"""

st.set_page_config(page_title="medcbir: similar case search", page_icon="🩻", layout="wide")
st.markdown(PAGE_CSS, unsafe_allow_html=True)
from ui.login import render_account, signed_in_user  # noqa: E402
from ui.session_cookie import render_cookie_handoff  # noqa: E402

me = signed_in_user()
render_cookie_handoff()  # after signing in or out: the browser fetches its cookie (HttpOnly) once
if me is not None:
    pages = [
        st.Page("search_page.py", title="Search", icon=":material/search:", default=True),
        st.Page("case_page.py", title="Case", icon=":material/folder_open:", url_path="case"),
        st.Page("series_page.py", title="Series", icon=":material/stacks:", url_path="series"),
    ]
    if me.role == "admin":
        pages.append(
            st.Page("admin_page.py", title="Admin", icon=":material/shield_person:", url_path="admin")
        )
    with st.sidebar:
        render_account(me)
    st.navigation(pages, position="top").run()
