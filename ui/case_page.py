"""The case page: one archived case with its report, diagnoses and images; opened from a neighbour card."""

from __future__ import annotations

import streamlit as st

from ui.client import ApiClient, ApiError
from ui.context import USER_KEY, api_client, forget_reads, page_settings, session_read, thumbnail_fetcher
from ui.views import SEARCH_PAGE, render_case


def requested_case_id() -> int | None:
    """The case id from the URL (?case_id=N), or None when absent or not a number."""
    value = st.query_params.get("case_id")
    return int(value) if value and value.isdigit() else None


def edit_section(client: ApiClient, case_id: int, report: str, diagnosis: list[str]) -> None:
    """Correct the report or diagnosis (kept in the edit history); admins may delete the case."""
    with st.expander("Edit report and diagnosis"), st.form(f"edit_case_{case_id}"):
        labels = st.text_input("Diagnosis labels (separated by ;)", "; ".join(diagnosis), key="edit_labels")
        text = st.text_area("Report", report, key="edit_report", height=160)
        if st.form_submit_button("Save changes"):
            try:
                client.edit_case(
                    case_id, report=text, diagnosis=[p.strip() for p in labels.split(";") if p.strip()]
                )
                forget_reads(f"case:{case_id}:")
                st.success("Saved; the change is in the case history.")
            except ApiError as exc:
                st.error(f"Could not save: {exc.message}")
    with st.expander("History"):
        try:
            for edit in session_read(f"case:{case_id}:history", lambda: client.case_history(case_id)):
                st.text(
                    f"{edit.at} {edit.username or '-'} {edit.field}: {edit.old_value!r} -> {edit.new_value!r}"
                )
        except ApiError as exc:
            st.error(exc.message)
    me = st.session_state.get(USER_KEY)
    if me is not None and me.role == "admin":
        with st.expander("Delete this case"):
            sure = st.checkbox("Delete the case, its images and its vectors", key="confirm_delete")
            if st.button("Delete case", key="delete_case", disabled=not sure):
                try:
                    client.delete_case(case_id)
                    forget_reads(f"case:{case_id}:")
                    st.success(f"Case {case_id} deleted.")
                except ApiError as exc:
                    st.error(f"Could not delete: {exc.message}")


def main() -> None:
    """Draw the case page once."""
    settings = page_settings()
    st.page_link(SEARCH_PAGE, label="Back to search", icon=":material/arrow_back:")
    st.title("Case")
    case_id = requested_case_id()
    if case_id is None:
        st.info("Open a case from a search result, or give its id in the address (?case_id=N).")
        return
    with api_client(settings) as client:
        try:
            with st.spinner("Loading the case…"):
                # Kept across reruns (60 s): a click on the page re-reads, and re-audits, nothing.
                case = session_read(f"case:{case_id}:view", lambda: client.case(case_id))
        except ApiError as exc:
            code = f" (HTTP {exc.status_code})" if exc.status_code else ""
            st.error(f"Could not load case {case_id}{code}: {exc.message}")
            return
        render_case(case, thumbnail_fetcher(client, settings))
        edit_section(client, case.case_id, case.report or "", case.diagnosis)
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
