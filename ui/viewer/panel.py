"""The compare panel of the search page: which neighbour is compared, the data it needs, the viewer's events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import streamlit as st

from search_api.schemas import Hit, QueryInfo, SearchResponse
from ui.client import ApiClient, ApiError
from ui.context import fetch_image_render, fetch_thumbnail, session_token
from ui.settings import UiSettings
from ui.viewer import ViewerImage, compare_viewer
from ui.views import chosen_window, request_window

RANK_KEY = "compare_rank"  # the rank of the neighbour in the viewer; absent: the viewer is closed
SCOPE_KEY = "compare_scope"  # the search it belongs to: a new search closes it
SEEN_KEY = "compare_seen"  # the seq of the last viewer event acted on
OVERLAY_KEY = "compare_overlay"
DARK_KEY = "compare_dark"
PENDING_OVERLAY = "compare_overlay_pending"
FRAMES_KEY = "compare_frames"


class ViewerClient(ApiClient):
    """The API client, with the viewer's reads (raw values and similarity maps as JSON)."""

    def pixels(self, image_id: int) -> ViewerImage:
        """GET /images/{id}/pixels: every frame of an archived image as values."""
        return cast(ViewerImage, self._request("GET", f"/images/{image_id}/pixels").json())

    def query_pixels(self, query_id: str) -> ViewerImage:
        """GET /queries/{id}/pixels: every frame of your uploaded query as values."""
        return cast(ViewerImage, self._request("GET", f"/queries/{query_id}/pixels").json())

    def similarity_maps(
        self, query_id: str | None, query_image_id: int | None, image_id: int
    ) -> dict[str, Any]:
        """The similarity maps of the query and a neighbour, as [0, 1] values."""
        if query_id:
            path = f"/queries/{query_id}/similarity/{image_id}/maps"
        else:
            path = f"/images/{query_image_id}/similarity/{image_id}/maps"
        body: dict[str, Any] = self._request("GET", path).json()
        return body


# The token is part of each cache key: one user's pixels are never served to another session.
@st.cache_data(ttl=600, max_entries=64, show_spinner=False)
def fetch_pixels(what: str, ident: str, api_url: str, timeout: float, token: str | None) -> ViewerImage:
    """The values of an archived image ("image") or of an uploaded query ("query"), cached."""
    client = ViewerClient(api_url, timeout=timeout, token=token)
    try:
        return client.query_pixels(ident) if what == "query" else client.pixels(int(ident))
    finally:
        client.close()


@st.cache_data(ttl=600, max_entries=64, show_spinner=False)
def fetch_maps(
    query_id: str | None,
    query_image_id: int | None,
    image_id: int,
    api_url: str,
    timeout: float,
    token: str | None,
) -> dict[str, Any]:
    """The similarity maps of the query and one neighbour, cached."""
    client = ViewerClient(api_url, timeout=timeout, token=token)
    try:
        return client.similarity_maps(query_id, query_image_id, image_id)
    finally:
        client.close()


def open_compare(rank: int) -> None:
    """The "Compare" button of a neighbour card: show that neighbour in the viewer."""
    st.session_state[RANK_KEY] = rank
    # The search shown now: a click landing before the search's first run reached the viewer is kept
    # (render_compare would otherwise take the search for a new one and close the viewer).
    st.session_state[SCOPE_KEY] = st.session_state.get("search_key")


def close_compare() -> None:
    st.session_state.pop(RANK_KEY, None)


def windowed_thumbnails(client: ApiClient, settings: UiSettings, query: QueryInfo) -> Callable[[Hit], bytes]:
    """Neighbour thumbnails through the chosen window: a neighbour of the query's modality is re-rendered
    by the API with it (the window is in that modality's units); others keep their stored thumbnail."""
    token = session_token()
    window = chosen_window()
    modality = (query.modality or "").upper()

    def fetch(hit: Hit) -> bytes:
        same_units = (
            query.window_units == "modality" and modality and (hit.modality or "").upper() == modality
        )
        if window is not None and same_units:
            try:
                return fetch_image_render(
                    hit.image_id, window[0], window[1], client.base_url, settings.timeout, token
                )
            except ApiError:
                pass  # the source is gone: the stored thumbnail still shows the neighbour
        return fetch_thumbnail(
            client.absolute_url(hit.thumbnail_url), client.base_url, settings.timeout, token
        )

    return fetch


def neighbour_meta(hit: Hit) -> str:
    """The neighbour's plain-text header lines beside the viewer."""
    lines = [
        f"#{hit.rank} · similarity {hit.similarity:.3f}",
        f"Diagnosis: {', '.join(hit.diagnosis) if hit.diagnosis else '—'}",
        f"Modality: {' · '.join(v for v in (hit.modality, hit.body_part) if v) or '—'}",
        f"Case: {hit.case_key}",
    ]
    if hit.study_description:
        lines.append(f"Study: {hit.study_description}")
    return "\n".join(lines)


def new_events(value: dict[str, Any] | None, seen: int) -> list[dict[str, Any]]:
    """The viewer's events with a seq above `seen`, oldest first (the value carries the last twenty)."""
    if not value:
        return []
    listed = value.get("events")
    events: list[Any] = listed if isinstance(listed, list) else [value]
    fresh = [e for e in events if isinstance(e, dict) and isinstance(e.get("seq"), int) and e["seq"] > seen]
    return sorted(fresh, key=lambda e: int(e["seq"]))


def _act(value: dict[str, Any] | None, ranks: list[int], rank: int) -> None:
    """Act once on the viewer's new events: move through the neighbours, take its window or overlay toggle."""
    events = new_events(value, int(st.session_state.get(SEEN_KEY) or 0))
    if not events:
        return
    st.session_state[SEEN_KEY] = int(events[-1]["seq"])
    position, rerun = ranks.index(rank), False
    for event in events:
        action = event.get("action")
        if action in ("next", "prev"):
            position = min(max(position + (1 if action == "next" else -1), 0), len(ranks) - 1)
        elif action == "window" and isinstance(event.get("window"), list) and len(event["window"]) == 2:
            center, width = (float(v) for v in event["window"])
            if width > 0:
                request_window(center, width)  # the page's sliders and the thumbnails follow the drag
                rerun = True
        elif action == "overlay":
            st.session_state[PENDING_OVERLAY] = bool(event.get("overlay"))
            rerun = True
        elif action == "frame" and isinstance(event.get("frames"), dict):
            st.session_state[FRAMES_KEY] = event["frames"]
        elif action == "close":  # Escape in the viewer
            close_compare()
            st.rerun()
    if ranks[position] != rank:
        st.session_state[RANK_KEY] = ranks[position]
        rerun = True
    if rerun:
        st.rerun()


def render_compare(client: ApiClient, settings: UiSettings, result: SearchResponse) -> None:
    """The compare viewer over the grid, for the neighbour picked with "Compare" (nothing otherwise)."""
    scope = st.session_state.get("search_key")
    if st.session_state.get(SCOPE_KEY) != scope:
        st.session_state[SCOPE_KEY] = scope
        close_compare()
    ranks = [hit.rank for hit in result.hits]
    rank = st.session_state.get(RANK_KEY)
    if rank not in ranks:
        return
    hit = next(h for h in result.hits if h.rank == rank)
    if PENDING_OVERLAY in st.session_state:
        st.session_state[OVERLAY_KEY] = st.session_state.pop(PENDING_OVERLAY)
    with st.container(border=True, key="compare_panel"):
        left, middle, right = st.columns([2, 2, 1], vertical_alignment="center")
        left.markdown(f"**Compare** · query | neighbour #{rank} of {len(ranks)}")
        overlay_on = middle.toggle("Similarity overlay", key=OVERLAY_KEY)
        dark = middle.toggle("Dark reading theme", key=DARK_KEY, value=True)
        right.button("Close viewer", key="compare_close", on_click=close_compare, icon=":material/close:")
        token = session_token()
        try:
            with st.spinner("Loading the images…"):
                if result.query_id:
                    query = fetch_pixels("query", result.query_id, client.base_url, settings.timeout, token)
                    query_sig = f"q:{result.query_id}"
                else:
                    query_image = result.query.image_id
                    query = fetch_pixels("image", str(query_image), client.base_url, settings.timeout, token)
                    query_sig = f"i:{query_image}"
                neighbour = fetch_pixels("image", str(hit.image_id), client.base_url, settings.timeout, token)
        except ApiError as exc:
            st.warning(f"The viewer could not load the images: {exc.message}")
            return
        maps, maps_error = None, ""
        if overlay_on:
            try:
                with st.spinner("Computing the similarity map…"):
                    maps = fetch_maps(
                        result.query_id,
                        result.query.image_id,
                        hit.image_id,
                        client.base_url,
                        settings.timeout,
                        token,
                    )
            except ApiError as exc:
                maps_error = f"No similarity map: {exc.message}"
                st.caption(maps_error)
        position = ranks.index(rank)
        event = compare_viewer(
            query,
            neighbour,
            window=chosen_window(),
            overlay=maps,
            theme="dark" if dark else "light",
            key="compare_viewer",
            labels=("Query", f"Neighbour #{rank} · {hit.case_key}"),
            report=hit.report or "No report.",
            neighbour_meta=neighbour_meta(hit),
            signatures=(query_sig, f"n:{hit.image_id}"),
            has_prev=position > 0,
            has_next=position < len(ranks) - 1,
            overlay_on=overlay_on,
            overlay_error=maps_error,
        )
        _act(cast(dict[str, Any] | None, event), ranks, rank)
