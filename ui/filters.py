"""The search filter widgets shared by the image and series pages (each page's keys under its own prefix)."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from ui.views import ANY_MODALITY, chosen


@dataclass(frozen=True)
class FilterValues:
    """What the shared filter widgets were set to, as the API's SearchFilters fields."""

    modality: str | None
    body_part: str | None
    label: str | None
    min_similarity: float | None


def filter_widgets(
    modalities: list[str], body_parts: list[str], labels: list[str], *, prefix: str, threshold_help: str
) -> FilterValues:
    """Modality, body part, label and minimum similarity; `threshold_help` explains the threshold, `prefix`
    the widget keys."""
    modality = st.selectbox("Modality filter", modalities, key=f"{prefix}modality")
    body_part = st.selectbox("Body part", body_parts, key=f"{prefix}body_part")
    label = st.selectbox("Diagnosis label", labels, key=f"{prefix}label")
    threshold = st.slider(
        "Minimum similarity",
        min_value=0.0,
        max_value=1.0,
        value=0.0,
        step=0.01,
        key=f"{prefix}min_similarity",
        help=threshold_help,
    )
    return FilterValues(
        modality=None if modality in (None, ANY_MODALITY) else modality,
        body_part=chosen(body_part),
        label=chosen(label),
        min_similarity=float(threshold) if threshold and threshold > 0 else None,
    )


def exclude_patient_widgets(*, prefix: str, what: str, without: str) -> bool:
    """The "exclude the query's own patient" checkbox, and the patient field when it is on."""
    exclude = st.checkbox(
        "Exclude the query's own patient",
        key=f"{prefix}exclude_patient",
        help=f"Leaves out the query patient's {what}: the patient comes from the field below, the DICOM "
        "PatientID, or stored images with the same file or pixels. The answer says when it could not apply.",
    )
    if exclude:
        st.text_input(
            f"Query's patient ({without} without a PatientID)",
            key=f"{prefix}patient_ref",
            help="The patient's ID or its P-... reference; sent with the search and never stored.",
        )
    return bool(exclude)
