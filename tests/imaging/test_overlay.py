"""Heat-map overlays: the map lands where it points, only inside its box, and panels line up."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from imaging.overlay import encode_png, jet, overlay_heatmap, side_by_side, upsample_map


def _right_hot() -> np.ndarray:
    heat = np.zeros((7, 7), dtype=np.float32)
    heat[:, 5:] = 1.0
    return heat


def test_jet_runs_blue_to_red() -> None:
    colours = jet(np.array([0.0, 0.5, 1.0]))
    assert colours.shape == (3, 3)
    assert colours[0].argmax() == 2  # blue
    assert colours[1].argmax() == 1  # green
    assert colours[2].argmax() == 0  # red


def test_upsample_map_fills_only_its_box() -> None:
    canvas = upsample_map(np.ones((7, 7)), 100, 200, box=(0.1, 0.25, 0.9, 0.75))
    assert canvas.shape == (100, 200)
    assert canvas[10:90, 50:150].min() == pytest.approx(1.0)
    assert not canvas[:10].any() and not canvas[90:].any()
    assert not canvas[:, :50].any() and not canvas[:, 150:].any()
    with pytest.raises(ValueError, match="box"):
        upsample_map(np.ones((7, 7)), 10, 10, box=(0.5, 0.0, 0.4, 1.0))


def test_overlay_colours_where_the_map_is_hot_and_leaves_cold_pixels_alone() -> None:
    grey = np.full((300, 600, 3), 0.5, dtype=np.float32)
    rgb = overlay_heatmap(grey, _right_hot(), max_side=200)
    assert rgb.shape == (100, 200, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :60].astype(int), rgb[:, 160:].astype(int)
    assert np.abs(left - 128).max() <= 1  # cold: the image unchanged
    assert (right[..., 0] - right[..., 2]).min() > 60  # hot: red


def test_overlay_follows_the_box() -> None:
    grey = np.full((100, 100, 3), 0.5, dtype=np.float32)
    rgb = overlay_heatmap(grey, np.ones((7, 7)), box=(0.0, 0.0, 1.0, 0.5), max_side=100).astype(int)
    assert (rgb[:, :45, 0] - rgb[:, :45, 2]).min() > 60
    assert np.abs(rgb[:, 55:] - 128).max() <= 1


def test_side_by_side_and_png() -> None:
    a = np.full((40, 30, 3), 255, dtype=np.uint8)
    b = np.zeros((20, 50, 3), dtype=np.uint8)
    joined = side_by_side([a, b], gap=4)
    assert joined.shape == (40, 84, 3)
    assert joined[:, :30].min() == 255 and not joined[:, 30:].any()
    decoded = Image.open(BytesIO(encode_png(joined)))
    assert decoded.format == "PNG" and decoded.size == (84, 40)
