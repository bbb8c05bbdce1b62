"""The UI's server: Streamlit's app.py plus the route that sets the sign-in cookie; `streamlit run ui/web_app.py`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("ui") is None:  # a checkout that is not installed: Streamlit adds ui/ only
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st
from starlette.routing import Route

from ui.session_cookie import HANDOFF_PATH, session_route

app = st.App(
    str(Path(__file__).resolve().with_name("app.py")),
    routes=[Route(HANDOFF_PATH, session_route, methods=["GET"])],
)
