"""Display windows of the API: the CT presets (from imaging's one table), a caller's window request, re-windowing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imaging import DecodedImage, ImageMetadata, WindowSpec, list_window_presets, load_image
from search_api.schemas import DisplayWindow

# Window sliders for CT span air to dense bone, so that every preset fits.
CT_SLIDER_RANGE = (-1024.0, 3071.0)


class InvalidWindowError(ValueError):
    """A window/level request that cannot be honoured (unknown preset, preset for another modality)."""


@dataclass(frozen=True)
class WindowScale:
    """The units a window is given in, and a sensible range for window sliders in those units."""

    units: str
    low: float
    high: float


def window_scale(meta: ImageMetadata, pixels: npt.NDArray[np.float32]) -> WindowScale:
    """Grey DICOM with a VOI window: modality units (HU for CT), re-windowed by imaging from the true
    values; anything else (PNG, JPEG, colour, LUT-only VOI): 0-255 grey levels of the decoded image.
    """
    c, w = meta.window_center, meta.window_width
    grey = pixels.ndim == 3 and bool(np.array_equal(pixels[..., 0], pixels[..., -1]))
    voi = meta.extra.get("voi", "")
    if meta.format == "dicom" and grey and c is not None and w is not None and w > 0 and voi != "lut":
        low, high = c - w, c + w
        if (meta.modality or "").upper() == "CT":
            low, high = min(low, CT_SLIDER_RANGE[0]), max(high, CT_SLIDER_RANGE[1])
        return WindowScale("modality", low, high)
    return WindowScale("display", 0.0, 255.0)


def window_presets() -> dict[str, tuple[float, float]]:
    """The named CT windows (center, width in HU) that imaging knows."""
    return {name: (spec.center, spec.width) for name, spec in list_window_presets().items()}


def resolve_window(
    meta: ImageMetadata,
    center: float | None = None,
    width: float | None = None,
    preset: str | None = None,
) -> DisplayWindow | None:
    """The window asked for: a named CT preset, or center/width (both needed); None when nothing is asked."""
    if preset:
        name = preset.strip().lower().replace("-", "_").replace(" ", "_")
        presets = window_presets()
        if name not in presets:
            known = ", ".join(presets)
            raise InvalidWindowError(f"unknown window preset {preset!r}; choose one of: {known}")
        if (meta.modality or "").upper() != "CT":
            raise InvalidWindowError(
                f"window preset {name!r} is in Hounsfield units and needs a CT image; this one is "
                f"{meta.modality or meta.format}: set window_center and window_width instead"
            )
        c, w = presets[name]
        return DisplayWindow(center=c, width=w, preset=name)
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise InvalidWindowError("send both window_center and window_width, or a preset")
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise InvalidWindowError("window_width must be a positive number and window_center finite")
    return DisplayWindow(center=center, width=width)


def apply_display_window(pixels: npt.NDArray[np.float32], window: DisplayWindow) -> npt.NDArray[np.float32]:
    """Re-window decoded pixels in 0-255 grey levels, for images without a VOI stage (PNG, JPEG, colour)."""
    values = np.clip(pixels.astype(np.float64), 0.0, 1.0) * 255.0
    return np.clip((values - window.center) / window.width + 0.5, 0.0, 1.0).astype(np.float32)


def windowed(
    source: bytes | Path, decoded: DecodedImage, window: DisplayWindow | None, max_pixels: int | None
) -> DecodedImage:
    """The image as it looks through `window`, for display only (the embedding never sees this).

    Grey DICOM is decoded again by imaging with the window as its VOI, from the true modality values
    (so a wider window shows what the default window clipped); MONOCHROME1 stays inverted, as a viewer
    shows it. Other images are re-windowed in 0-255 grey levels.
    """
    if window is None:
        return decoded
    meta = decoded.metadata
    if window_scale(meta, decoded.pixels).units == "modality":
        spec = WindowSpec(center=window.center, width=window.width, function="LINEAR_EXACT")
        return load_image(source, max_pixels=max_pixels, frame=meta.frame_index, window=spec)
    return DecodedImage(pixels=apply_display_window(decoded.pixels, window), metadata=meta)


# The preset names callers may send (imaging's table), for the API's documentation.
PRESET_NAMES: list[str] = list(list_window_presets())
