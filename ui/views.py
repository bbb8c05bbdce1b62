"""Streamlit page pieces: the sidebar status, the query, the prediction and the neighbour grid."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

import altair as alt
import pandas as pd
import streamlit as st

from search_api.schemas import HealthOut, Hit, Prediction, QueryInfo
from ui.client import ApiError

ANY_MODALITY = "any"
EXCERPT_CHARS = 200
GRID_COLUMNS = 5

# DICOM text is hostile input: everything that came from an image header or a report is shown with
# st.text (plain text, no Markdown, no HTML); Markdown is used for our own fixed labels and numbers only.


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The first `limit` characters of `text` on one line, cut at a word boundary with an ellipsis."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0] or flat[:limit]
    return cut.rstrip(" ,;:.") + "…"


def format_similarity(similarity: float) -> str:
    """Similarity with 3 decimals, as shown on each neighbour."""
    return f"{similarity:.3f}"


def modality_options(health: HealthOut | None) -> list[str]:
    """The modality filter choices: "any" first, then what the archive holds."""
    known = sorted({m for m in health.modalities if m}) if health else []
    return [ANY_MODALITY, *known]


def render_health(api_url: str, health: HealthOut | None, error: ApiError | None) -> None:
    """Sidebar block: which API the UI talks to and what it loaded."""
    st.subheader("Search API")
    st.text(api_url)
    if error is not None:
        st.error(error.message)
        return
    if health is None:
        return
    ok = health.status.lower() in {"ok", "ready", "healthy"} and health.catalog_ok
    (st.success if ok else st.warning)(f"Status: {health.status}")
    st.text(f"Encoder: {health.encoder} ({health.dim}-d on {health.device})")
    st.text(f"Index size: {health.index_size:,} vectors")
    st.text(f"Catalog images: {health.catalog_images:,}")
    if health.modalities:
        st.text(f"Modalities: {', '.join(health.modalities)}")


def show_image(data: bytes, alt: str, what: str) -> None:
    """st.image that turns undecodable bytes into a warning instead of a traceback."""
    try:
        st.image(data, width="stretch", alt=alt)
    except Exception:  # Pillow raises several types for bad bytes; the page must not show a traceback
        st.warning(f"The {what} sent by the API could not be displayed.")


def _decode_png(data_b64: str) -> bytes | None:
    try:
        return base64.b64decode(data_b64, validate=True) if data_b64 else None
    except (binascii.Error, ValueError):
        return None


def query_fields(query: QueryInfo) -> list[tuple[str, str]]:
    """The header fields shown beside the query preview, as (name, value) pairs; missing ones as "—"."""
    window = (
        f"C {query.window_center:g} / W {query.window_width:g}"
        if query.window_center is not None and query.window_width is not None
        else None
    )
    frames = f"{query.frame_index + 1} of {query.frames}" if query.frames > 1 else None
    fields = [
        ("Modality", query.modality or "—"),
        ("Body part", query.body_part or "—"),
        ("Study description", query.study_description or "—"),
        ("Series description", query.series_description or "—"),
        ("Format", query.format),
        ("Size", f"{query.columns} x {query.rows}"),
    ]
    if frames:
        fields.append(("Frame", frames))
    if window:
        fields.append(("Window", window))
    return fields


def render_query(query: QueryInfo, filename: str) -> None:
    """The query as the engine saw it, with its header fields as escaped plain text."""
    st.subheader("Query")
    png = _decode_png(query.preview_png_base64)
    if png is not None:
        show_image(png, "Query image as the engine saw it", "query preview")
    else:
        st.warning("The API sent no usable preview of the query.")
    st.text(f"File: {filename}")
    for name, value in query_fields(query):
        st.text(f"{name}: {value}")


def render_prediction(prediction: Prediction) -> None:
    """Top label with its confidence, and a bar chart of every label's share of the vote."""
    st.subheader("Prediction")
    if prediction.label is None:
        st.info("No labeled neighbours: the retrieved cases carry no diagnosis to vote on.")
        return
    left, right = st.columns(2)
    left.metric("Predicted label", prediction.label)
    right.metric("Confidence", f"{prediction.confidence:.1%}")
    st.caption(
        f"{prediction.method} over {prediction.labeled_neighbours} labeled neighbour(s); "
        "a retrieval aid, not a diagnosis."
    )
    if prediction.scores:
        frame = pd.DataFrame(
            {
                "label": [s.label for s in prediction.scores],
                "score": [s.score for s in prediction.scores],
                "votes": [s.votes for s in prediction.scores],
            }
        )
        chart = (
            alt.Chart(frame)
            .mark_bar()
            .encode(
                x=alt.X("score:Q", title="share of the vote", scale=alt.Scale(domain=[0, 1])),
                y=alt.Y("label:N", sort="-x", title=None),
                tooltip=["label", alt.Tooltip("score:Q", format=".3f"), "votes"],
            )
        )
        st.altair_chart(chart, width="stretch")


def render_hit(hit: Hit, thumbnail: Callable[[str], bytes]) -> None:
    """One neighbour card: thumbnail, similarity, labels, modality, case key and the report."""
    try:
        data = thumbnail(hit.thumbnail_url)
    except ApiError as exc:
        st.warning(f"No thumbnail: {exc.message}")
    else:
        show_image(data, f"Neighbour {hit.rank}", "thumbnail")
    st.markdown(f"**#{hit.rank}** · similarity **{format_similarity(hit.similarity)}**")
    st.text(f"Diagnosis: {', '.join(hit.diagnosis) if hit.diagnosis else '—'}")
    st.text(f"Modality: {hit.modality or '—'}" + (f" · {hit.body_part}" if hit.body_part else ""))
    st.text(f"Case: {hit.case_key}")
    if hit.report:
        st.text(excerpt(hit.report))
        with st.expander("Full report"):
            st.text(hit.report)
    else:
        st.text("No report.")


def render_hits(hits: list[Hit], thumbnail: Callable[[str], bytes], columns: int = GRID_COLUMNS) -> None:
    """The neighbours in a grid, best first, `columns` per row."""
    st.subheader(f"Similar cases ({len(hits)})")
    if not hits:
        st.info("No neighbours: the index is empty, or nothing matches the modality filter.")
        return
    for start in range(0, len(hits), columns):
        row = st.columns(columns)
        for column, hit in zip(row, hits[start : start + columns], strict=False):
            with column:
                render_hit(hit, thumbnail)
