"""Region queries on the search page: the box input, and the matched box drawn on each neighbour."""

from __future__ import annotations

import io

import streamlit as st
from PIL import Image, ImageDraw

from search_api.schemas import RegionMatch

BOX_COLOUR = (255, 200, 0)


def region_box_input(scope: str) -> str | None:
    """The query box as 'x0,y0,x1,y1' (the query's pixels), or None to search the whole image."""
    with st.expander("Search a region of the image"):
        on = st.checkbox("Search only this box", key=f"region_on_{scope}")
        st.caption("Pixels of the query image: x from the left edge, y from the top (see its size above).")
        left, right = st.columns(2)
        x0 = left.number_input("left (x0)", min_value=0, value=0, step=8, key=f"region_x0_{scope}")
        y0 = right.number_input("top (y0)", min_value=0, value=0, step=8, key=f"region_y0_{scope}")
        x1 = left.number_input("right (x1)", min_value=1, value=128, step=8, key=f"region_x1_{scope}")
        y1 = right.number_input("bottom (y1)", min_value=1, value=128, step=8, key=f"region_y1_{scope}")
    return f"{int(x0)},{int(y0)},{int(x1)},{int(y1)}" if on else None


def draw_region(png: bytes, region: RegionMatch) -> bytes:
    """The thumbnail with the matched box drawn on it (the box is in the full image's pixels)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    sx, sy = image.width / max(region.columns, 1), image.height / max(region.rows, 1)
    x0, y0, x1, y1 = region.box
    ImageDraw.Draw(image).rectangle(
        [x0 * sx, y0 * sy, max(x0 * sx, x1 * sx - 1), max(y0 * sy, y1 * sy - 1)],
        outline=BOX_COLOUR,
        width=max(2, image.width // 100),
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
