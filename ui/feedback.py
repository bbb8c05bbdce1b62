"""Relevance feedback on the search page: thumbs up / down per neighbour, "Refine", and the refined list."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import streamlit as st

from search_api.schemas import FeedbackMarkOut, Hit, SearchResponse
from ui.client import ApiError

UP = "👍 relevant"
DOWN = "👎 not relevant"


def _scope_key(scope: str) -> str:
    """A short widget-safe key for one search (its query and filters)."""
    return hashlib.sha256(scope.encode()).hexdigest()[:12]


def marks(scope: str) -> dict[int, str]:
    """This search's marks so far, image id -> UP or DOWN (kept over rounds until the search changes)."""
    store: dict[str, dict[int, str]] = st.session_state.setdefault("feedback_marks", {})
    if scope not in store:
        store.clear()  # a new search starts with no marks
        store[scope] = {}
    return store[scope]


def marked_ids(scope: str) -> tuple[list[int], list[int]]:
    """(positive, negative) image ids marked for this search, the marks clicked in this run included
    (the thumbs' widget values are read here, before the cards that keep them are drawn)."""
    chosen = marks(scope)
    prefix = f"mark_{_scope_key(scope)}_"
    for key in [k for k in st.session_state if str(k).startswith(prefix)]:
        value = st.session_state[key]
        image_id = int(str(key)[len(prefix) :])
        if value in (UP, DOWN):
            chosen[image_id] = value
        else:
            chosen.pop(image_id, None)
    return (
        sorted(i for i, m in chosen.items() if m == UP),
        sorted(i for i, m in chosen.items() if m == DOWN),
    )


def render_mark(hit: Hit, scope: str) -> None:
    """The thumbs up / down of one neighbour card; a second click on the chosen one clears it."""
    chosen = marks(scope)
    key = f"mark_{_scope_key(scope)}_{hit.image_id}"
    if key not in st.session_state and hit.image_id in chosen:
        st.session_state[key] = chosen[hit.image_id]
    value = st.segmented_control("Relevant to this query?", [UP, DOWN], key=key, label_visibility="collapsed")
    if value in (UP, DOWN):
        chosen[hit.image_id] = value
    else:
        chosen.pop(hit.image_id, None)


def refined_result(scope: str) -> SearchResponse | None:
    """The latest refined answer of this search, or None before the first "Refine"."""
    kept = st.session_state.get("feedback_result")
    if kept is not None and kept[0] == scope:
        result: SearchResponse = kept[1]
        return result
    return None


def render_refine_bar(scope: str, refine: Callable[[list[int], list[int], int], SearchResponse]) -> None:
    """The "Refine" and "Back to the first results" buttons, with the marks' counts."""
    positive, negative = marked_ids(scope)
    current = refined_result(scope)
    next_round = (current.refinement.round + 1) if current and current.refinement else 1
    left, right, info = st.columns([1, 1.4, 2.2])
    with left:
        clicked = st.button(
            "Refine",
            icon=":material/tune:",
            disabled=not (positive or negative),
            help="Search again, moved towards the neighbours marked relevant and away from the others",
            key=f"refine_{_scope_key(scope)}",
        )
    with right:
        if current is not None and st.button(
            "Back to the first results", key=f"unrefine_{_scope_key(scope)}"
        ):
            st.session_state.pop("feedback_result", None)
            marks(scope).clear()
            for key in [k for k in st.session_state if str(k).startswith(f"mark_{_scope_key(scope)}_")]:
                del st.session_state[key]
            st.rerun()
    with info:
        round_text = f" · showing round {current.refinement.round}" if current and current.refinement else ""
        st.caption(f"{len(positive)} marked relevant, {len(negative)} not relevant{round_text}")
    if clicked:
        try:
            with st.spinner("Refining…"):
                st.session_state["feedback_result"] = (scope, refine(positive, negative, next_round))
        except ApiError as exc:
            code = f" (HTTP {exc.status_code})" if exc.status_code else ""
            st.error(f"Refine failed{code}: {exc.message}")
            return
        st.rerun()


SaveMarks = Callable[[int, list[int], list[int], int], list[FeedbackMarkOut]]


def render_save_marks(scope: str, save: SaveMarks, default_case: int | None = None) -> None:
    """Keep this search's marks with a case (the archived query's own case by default): they replace
    the marks saved before for the same search, and the API audits the save."""
    positive, negative = marked_ids(scope)
    if not (positive or negative):
        return
    current = refined_result(scope)
    round_number = current.refinement.round if current and current.refinement else 1
    key = _scope_key(scope)
    with st.expander("Save the marks with a case"):
        case_id = st.number_input(
            "Case id",
            min_value=1,
            step=1,
            value=default_case,
            key=f"marks_case_{key}",
            help="The case to keep these marks with (e.g. the case this query belongs to)",
        )
        if st.button("Save marks", key=f"save_marks_{key}", disabled=case_id is None):
            try:
                saved = save(int(case_id or 0), positive, negative, round_number)
            except ApiError as exc:
                code = f" (HTTP {exc.status_code})" if exc.status_code else ""
                st.error(f"Saving the marks failed{code}: {exc.message}")
                return
            st.success(f"{len(saved)} mark(s) saved with case {int(case_id or 0)}.")
