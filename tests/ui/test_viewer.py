"""The compare viewer's Python side: the shipped bundle, Compare buttons, the window a drag asks for, events."""

from __future__ import annotations

import tomllib
from pathlib import Path

from streamlit.testing.v1 import AppTest

from ui.viewer import BUILD
from ui.viewer.panel import new_events

ROOT = Path(__file__).resolve().parents[2]


def test_the_built_bundle_is_in_the_package() -> None:
    # A fresh clone runs the viewer without node: the build is committed and declared as package data.
    assert (BUILD / "index.html").is_file() and (BUILD / "viewer.css").is_file()
    bundle = BUILD / "viewer.js"
    assert 500_000 < bundle.stat().st_size < 6 * 1024 * 1024  # Cornerstone3D is in it, nothing runaway
    assert "viewer.js" in (BUILD / "index.html").read_text()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert data["ui.viewer"] == ["build/*"]


def test_new_events_are_the_unseen_ones_oldest_first() -> None:
    value = {
        "seq": 30,
        "action": "next",
        "events": [
            {"seq": 10, "action": "frame"},
            {"seq": 20, "action": "window"},
            {"seq": 30, "action": "next"},
        ],
    }
    assert [e["seq"] for e in new_events(value, 0)] == [10, 20, 30]
    assert [e["action"] for e in new_events(value, 10)] == [
        "window",
        "next",
    ]  # a frame report cannot hide "next"
    assert new_events(value, 30) == []
    assert new_events(None, 0) == []
    assert [e["seq"] for e in new_events({"seq": 5, "action": "prev"}, 0)] == [5]  # a single event
    assert new_events({"events": [{"seq": "x"}, "junk"]}, 0) == []  # what the page sends is checked


def _cards_app() -> None:
    import streamlit as st

    from tests.ui.conftest import contract_hit, make_png
    from ui.hits import render_hits
    from ui.viewer.panel import RANK_KEY, open_compare

    seen: list[str] = []

    def windowed(hit):  # type: ignore[no-untyped-def]
        seen.append(f"hit {hit.rank}")
        return make_png((20, 20))

    render_hits(
        [contract_hit(0), contract_hit(1)],
        lambda _url: make_png((20, 20)),
        link=False,
        hit_thumbnail=windowed,
        compare=open_compare,
    )
    st.text(f"thumbnails: {', '.join(seen)}")
    st.text(f"compared: {st.session_state.get(RANK_KEY)}")


def test_each_card_has_compare_and_thumbnails_come_through_the_window_fetcher() -> None:
    at = AppTest.from_function(_cards_app, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    buttons = [b for b in at.button if b.label == "Compare"]
    assert len(buttons) == 2
    texts = [t.value for t in at.text]
    assert "thumbnails: hit 1, hit 2" in texts and "compared: None" in texts
    buttons[1].click().run()
    assert "compared: 2" in [t.value for t in at.text]


def _window_app() -> None:
    import streamlit as st

    from search_api.schemas import QueryInfo
    from ui.views import chosen_window, render_window_controls, request_window

    query = QueryInfo(
        format="dicom", rows=8, columns=8, modality="CT", window_center=40.0, window_width=400.0,
        window_units="modality", window_min=-1024.0, window_max=3071.0, preview_png_base64="",
    )  # fmt: skip

    if st.button("drag"):
        request_window(1234.4, 99999.0)  # what the viewer reports after a drag; the sliders clamp it
        st.rerun()
    render_window_controls(query, "scope", {"brain": (40.0, 80.0)})
    st.text(f"chosen: {chosen_window()}")


def test_a_window_from_the_viewer_becomes_the_pages_window() -> None:
    at = AppTest.from_function(_window_app, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "chosen: None" in [t.value for t in at.text]  # as decoded until someone chooses
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="wl_preset").value == "custom"
    level, width = at.slider(key="wl_center"), at.slider(key="wl_width")
    assert level.value == 1234.0 and width.value == 3071.0 + 1024.0  # rounded to the step; width clamped
    assert f"chosen: ({float(level.value)}, {float(width.value)})" in [t.value for t in at.text]


def _escape_app() -> None:
    import streamlit as st

    from ui.viewer.panel import RANK_KEY, SCOPE_KEY, _act, open_compare

    st.session_state.setdefault("search_key", "search-1")
    st.button("Compare", on_click=open_compare, args=(3,))
    if st.button("Escape"):  # what the viewer reports on Escape, after a frame report
        events = [{"seq": 7, "action": "frame", "frames": {"query": 0}}, {"seq": 8, "action": "close"}]
        _act({"seq": 8, "action": "close", "events": events}, [1, 2, 3], int(st.session_state[RANK_KEY]))
    st.text(f"compared: {st.session_state.get(RANK_KEY)} · scope: {st.session_state.get(SCOPE_KEY)}")


def test_compare_keeps_its_search_and_escape_closes_the_viewer() -> None:
    at = AppTest.from_function(_escape_app, default_timeout=60).run()
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    # The click records the search it belongs to: a click landing before the search's run reached the
    # viewer is not taken for a new search (which closes the viewer).
    assert "compared: 3 · scope: search-1" in [t.value for t in at.text]
    at.button[1].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "compared: None · scope: search-1" in [t.value for t in at.text]
