"""Streamlit page pieces: sidebar status, query panel with window/level, prediction, neighbour grid, case view."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import altair as alt
import pandas as pd
import streamlit as st

from search_api.schemas import (
    CaseOut,
    FilterOptions,
    HealthOut,
    Prediction,
    QueryInfo,
)
from ui.client import ApiError

ANY_MODALITY = "any"
ANY = "any"
AS_DECODED = "as decoded"
CUSTOM = "custom"
EXCERPT_CHARS = 200
CASE_PAGE = "case_page.py"
SEARCH_PAGE = "search_page.py"

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


def modality_options(health: HealthOut | None, options: FilterOptions | None = None) -> list[str]:
    """The modality filter choices: "any" first, then what the archive holds."""
    values = options.modalities if options else (health.modalities if health else [])
    return [ANY_MODALITY, *sorted({m for m in values if m})]


def body_part_options(options: FilterOptions | None) -> list[str]:
    """The body part filter choices: "any" first, then what the archive holds."""
    return [ANY, *(options.body_parts if options else [])]


def label_options(options: FilterOptions | None) -> list[str]:
    """The diagnosis label filter choices: "any" first, then labels by how many cases carry them."""
    return [ANY, *(lc.label for lc in options.labels)] if options else [ANY]


def chosen(value: str | None) -> str | None:
    """A filter selectbox value as sent to the API: "any" means no filter."""
    return None if value in (None, ANY) else value


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


def show_image(data: bytes, alt: str, what: str, width: int | str = "stretch") -> None:
    """st.image that turns undecodable bytes into a warning instead of a traceback."""
    try:
        st.image(data, width=width, alt=alt)  # type: ignore[arg-type]
    except Exception:  # Pillow raises several types for bad bytes; the page must not show a traceback
        st.warning(f"The {what} sent by the API could not be displayed.")


def decode_png(data_b64: str) -> bytes | None:
    """The bytes of a base64 PNG from the API, or None when it is not valid base64."""
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


# -- window / level ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowRange:
    """Slider bounds for center and width, in the query's window units."""

    low: float
    high: float
    step: float
    units: str


def window_range(query: QueryInfo) -> WindowRange:
    """The span the window sliders cover, as the API suggests it: HU for CT, modality units, or 0-255."""
    if query.window_units == "modality":
        low, high = query.window_min, query.window_max
        if high <= low:
            high = low + 1.0
        units = "HU" if (query.modality or "").upper() == "CT" else "modality units"
        return WindowRange(low, high, 1.0 if high - low > 20 else (high - low) / 200.0, units)
    return WindowRange(0.0, 255.0, 1.0, "grey levels")


def default_window(query: QueryInfo) -> tuple[float, float]:
    """The window the preview was rendered with at decode time."""
    if query.window_units == "modality" and query.window_center is not None and query.window_width:
        return float(query.window_center), float(query.window_width)
    return 127.5, 255.0


def preset_options(query: QueryInfo, presets: Mapping[str, tuple[float, float]]) -> list[str]:
    """Window presets offered for this query: CT presets only for CT in Hounsfield units."""
    ct = query.window_units == "modality" and (query.modality or "").upper() == "CT"
    return [AS_DECODED, *(presets if ct else []), CUSTOM]


def preset_label(name: str, presets: Mapping[str, tuple[float, float]]) -> str:
    """A preset's name for people: "soft_tissue" -> "Soft tissue (W400 L40)"."""
    if name in presets:
        center, width = presets[name]
        return f"{name.replace('_', ' ').capitalize()} (W{width:g} L{center:g})"
    return name.capitalize()


WINDOW_REQUEST = "wl_requested"


def request_window(center: float, width: float) -> None:
    """Ask for a window from elsewhere (a drag in the compare viewer): the sliders take it on the next run,
    before they are drawn (Streamlit forbids changing a drawn widget's value)."""
    st.session_state[WINDOW_REQUEST] = (float(center), float(width))


def chosen_window() -> tuple[float, float] | None:
    """The window the reader chose (a preset, the sliders or a drag); None while the query is as decoded."""
    if st.session_state.get("wl_preset", AS_DECODED) == AS_DECODED:
        return None
    center, width = st.session_state.get("wl_center"), st.session_state.get("wl_width")
    if center is None or width is None:
        return None
    return float(center), float(width)


def render_window_controls(
    query: QueryInfo, scope: str, presets: Mapping[str, tuple[float, float]]
) -> tuple[float, float] | None:
    """Preset picker and level/width sliders; the (center, width) to display, None = as decoded.

    `scope` identifies the query, so that a new query starts from its own decode window.
    """
    bounds = window_range(query)
    center0, width0 = default_window(query)
    center0 = float(min(max(center0, bounds.low), bounds.high))
    width0 = float(min(max(width0, bounds.step), bounds.high - bounds.low))
    if st.session_state.get("wl_scope") != scope:
        st.session_state["wl_scope"] = scope
        st.session_state["wl_preset"] = AS_DECODED
        st.session_state["wl_center"], st.session_state["wl_width"] = center0, width0
    requested = st.session_state.pop(WINDOW_REQUEST, None)
    if requested is not None:
        center, width = requested
        st.session_state["wl_preset"] = CUSTOM
        center, width = round(center / bounds.step) * bounds.step, round(width / bounds.step) * bounds.step
        st.session_state["wl_center"] = float(min(max(center, bounds.low), bounds.high))
        st.session_state["wl_width"] = float(min(max(width, bounds.step), bounds.high - bounds.low))

    def apply_preset() -> None:
        name = st.session_state["wl_preset"]
        if name == AS_DECODED:
            st.session_state["wl_center"], st.session_state["wl_width"] = center0, width0
        elif name in presets:
            center, width = presets[name]
            st.session_state["wl_center"] = float(min(max(center, bounds.low), bounds.high))
            st.session_state["wl_width"] = float(min(width, bounds.high - bounds.low))

    def to_custom() -> None:
        st.session_state["wl_preset"] = CUSTOM

    options = preset_options(query, presets)
    if st.session_state.get("wl_preset") not in options:
        st.session_state["wl_preset"] = AS_DECODED
    st.selectbox(
        "Window preset",
        options,
        key="wl_preset",
        format_func=lambda name: preset_label(name, presets),
        on_change=apply_preset,
    )
    left, right = st.columns(2)
    left.slider(
        f"Level ({bounds.units})",
        min_value=bounds.low,
        max_value=bounds.high,
        step=bounds.step,
        key="wl_center",
        on_change=to_custom,
    )
    right.slider(
        f"Width ({bounds.units})",
        min_value=bounds.step,
        max_value=max(bounds.high - bounds.low, bounds.step * 2),
        step=bounds.step,
        key="wl_width",
        on_change=to_custom,
    )
    if st.session_state["wl_preset"] == AS_DECODED:
        return None
    center, width = float(st.session_state["wl_center"]), float(st.session_state["wl_width"])
    return None if (center, width) == (center0, width0) else (center, width)


def render_query(
    query: QueryInfo,
    name: str,
    rendered: Callable[[float, float], bytes] | None = None,
    scope: str = "",
    presets: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """The query as the engine saw it (re-windowed on request), with its header fields as plain text."""
    st.subheader("Query")
    window = render_window_controls(query, scope, presets or {}) if rendered is not None else None
    png: bytes | None = None
    if window is not None and rendered is not None:
        try:
            with st.spinner("Applying the window…"):
                png = rendered(*window)
        except ApiError as exc:
            st.warning(f"Could not apply the window: {exc.message}")
    if png is None:
        png = decode_png(query.preview_png_base64)
    if png is not None:
        show_image(png, "Query image as the engine saw it", "query preview")
    else:
        st.warning("The API sent no usable preview of the query.")
    st.text("\n".join([f"File: {name}", *(f"{field}: {value}" for field, value in query_fields(query))]))


# -- prediction and neighbours -----------------------------------------------------------------


def uncertainty_message(prediction: Prediction) -> str | None:
    """The "No reliable match" warning of an uncertain prediction, with the API's reason; None when trusted."""
    if not prediction.uncertain or prediction.uncertain_reason is None:
        return None
    kind, _, detail = prediction.uncertain_reason.partition(": ")
    why = {
        "out_of_distribution": "the query is far from every stored case",
        "low_confidence": "the top label's probability is low",
        "no_labeled_neighbours": "the retrieved cases carry no diagnosis",
    }.get(kind, kind.replace("_", " "))
    return f"No reliable match: {why}" + (f" ({detail})." if detail else ".")


@dataclass(frozen=True)
class PredictionLabels:
    """Heading and metric captions of one prediction panel (distinct per panel)."""

    heading: str
    label: str
    confidence: str
    axis: str


VOTE_LABELS = PredictionLabels("Prediction", "Predicted label", "Confidence", "share of the vote")
HEAD_LABELS = PredictionLabels("Trained head", "Head label", "Head confidence", "probability")


def render_prediction(prediction: Prediction, labels: PredictionLabels = VOTE_LABELS) -> None:
    """Top label with its confidence, a "No reliable match" warning when uncertain, and every label's score."""
    st.subheader(labels.heading)
    warning = uncertainty_message(prediction)
    if prediction.label is None:
        if warning and not (prediction.uncertain_reason or "").startswith("no_labeled_neighbours"):
            st.warning(warning)
        st.info("No labeled neighbours: the retrieved cases carry no diagnosis to vote on.")
        return
    if warning:
        # No big label for an unreliable prediction: the reason, then the vote greyed out below.
        st.warning(warning)
        st.caption(
            f"Leaning {prediction.label} ({prediction.confidence:.1%}), not shown as a prediction: "
            "read the neighbours instead."
        )
    else:
        st.metric(labels.label, prediction.label)
        st.metric(labels.confidence, f"{prediction.confidence:.1%}")
        st.progress(min(max(prediction.confidence, 0.0), 1.0))
    over = f" over {prediction.labeled_neighbours} labeled neighbour(s)" if labels is VOTE_LABELS else ""
    calibrated = " Probabilities calibrated on held-out patients." if prediction.calibrated else ""
    st.caption(f"{prediction.method}{over};{calibrated} a retrieval aid, not a diagnosis.")
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
            .mark_bar(cornerRadiusEnd=3)
            .encode(
                x=alt.X("score:Q", title=labels.axis, scale=alt.Scale(domain=[0, 1])),
                y=alt.Y("label:N", sort="-x", title=None),
                color=alt.condition(
                    alt.datum.label == prediction.label,
                    alt.value("#9a9a9a" if warning else "#1f6feb"),
                    alt.value("#d0d0d0" if warning else "#9db7d5"),
                ),
                tooltip=["label", alt.Tooltip("score:Q", format=".3f"), "votes"],
            )
            .properties(height=alt.Step(26))
            .configure_axisY(labelLimit=160, labelFontSize=12, labelOverlap=False)
        )
        st.altair_chart(chart, width="stretch")


def render_predictions(vote: Prediction, head: Prediction | None) -> None:
    """The kNN vote, then the trained head's prediction when the archive has one."""
    render_prediction(vote, VOTE_LABELS)
    if head is not None:
        render_prediction(head, HEAD_LABELS)


def render_head_gradcam(head: Prediction | None, fetch: Callable[[str], bytes]) -> None:
    """A toggle showing the Grad-CAM of the trained head's predicted class over the query."""
    if head is None or head.label is None:
        return
    if st.checkbox("Where does the head look? (Grad-CAM)", key="head_gradcam"):
        label = head.label
        render_explanation(
            lambda: fetch(label),
            "Grad-CAM",
            "Grad-CAM of the head's predicted class: warm colours raise its score.",
        )


def render_explanation(fetch: Callable[[], bytes], what: str, caption: str) -> None:
    """Fetch an explanation PNG from the API and show it, or say why it is not available."""
    try:
        with st.spinner(f"Computing the {what}…"):
            data = fetch()
    except ApiError as exc:
        st.warning(f"No {what}: {exc.message}")
        return
    show_image(data, caption, what)
    st.caption(caption)


# -- case view ---------------------------------------------------------------------------------


def render_case(case: CaseOut, thumbnail: Callable[[str], bytes], columns: int = 4) -> None:
    """A stored case: key, labels, report and every image with its header fields."""
    st.subheader("Case")
    st.text(f"Case: {case.case_key}")
    st.text(f"Diagnosis: {', '.join(case.diagnosis) if case.diagnosis else '—'}")
    if case.patient_ref:
        st.text(f"Patient (pseudonym): {case.patient_ref}")
    if case.study_instance_uid:
        st.text(f"Study UID: {case.study_instance_uid}")
    st.markdown("**Report**")
    st.text(case.report or "No report.")
    st.subheader(f"Images ({len(case.images)})")
    for start in range(0, len(case.images), columns):
        row = st.columns(columns)
        for column, image in zip(row, case.images[start : start + columns], strict=False):
            with column, st.container(border=True):
                try:
                    show_image(thumbnail(image.thumbnail_url), f"Image {image.image_id}", "thumbnail")
                except ApiError as exc:
                    st.warning(f"No thumbnail: {exc.message}")
                st.text(
                    f"Modality: {image.modality or '—'}"
                    + (f" · {image.body_part}" if image.body_part else "")
                )
                st.text(f"Study: {image.study_description or '—'}")
                st.text(f"Series: {image.series_description or '—'}")
                if image.rows and image.columns:
                    st.text(
                        f"Size: {image.columns} x {image.rows}"
                        + (f" · {image.frames} frames" if image.frames > 1 else "")
                    )
                st.text(f"Source: {image.source_uri}")
