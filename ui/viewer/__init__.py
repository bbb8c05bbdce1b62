"""The compare viewer: a Streamlit component on Cornerstone3D (query | neighbour, linked window, frames, overlay)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypedDict

import streamlit.components.v1 as components

BUILD = Path(__file__).parent / "build"
Theme = Literal["light", "dark"]

# The built bundle ships in the package (and in git): a fresh clone needs no node to run the UI.
_component = components.declare_component("medcbir_compare_viewer", path=str(BUILD))


class ViewerEvent(TypedDict, total=False):
    """What the viewer reports: `seq` grows with each event, so a repeated key press is a new event."""

    seq: int
    action: Literal["next", "prev", "window", "frame", "overlay", "close"]
    window: list[float]  # [center, width] in the query's window units
    side: str
    frame: int
    frames: dict[str, int | None]
    overlay: bool
    events: list[dict[str, Any]]  # the last events (this one included), oldest first


class ViewerImage(TypedDict):
    """An image as /images/{id}/pixels or /queries/{id}/pixels sends it (search_api.routes.pixels.PixelsOut)."""

    rows: int
    columns: int
    frames: int
    frame_indices: list[int]
    source_frames: int
    start_frame: int
    units: str
    modality: str | None
    invert: bool
    window_center: float
    window_width: float
    min_value: float
    max_value: float
    pixel_spacing: list[float] | None
    dtype: str
    channels: int  # 1, or 3 for RGB (data is then frames x rows x columns x 3)
    data: str


def compare_viewer(
    query: ViewerImage,
    neighbour: ViewerImage,
    window: tuple[float, float] | None = None,
    overlay: dict[str, Any] | None = None,
    theme: Theme = "light",
    key: str = "compare_viewer",
    *,
    labels: tuple[str, str] = ("Query", "Neighbour"),
    title: str = "",
    report: str = "",
    neighbour_meta: str = "",
    signatures: tuple[str, str] = ("query", "neighbour"),
    has_prev: bool = False,
    has_next: bool = False,
    overlay_on: bool = False,
    overlay_error: str = "",
    cpu: bool = True,
) -> ViewerEvent | None:
    """Draw the viewer; the last event it reported (None before the first).

    `window` (center, width) is set on both sides whenever it changes (a preset of the page); a drag on
    either side changes both when they share units, and is reported as {"action": "window"}. `overlay`
    is the similarity maps of /.../similarity/{id}/maps; `overlay_on` shows them. `signatures` name the
    two images: the viewer reloads a side only when its signature changes. All text is drawn as plain
    text (textContent), never as HTML.
    """
    value = _component(
        query=query,
        neighbour=neighbour,
        window=list(window) if window is not None else None,
        maps=overlay,
        maps_error=overlay_error,
        overlay=overlay_on and overlay is not None,
        theme=theme,
        title=title,
        query_label=labels[0],
        neighbour_label=labels[1],
        report=report,
        neighbour_meta=neighbour_meta,
        query_sig=signatures[0],
        neighbour_sig=signatures[1],
        has_prev=has_prev,
        has_next=has_next,
        cpu=cpu,
        key=key,
        default=None,
    )
    return value if isinstance(value, dict) else None  # type: ignore[return-value]
