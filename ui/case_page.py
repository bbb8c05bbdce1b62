"""The case page: one archived case with its report, diagnoses and images; opened from a neighbour card."""

from __future__ import annotations

import streamlit as st

from ui.client import ApiClient, ApiError
from ui.context import page_settings, thumbnail_fetcher
from ui.views import SEARCH_PAGE, render_case


def requested_case_id() -> int | None:
    """The case id from the URL (?case_id=N), or None when absent or not a number."""
    value = st.query_params.get("case_id")
    return int(value) if value and value.isdigit() else None


def main() -> None:
    """Draw the case page once."""
    settings = page_settings()
    st.page_link(SEARCH_PAGE, label="Back to search", icon=":material/arrow_back:")
    st.title("Case")
    case_id = requested_case_id()
    if case_id is None:
        st.info("Open a case from a search result, or give its id in the address (?case_id=N).")
        return
    with ApiClient(settings.api_url, timeout=settings.timeout) as client:
        try:
            with st.spinner("Loading the case…"):
                case = client.case(case_id)
        except ApiError as exc:
            code = f" (HTTP {exc.status_code})" if exc.status_code else ""
            st.error(f"Could not load case {case_id}{code}: {exc.message}")
            return
        render_case(case, thumbnail_fetcher(client, settings))
        if case.images:
            st.divider()
            image_id = st.selectbox(
                "Search the archive with an image of this case",
                [img.image_id for img in case.images],
                format_func=lambda i: f"Image {i}",
                key="case_query_image",
            )
            if st.button("Search with this image", key="search_with_image", type="primary"):
                st.session_state["pending_archive_image"] = int(image_id)
                st.switch_page(SEARCH_PAGE)


main()
