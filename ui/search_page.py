"""The search page: a query (upload or archived case) beside its neighbours and the neighbours' vote."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import streamlit as st

from search_api.schemas import QueryInfo, SearchFilters, SearchResponse
from ui.client import ApiClient, ApiError
from ui.context import (
    api_client,
    fetch_image_render,
    fetch_render,
    forget_reads,
    load_status,
    page_settings,
    session_token,
    thumbnail_fetcher,
)
from ui.feedback import refined_result, render_mark, render_refine_bar, render_save_marks
from ui.filters import exclude_patient_widgets, filter_widgets
from ui.hits import render_hits
from ui.picker import pick_archived_image
from ui.regions import region_box_input
from ui.viewer.panel import open_compare, render_compare, windowed_thumbnails
from ui.views import (
    body_part_options,
    label_options,
    modality_options,
    render_head_gradcam,
    render_health,
    render_predictions,
    render_query,
)

ACCEPTED = "DICOM (.dcm, .dicom or no extension), PNG or JPEG"
UPLOAD = "Upload an image"
ARCHIVE = "Pick an archived case"
GROUPINGS = {"none": "No grouping", "study": "Best per study", "series": "Best per series"}


def sidebar_filters(options_modality: list[str], body_parts: list[str], labels: list[str]) -> SearchFilters:
    """The filter widgets; their values as the API's SearchFilters."""
    st.subheader("Search")
    k = st.slider("Neighbours (k)", min_value=1, max_value=50, value=10, key="k")
    values = filter_widgets(
        options_modality,
        body_parts,
        labels,
        prefix="",
        threshold_help="Neighbours less similar than this are left out; 0 keeps all.",
    )
    group_by = st.radio(
        "Group hits", list(GROUPINGS), format_func=GROUPINGS.__getitem__, key="group_by", horizontal=True
    )
    exclude = exclude_patient_widgets(prefix="", what="images", without="uploads")
    return SearchFilters(
        k=int(k),
        modality=values.modality,
        body_part=values.body_part,
        label=values.label,
        min_similarity=values.min_similarity,
        group_by=None if group_by == "none" else group_by,  # type: ignore[arg-type]
        exclude_patient=exclude,
    )


def query_viewer_link(query: QueryInfo) -> str | None:
    """The PACS viewer deep link of a query that is a PACS instance (http(s) links only)."""
    url = query.pacs.viewer_url if query.pacs is not None else None
    return url if url is not None and url.startswith(("https://", "http://")) else None


def viewer_help(query: QueryInfo) -> str:
    """Where the query link leads, for its tooltip."""
    assert query.pacs is not None
    return f"Study {query.pacs.study_instance_uid} in PACS {query.pacs.pacs}"


def cached_search(key: str, run: object) -> SearchResponse:
    """Run the search once per (query, filters); reruns for window/level or expanders reuse the answer."""
    if st.session_state.get("search_key") != key:
        st.session_state.pop("search_result", None)
        result = run()  # type: ignore[operator]
        st.session_state["search_key"], st.session_state["search_result"] = key, result
    result_: SearchResponse = st.session_state["search_result"]
    return result_


def render_exclusion(result: SearchResponse) -> None:
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


def cached_explanation(key: str, fetch: Callable[[], bytes]) -> bytes:
    """Fetch an explanation PNG once per search; reruns (other widgets) reuse it."""
    if st.session_state.get("explanations_scope") != st.session_state.get("search_key"):
        st.session_state["explanations_scope"] = st.session_state.get("search_key")
        st.session_state["explanations"] = {}
    store: dict[str, bytes] = st.session_state["explanations"]
    if key not in store:
        store[key] = fetch()
    return store[key]


def save_query_section(client: ApiClient, name: str, data: bytes, result: SearchResponse) -> None:
    """Confirm or correct the predicted diagnosis and keep the query as a new case.

    An uncertain prediction never pre-fills the diagnosis (nor is it recorded as the one confirmed).
    """
    trusted = not result.prediction.uncertain
    predicted = (result.prediction.label or "") if trusted else ""
    with st.expander("Save this query as a new case"), st.form("save_query"):
        prompt = (
            "Diagnosis (confirm or correct; ; between labels)"
            if predicted
            else "Diagnosis (; between labels)"
        )
        labels = st.text_input(prompt, predicted, key="save_labels")
        report = st.text_area("Report", "", key="save_report", height=100)
        if st.form_submit_button("Save as a new case"):
            try:
                case = client.add_case(
                    [(name, data)],
                    report or None,
                    [p.strip() for p in labels.split(";") if p.strip()],
                    predicted_label=predicted or None,
                )
                forget_reads("cases:")  # the picker lists the new case on the next run
                st.success(f"Saved as case {case.case_id}; it is searchable now.")
            except ApiError as exc:
                st.error(f"Could not save the case: {exc.message}")


def main() -> None:
    """Draw the search page once; Streamlit reruns it on every interaction."""
    settings = page_settings()
    with api_client(settings) as client:
        health, health_error, options = load_status(client)
        with st.sidebar:
            filters = sidebar_filters(
                modality_options(health, options), body_part_options(options), label_options(options)
            )
            st.divider()
            render_health(client.base_url, health, health_error)

        st.title("Similar case search")
        st.caption(
            "Find past cases that look like your image. A retrieval aid for clinicians, not a diagnosis."
        )
        if st.session_state.get("pending_archive_image") is not None:
            st.session_state["query_mode"] = ARCHIVE

        compare_slot = st.container()  # the compare viewer, over the grid, once a neighbour is picked
        left, middle, right = st.columns([1.05, 2.8, 1.15], gap="small")  # 1366 px: 4 neighbours a row
        with left:
            mode = st.radio("Query source", [UPLOAD, ARCHIVE], key="query_mode")
            upload = None
            image_id: int | None = None
            if mode == UPLOAD:
                upload = st.file_uploader(f"Query image: {ACCEPTED}", type=None, key="query_file")
                if upload is None:
                    st.info(f"Upload a query image ({ACCEPTED}) to search the archive.")
                    return
            else:
                image_id = pick_archived_image(client, thumbnail_fetcher(client, settings))
                if image_id is None:
                    return
            box = region_box_input("upload" if upload is not None else f"image{image_id}")

        presets = options.window_presets if options else {}  # the server's presets (imaging's table)
        filters_key = filters.model_dump_json() + (f":box:{box}" if box else "")
        try:
            with st.spinner("Searching similar cases…"):
                if upload is not None:
                    data = upload.getvalue()
                    digest = hashlib.sha256(data).hexdigest()
                    patient = (
                        str(st.session_state.get("patient_ref") or "") if filters.exclude_patient else ""
                    )
                    result = cached_search(
                        f"upload:{digest}:{upload.name}:{filters_key}:{hashlib.sha256(patient.encode()).hexdigest()}",
                        lambda: client.search(
                            data, upload.name, filters=filters, patient_ref=patient or None, box=box
                        ),
                    )
                else:
                    assert image_id is not None
                    result = cached_search(
                        f"image:{image_id}:{filters_key}",
                        lambda: client.search_by_image(image_id, filters, box),
                    )
        except ApiError as exc:
            code = f" (HTTP {exc.status_code})" if exc.status_code else ""
            with middle:
                st.error(f"Search failed{code}: {exc.message}")
            return

        with left:
            if upload is not None:
                name = upload.name

                def rendered(center: float, width: float) -> bytes:
                    return fetch_render(
                        digest, center, width, client.base_url, settings.timeout, data, name, session_token()
                    )

                render_query(result.query, name, rendered, scope=f"upload:{digest}", presets=presets)
            else:
                assert image_id is not None
                query_image = image_id

                def rendered(center: float, width: float) -> bytes:
                    return fetch_image_render(
                        query_image, center, width, client.base_url, settings.timeout, session_token()
                    )

                render_query(
                    result.query,
                    f"archived image {image_id}",
                    rendered,
                    scope=f"image:{image_id}",
                    presets=presets,
                )
            query_viewer = query_viewer_link(result.query)
            if query_viewer:
                st.link_button("Open query in viewer", query_viewer, help=viewer_help(result.query))
        # Relevance feedback: after "Refine", the refined answer stands in for the search's (same query).
        scope = str(st.session_state.get("search_key"))
        original, result = result, refined_result(scope) or result
        with right:
            render_exclusion(result)
            render_predictions(result.prediction, result.head_prediction)
            query_id, query_image_id = result.query_id, result.query.image_id
            render_head_gradcam(
                result.head_prediction,
                lambda label: cached_explanation(
                    f"gradcam:{label}", lambda: client.explain_gradcam(query_id, query_image_id, label)
                ),
            )
            if upload is not None:
                save_query_section(client, upload.name, data, result)
            pool = f" · {result.candidates:,} pass the filters" if result.candidates is not None else ""
            st.caption(
                f"{len(result.hits)} of {result.index_size:,} indexed images{pool} · encoder {result.encoder} · "
                f"{result.took_ms:.0f} ms"
            )
        with middle:
            sent_patient = str(st.session_state.get("patient_ref") or "") if filters.exclude_patient else ""
            render_refine_bar(
                scope,
                lambda positive, negative, round_number: client.refine(
                    query_id=original.query_id,
                    image_id=None if original.query_id else original.query.image_id,
                    positive=positive,
                    negative=negative,
                    filters=filters,
                    round_number=round_number,
                    patient_ref=sent_patient or None,
                    box=box,
                ),
            )
            origin = f"query:{original.query_id}" if original.query_id else f"image:{original.query.image_id}"
            render_save_marks(
                scope,
                lambda case_id, positive, negative, round_number: client.save_feedback_marks(
                    case_id, origin, positive, negative, round_number
                ),
                original.query.case_id,
            )
            render_hits(
                result.hits,
                thumbnail_fetcher(client, settings),
                query_patient=result.query.patient_ref,
                explain=lambda hit: cached_explanation(
                    f"similarity:{hit.image_id}",
                    lambda: client.explain_similarity(query_id, query_image_id, hit.image_id),
                ),
                mark=lambda hit: render_mark(hit, scope),
                hit_thumbnail=windowed_thumbnails(client, settings, result.query),
                compare=open_compare,
            )
        with compare_slot:
            render_compare(client, settings, result)


main()
