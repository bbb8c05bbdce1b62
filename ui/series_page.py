"""The series page: slices, a multi-frame DICOM or a zip in; similar stored series out, slice pairs side by side."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import streamlit as st

from search_api.schemas import SearchFilters, SeriesHitOut, SeriesSearchResponse, SlicePreview
from ui.client import ApiError
from ui.context import api_client, load_status, page_settings, thumbnail_fetcher
from ui.filters import exclude_patient_widgets, filter_widgets
from ui.views import (
    CASE_PAGE,
    body_part_options,
    decode_png,
    label_options,
    modality_options,
    render_prediction,
    show_image,
)

ACCEPTED = "DICOM slices, one multi-frame DICOM, a zip of DICOM slices, PNG or JPEG"
# Slice pairs asked per hit (the API's most): the slider walks through them in query-slice order.
PAIRS = 20


def series_filters(modalities: list[str], body_parts: list[str], labels: list[str], k: int) -> SearchFilters:
    """The sidebar filters of the image search, for series (no grouping: each hit is a series already)."""
    st.subheader("Filters")
    values = filter_widgets(
        modalities,
        body_parts,
        labels,
        prefix="series_",
        threshold_help="Series scoring (MaxSim) under this are left out; 0 keeps all.",
    )
    exclude = exclude_patient_widgets(prefix="series_", what="series", without="slices")
    return SearchFilters(
        k=k,
        modality=values.modality,
        body_part=values.body_part,
        label=values.label,
        min_similarity=values.min_similarity,
        exclude_patient=exclude,
    )


def render_exclusion(result: SeriesSearchResponse) -> None:
    """Say whether the query's own patient was left out; a requested exclusion that failed is a warning."""
    exclusion = result.exclusion
    if not exclusion.requested:
        return
    if not exclusion.applied:
        st.warning(f"The query's own patient was NOT excluded: {exclusion.reason}")
        return
    how = ", ".join(s.replace("_", " ") for s in exclusion.sources)
    st.caption(f"Own patient excluded: {exclusion.excluded_images} stored images left out (found by {how}).")
    if exclusion.reason:
        st.info(exclusion.reason)


def render_series_hit(
    hit: SeriesHitOut, thumbnail: Callable[[str], bytes], previews: dict[int, SlicePreview], scope: str = ""
) -> None:
    """One stored series: its score and diagnoses, and a slice slider over its (query slice, stored
    slice) pairs, shown side by side; the slider starts on the best pair."""
    with st.container(border=True):
        st.markdown(f"**#{hit.rank}** · MaxSim **{hit.score:.3f}** · {hit.slices} slices")
        st.text(f"Diagnosis: {', '.join(hit.diagnosis) if hit.diagnosis else '—'}")
        if not hit.pairs:
            return
        by_slice = sorted(hit.pairs, key=lambda p: p.query_slice)
        best = hit.pairs[0].query_slice
        if len(by_slice) > 1:
            chosen = st.select_slider(
                "Query slice",
                options=[p.query_slice for p in by_slice],
                value=best,
                format_func=lambda q: f"{q + 1}",
                key=f"series_pair_{scope}_{hit.rank}",
                help="The query slices this series matches best; each is shown beside its closest stored slice.",
            )
        else:
            chosen = best
        pair = next(p for p in by_slice if p.query_slice == chosen)
        left, right = st.columns(2)
        with left:
            preview = previews.get(pair.query_slice)
            png = decode_png(preview.png_base64) if preview is not None else None
            if png is not None:
                show_image(png, f"query slice {pair.query_slice + 1}", "query slice preview")
            st.text(
                f"Query slice {pair.query_slice + 1}" + (f"\n{preview.name}" if preview is not None else "")
            )
        with right:
            try:
                show_image(thumbnail(f"/images/{pair.image_id}/thumbnail"), "stored slice", "thumbnail")
            except ApiError as exc:
                st.warning(f"No thumbnail: {exc.message}")
            st.text(f"Stored image {pair.image_id}\nsimilarity {pair.similarity:.3f}")
        st.page_link(CASE_PAGE, label="Open case", query_params={"case_id": str(hit.case_id)})


def render_series_result(
    result: SeriesSearchResponse, thumbnail: Callable[[str], bytes], scope: str = ""
) -> None:
    """The vote of the hit series (with the same uncertainty warning as an image search), then the hits."""
    modality = f" · {result.modality}" if result.modality else ""
    st.caption(
        f"{result.query_slices} query slices{modality} · {result.series_indexed:,} stored series · "
        f"{result.took_ms:.0f} ms"
    )
    render_exclusion(result)
    render_prediction(result.prediction)
    previews = {p.query_slice: p for p in result.query_previews}
    st.subheader("Similar series")
    if not result.hits and result.candidates is not None:
        st.info(f"No series passed the filters ({result.candidates} stored series allowed); loosen them.")
    for hit in result.hits:
        render_series_hit(hit, thumbnail, previews, scope)


def _search_key(uploads: list[tuple[str, bytes]], form: str) -> str:
    digest = hashlib.sha256(form.encode())
    for name, data in uploads:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def main() -> None:
    """Draw the series page once; Streamlit reruns it on every interaction (the answer is kept across
    reruns, so moving a slice slider does not search again)."""
    settings = page_settings()
    st.title("Similar series search")
    st.caption("Send the slices of one series; similar stored series come back with their best slice pairs.")
    uploads = st.file_uploader(f"Slices: {ACCEPTED}", accept_multiple_files=True, key="series_files")
    k = st.slider("Series to return", 1, 20, 5, key="series_k")
    with api_client(settings) as client:
        _, _, options = load_status(client)
        with st.sidebar:
            filters = series_filters(
                modality_options(None, options), body_part_options(options), label_options(options), int(k)
            )
        patient_ref = str(st.session_state.get("series_patient_ref") or "") if filters.exclude_patient else ""
        if not uploads:
            st.info("Upload the slices of a series (at most 500, one modality).")
            return
        files = [(u.name, u.getvalue()) for u in uploads]
        key = _search_key(files, filters.model_dump_json() + ":" + patient_ref)
        kept = st.session_state.get("series_result")
        if kept is not None and kept[0] == key:
            result = kept[1]
        else:
            try:
                with st.spinner("Searching similar series…"):
                    result = client.search_series(
                        files, pairs=PAIRS, filters=filters, patient_ref=patient_ref
                    )
            except ApiError as exc:
                code = f" (HTTP {exc.status_code})" if exc.status_code else ""
                st.error(f"Series search failed{code}: {exc.message}")
                return
            st.session_state["series_result"] = (key, result)
        render_series_result(result, thumbnail_fetcher(client, settings), key[:12])


main()
