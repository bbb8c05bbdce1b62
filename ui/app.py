"""The medcbir Streamlit page: upload a query image, see similar past cases; run `streamlit run ui/app.py`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _ensure_importable() -> None:
    """Let `streamlit run ui/app.py` work from a checkout that is not installed (Streamlit adds ui/ only)."""
    if importlib.util.find_spec("ui") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


_ensure_importable()

import streamlit as st  # noqa: E402

from search_api.schemas import HealthOut  # noqa: E402
from ui.client import ApiClient, ApiError  # noqa: E402
from ui.settings import load_settings  # noqa: E402
from ui.views import (  # noqa: E402
    ANY_MODALITY,
    modality_options,
    render_health,
    render_hits,
    render_prediction,
    render_query,
)

ACCEPTED = "DICOM (.dcm, .dicom or no extension), PNG or JPEG"


@st.cache_data(ttl=3600, max_entries=2000, show_spinner=False)
def fetch_thumbnail(url: str, api_url: str, timeout: float) -> bytes:
    """Thumbnail bytes keyed by absolute URL, fetched server-side (the browser may not reach the API)."""
    with ApiClient(api_url, timeout=timeout) as client:
        return client.thumbnail(url)


def main() -> None:
    """Draw the page once; Streamlit reruns it on every interaction."""
    st.set_page_config(page_title="medcbir: similar case search", layout="wide")
    settings = load_settings(sys.argv[1:])
    st.title("medcbir: similar case search")
    st.caption("Find past cases that look like your image. A retrieval aid for clinicians, not a diagnosis.")

    with ApiClient(settings.api_url, timeout=settings.timeout) as client:
        health: HealthOut | None = None
        health_error: ApiError | None = None
        try:
            health = client.health()
        except ApiError as exc:
            health_error = exc

        with st.sidebar:
            render_health(client.base_url, health, health_error)
            st.subheader("Search")
            k = st.slider("Neighbours (k)", min_value=1, max_value=50, value=10, key="k")
            modality = st.selectbox("Modality filter", modality_options(health), key="modality")

        upload = st.file_uploader(f"Query image: {ACCEPTED}", type=None, key="query_file")
        if upload is None:
            st.info(f"Upload a query image ({ACCEPTED}) to search the archive.")
            return

        try:
            with st.spinner("Searching similar cases…"):
                result = client.search(
                    upload.getvalue(),
                    upload.name,
                    k=k,
                    modality=None if modality in (None, ANY_MODALITY) else modality,
                )
        except ApiError as exc:
            code = f" (HTTP {exc.status_code})" if exc.status_code else ""
            st.error(f"Search failed{code}: {exc.message}")
            return

        left, right = st.columns([1, 2])
        with left:
            render_query(result.query, upload.name)
        with right:
            render_prediction(result.prediction)
            st.caption(
                f"{len(result.hits)} of {result.index_size:,} indexed images · encoder {result.encoder} · "
                f"{result.took_ms:.0f} ms"
            )
        st.divider()
        render_hits(
            result.hits,
            lambda path: fetch_thumbnail(client.absolute_url(path), client.base_url, settings.timeout),
        )


main()
