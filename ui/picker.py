"""The archived-case picker: a text search over GET /cases, a thumbnail grid and a searchable case list."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from search_api.schemas import CaseSummary
from ui.client import ApiClient, ApiError
from ui.context import session_read
from ui.hits import letterbox
from ui.views import show_image

CASES_PER_PAGE = 100
THUMB_COLUMNS = 3
THUMB_ROWS = 3


def case_label(case: CaseSummary) -> str:
    """A case named as a reader would: modality, body part, study description, diagnosis and a short id."""
    labels = ", ".join(case.diagnosis) if case.diagnosis else "no diagnosis"
    parts = ["/".join(case.modalities) or "?"]
    if case.body_parts:
        parts.append("/".join(p.title() for p in case.body_parts))
    if case.study_description:
        parts.append(case.study_description[:40])
    parts.append(labels)
    return f"#{case.case_id} · " + " · ".join(parts)


def _choose(case_id: int) -> None:
    st.session_state["archive_case"] = case_id


def render_thumbnail_grid(cases: list[CaseSummary], thumbnail: Callable[[str], bytes]) -> None:
    """The first matching cases as letterboxed thumbnails, each with a button that makes it the query."""
    shown = cases[: THUMB_COLUMNS * THUMB_ROWS]
    for start in range(0, len(shown), THUMB_COLUMNS):
        for column, case in zip(
            st.columns(THUMB_COLUMNS, gap="small"), shown[start : start + THUMB_COLUMNS], strict=False
        ):
            with column:
                if case.thumbnail_url:
                    try:
                        show_image(letterbox(thumbnail(case.thumbnail_url)), case_label(case), "thumbnail")
                    except ApiError:
                        st.caption("no thumbnail")
                st.button(
                    f"#{case.case_id}",
                    key=f"pick_case_{case.case_id}",
                    help=case_label(case),
                    on_click=_choose,
                    args=(case.case_id,),
                    use_container_width=True,
                )
    if len(cases) > len(shown):
        st.caption(
            f"{len(shown)} of {len(cases)} on this page shown; narrow the search or use the list below."
        )


def pick_archived_image(client: ApiClient, thumbnail: Callable[[str], bytes]) -> int | None:
    """Find a case by words, pick it from thumbnails or a searchable list; the chosen image id, or None."""
    pending = st.session_state.pop("pending_archive_image", None)
    text = st.text_input(
        "Find a case",
        key="archive_text",
        placeholder="diagnosis, report words, modality, body part…",
        help="Every word must occur in the case's diagnosis, report, id, modality, body part or description.",
    ).strip()
    page = int(st.session_state.get("archive_page", 1))
    try:
        listing = session_read(
            f"cases:{text}:{page}",
            lambda: client.cases(limit=CASES_PER_PAGE, offset=(page - 1) * CASES_PER_PAGE, text=text or None),
        )
    except ApiError as exc:
        st.error(f"Could not list the archive's cases: {exc.message}")
        return pending if isinstance(pending, int) else None
    if listing.total > CASES_PER_PAGE:
        pages = (listing.total + CASES_PER_PAGE - 1) // CASES_PER_PAGE
        st.number_input(f"Page of cases (1-{pages})", min_value=1, max_value=pages, key="archive_page")
    cases = [c for c in listing.cases if c.image_ids]
    if isinstance(pending, int):
        return pending
    if not cases:
        if text:
            st.info(f"No case matches “{text}”: try fewer or other words.")
        else:
            st.info("The archive holds no cases yet: index some with `medcbir index`.")
        return None
    by_id = {c.case_id: c for c in cases}
    if st.session_state.get("archive_case") not in by_id:
        st.session_state["archive_case"] = cases[0].case_id
    with st.expander(f"{listing.total:,} matching cases: thumbnails", expanded=bool(text)):
        render_thumbnail_grid(cases, thumbnail)
    case_id = st.selectbox(
        f"Case ({listing.total:,} {'matching' if text else 'in the archive'})",
        list(by_id),
        format_func=lambda cid: case_label(by_id[cid]),
        key="archive_case",
    )
    case = by_id[case_id]
    if len(case.image_ids) > 1:
        return int(st.selectbox("Image of the case", case.image_ids, key="archive_image"))
    return case.image_ids[0]
