"""The series page: several slices (or one multi-frame DICOM) in, similar stored series out, slice pairs side by side."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from search_api.schemas import SeriesHitOut
from ui.client import ApiError
from ui.context import api_client, page_settings, thumbnail_fetcher
from ui.views import CASE_PAGE, show_image

ACCEPTED = "DICOM slices (or one multi-frame DICOM), PNG or JPEG"


def render_series_hit(hit: SeriesHitOut, thumbnail: Callable[[str], bytes], query_names: list[str]) -> None:
    """One stored series: its score and a slider over its best (query slice, stored slice) pairs."""
    with st.container(border=True):
        st.markdown(f"**#{hit.rank}** · MaxSim **{hit.score:.3f}** · {hit.slices} slices")
        if not hit.pairs:
            return
        chosen = st.select_slider(
            "Slice pair",
            options=list(range(len(hit.pairs))),
            format_func=lambda i: f"query slice {hit.pairs[i].query_slice + 1}",
            key=f"series_pair_{hit.rank}",
        )
        pair = hit.pairs[int(chosen)]
        left, right = st.columns(2)
        with left:
            slice_no = pair.query_slice
            st.caption(
                f"Query slice {slice_no + 1}"
                + (f" ({query_names[slice_no]})" if slice_no < len(query_names) else "")
            )
        with right:
            try:
                show_image(thumbnail(f"/images/{pair.image_id}/thumbnail"), "stored slice", "thumbnail")
            except ApiError as exc:
                st.warning(f"No thumbnail: {exc.message}")
            st.caption(f"Stored image {pair.image_id} · similarity {pair.similarity:.3f}")
        st.page_link(CASE_PAGE, label="Open case", query_params={"case_id": str(hit.case_id)})


def main() -> None:
    """Draw the series page once; Streamlit reruns it on every interaction."""
    settings = page_settings()
    st.title("Similar series search")
    st.caption("Send the slices of one series; similar stored series come back with their best slice pairs.")
    uploads = st.file_uploader(f"Slices: {ACCEPTED}", accept_multiple_files=True, key="series_files")
    k = st.slider("Series to return", 1, 20, 5, key="series_k")
    if not uploads:
        st.info("Upload the slices of a series (at most 500, one modality).")
        return
    with api_client(settings) as client:
        try:
            with st.spinner("Searching similar series…"):
                result = client.search_series([(u.name, u.getvalue()) for u in uploads], k=k)
        except ApiError as exc:
            code = f" (HTTP {exc.status_code})" if exc.status_code else ""
            st.error(f"Series search failed{code}: {exc.message}")
            return
        st.caption(
            f"{result.query_slices} query slices · {result.series_indexed:,} stored series · {result.took_ms:.0f} ms"
        )
        names = [u.name for u in uploads] if len(uploads) == result.query_slices else []
        thumbnail = thumbnail_fetcher(client, settings)
        for hit in result.hits:
            render_series_hit(hit, thumbnail, names)


main()
