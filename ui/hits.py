"""The neighbour grid: letterboxed fixed-size thumbnails in cards that wrap into as many columns as fit."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import streamlit as st
from PIL import Image, UnidentifiedImageError

from search_api.schemas import Hit
from ui.client import ApiError
from ui.regions import draw_region
from ui.views import CASE_PAGE, excerpt, format_similarity, render_explanation, show_image

CARD_EXCERPT_CHARS = 110
# Cards have a fixed width and wrap: a wider screen shows more columns (1366 px: 4 beside the query
# and the prediction; 1920 px: 6), a narrow one fewer, and every thumbnail box has the same size.
CARD_WIDTH_PX = 128
LETTERBOX = (0, 0, 0)  # radiology viewers frame images in black


def letterbox(png: bytes) -> bytes:
    """The image centred in a black square whose side is its longer side: neither stretched nor cropped,
    so every thumbnail fills the same fixed box at its own aspect ratio. Bytes that are no image pass
    through (show_image turns them into a warning)."""
    try:
        image = Image.open(io.BytesIO(png))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError):
        return png
    side = max(image.width, image.height)
    if image.width == image.height:
        return png
    square = Image.new("RGB", (side, side), LETTERBOX)
    square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
    out = io.BytesIO()
    square.save(out, format="PNG")
    return out.getvalue()


def short_key(key: str, limit: int = 28) -> str:
    """A case key short enough for one card line: long study UIDs and hashes keep their head and tail."""
    return key if len(key) <= limit else f"{key[: limit - 9]}…{key[-8:]}"


def hit_summary(hit: Hit) -> str:
    """The plain-text lines of a neighbour card: diagnosis, modality and body part, case, study/series."""
    kind = " · ".join(v for v in (hit.modality, hit.body_part) if v) or "—"
    lines = [
        f"Diagnosis: {', '.join(hit.diagnosis) if hit.diagnosis else '—'}",
        f"Modality: {kind}",
        f"Case: {short_key(hit.case_key)} · #{hit.case_id}",
    ]
    if hit.study_description or hit.series_description:
        lines.append(f"Study: {hit.study_description or '—'} · Series: {hit.series_description or '—'}")
    return "\n".join(lines)


def viewer_link(hit: Hit) -> str | None:
    """The deep link into the PACS viewer of a hit ingested from a PACS (http(s) links only)."""
    url = hit.pacs.viewer_url if hit.pacs is not None else None
    return url if url is not None and url.startswith(("https://", "http://")) else None


def render_hit(
    hit: Hit,
    thumbnail: Callable[[str], bytes],
    query_patient: str | None = None,
    link: bool = True,
    explain: Callable[[Hit], bytes] | None = None,
    mark: Callable[[Hit], None] | None = None,
    hit_thumbnail: Callable[[Hit], bytes] | None = None,
    compare: Callable[[int], None] | None = None,
) -> None:
    """One neighbour card: thumbnail, similarity, labels, modality, study/series, report, case link, and
    (when `explain` is given) a "Why similar?" toggle showing the similarity maps of query and neighbour;
    `mark` draws the relevance-feedback marks under the similarity; `hit_thumbnail` fetches the thumbnail
    by hit (through the chosen window) instead of by URL; `compare` (given a rank) adds a "Compare" button."""
    with st.container(border=True, width=CARD_WIDTH_PX, key=f"hit_card_{hit.rank}"):
        try:
            data = hit_thumbnail(hit) if hit_thumbnail is not None else thumbnail(hit.thumbnail_url)
        except ApiError as exc:
            st.warning(f"No thumbnail: {exc.message}")
        else:
            if hit.region is not None:  # a region query: where the region matches best in this neighbour
                data = draw_region(data, hit.region)
            show_image(letterbox(data), f"Neighbour {hit.rank}", "thumbnail")
        st.markdown(f"**#{hit.rank}** · similarity **{format_similarity(hit.similarity)}**")
        if compare is not None:
            st.button(
                "Compare",
                key=f"compare_{hit.rank}_{hit.image_id}",
                on_click=compare,
                args=(hit.rank,),
                icon=":material/compare:",
                help="Open the query and this neighbour side by side in the compare viewer",
            )
        if hit.region is not None:
            st.caption(f"Best match of the region: the yellow box (cosine {hit.region.score:.2f})")
        st.progress(min(max(hit.similarity, 0.0), 1.0))
        if mark is not None:
            mark(hit)
        st.text(hit_summary(hit))
        if query_patient and hit.patient_ref == query_patient:
            st.caption(":orange[Same patient as the query]")
        if explain is not None and st.checkbox("Why similar?", key=f"why_similar_{hit.rank}_{hit.image_id}"):
            render_explanation(
                lambda: explain(hit),
                "similarity map",
                "Query | neighbour: warm colours mark the regions that drove this similarity.",
            )
        uids = f"Study UID: {hit.study_instance_uid or '—'}\nSeries UID: {hit.series_instance_uid or '—'}"
        if hit.report:
            st.text(excerpt(hit.report, CARD_EXCERPT_CHARS))
            with st.expander("Full report"):
                st.text(hit.report)
                st.text(uids)
        else:  # nothing more to read: no "Full report" under "No report."
            st.text("No report.")
            with st.expander("Study and series"):
                st.text(uids)
        viewer = viewer_link(hit)
        if viewer is not None:
            st.link_button("Open in viewer", viewer, icon=":material/open_in_new:")
        if link:
            st.page_link(
                CASE_PAGE,
                label="Open case",
                icon=":material/folder_open:",
                query_params={"case_id": str(hit.case_id)},
            )


def render_hits(
    hits: Sequence[Hit],
    thumbnail: Callable[[str], bytes],
    query_patient: str | None = None,
    link: bool = True,
    empty_hint: str = "No neighbours: the index is empty, or nothing matches the filters.",
    explain: Callable[[Hit], bytes] | None = None,
    mark: Callable[[Hit], None] | None = None,
    hit_thumbnail: Callable[[Hit], bytes] | None = None,
    compare: Callable[[int], None] | None = None,
) -> None:
    """The neighbours best first, in fixed-width cards that wrap into as many columns as the width allows."""
    st.subheader(f"Similar cases ({len(hits)})")
    if not hits:
        st.info(empty_hint)
        return
    with st.container(horizontal=True, gap="xsmall"):
        for hit in hits:
            render_hit(hit, thumbnail, query_patient, link, explain, mark, hit_thumbnail, compare)
