"""VOI windows: the explicit `WindowSpec`, the named CT presets, and parsing a caller's window request.

Default window policy (what `load_image(..., window=None)` shows, in this order):

1. the header's VOI: the first VOI LUT Sequence item, else the first Window Center/Width pair with
   its VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID); for enhanced multi-frame objects the
   Frame VOI LUT functional group of the decoded frame (per-frame first, then shared);
2. no usable header VOI and the image is CT in Hounsfield units (a Rescale Intercept, a Rescale
   Type of HU or a Modality LUT is present): the "soft_tissue" preset, W400/L40. Hounsfield units are
   calibrated, so one fixed window gives every CT in the archive the same grey for the same tissue
   whatever the field of view, table or metal in the slice; a percentile window would not, and
   soft tissue is the window most body-CT reading protocols open with;
3. anything else (MR, CR/DX, US grey, NM, CT with raw stored values, ...): a robust percentile
   window, the 0.5th to 99.5th percentile of the modality values (LINEAR_EXACT).

A caller may ask for another window: "header" (same as the default), "header:N" (the N-th header
VOI, 0-based, VOI LUT Sequence items first, then Window Center/Width pairs; ImagingError when the
header has VOIs but not that many, the default policy when it has none), "auto" (always the
percentile window), a preset name (`list_window_presets()`), or a `WindowSpec`. Presets and specs are
in modality units (Hounsfield units for CT). Colour images (RGB, YBR, palette) have no VOI stage and
ignore the window; so do PNG and JPEG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from imaging.types import ImagingError

VOIFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
VOI_FUNCTIONS: tuple[VOIFunction, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

DEFAULT_CT_PRESET = "soft_tissue"
PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class WindowSpec:
    """A VOI window in modality units (HU for CT): PS3.3 C.11.2.1.2 center/width and function."""

    center: float
    width: float
    function: VOIFunction = "LINEAR"

    def __post_init__(self) -> None:
        if self.function not in VOI_FUNCTIONS:
            raise ImagingError(
                f"Unknown VOI LUT function {self.function!r}; use one of {', '.join(VOI_FUNCTIONS)}."
            )
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ImagingError("A window needs a finite center and width.")
        least = 1.0 if self.function == "LINEAR" else 0.0
        if self.width < least or self.width <= 0.0:
            raise ImagingError(
                f"Window width {self.width:g} is invalid for {self.function}: it must be "
                + (">= 1 (PS3.3 C.11.2.1.2)." if self.function == "LINEAR" else "> 0.")
            )


# Published CT windows (width/level in HU), as listed by Radiopaedia's "Windowing (CT)" and common
# reading-room protocols. Keys are the names callers pass as `window=`.
_PRESETS: dict[str, WindowSpec] = {
    "soft_tissue": WindowSpec(center=40, width=400),
    "abdomen": WindowSpec(center=40, width=400),
    "mediastinum": WindowSpec(center=50, width=350),
    "lung": WindowSpec(center=-600, width=1500),
    "bone": WindowSpec(center=300, width=2000),
    "brain": WindowSpec(center=40, width=80),
    "subdural": WindowSpec(center=75, width=215),
    "stroke": WindowSpec(center=40, width=40),
    "temporal_bone": WindowSpec(center=600, width=2800),
    "liver": WindowSpec(center=30, width=150),
    "spine_soft_tissue": WindowSpec(center=50, width=250),
    "angio": WindowSpec(center=170, width=600),
}

_KEYWORDS = ("header", "auto", "default")


def list_window_presets() -> dict[str, WindowSpec]:
    """The named CT window presets a caller may pass as `window=` (a copy; values in HU)."""
    return dict(_PRESETS)


@dataclass(frozen=True)
class WindowRequest:
    """A parsed window request: kind is "default", "header", "auto" or "spec"."""

    kind: Literal["default", "header", "auto", "spec"]
    header_index: int = 0
    spec: WindowSpec | None = None
    preset: str | None = None


def parse_window(window: WindowSpec | str | None) -> WindowRequest:
    """Turn the caller's `window=` argument into a request, or raise ImagingError naming valid values."""
    if window is None:
        return WindowRequest("default")
    if isinstance(window, WindowSpec):
        return WindowRequest("spec", spec=window)
    if not isinstance(window, str):
        raise ImagingError(
            f"window must be a WindowSpec, a preset name or one of {_KEYWORDS}, got {type(window).__name__}."
        )
    name = window.strip().lower().replace("-", "_").replace(" ", "_")
    if name in ("default", "header"):
        return WindowRequest("default")
    if name == "auto":
        return WindowRequest("auto")
    if name.startswith("header:"):
        number = name.removeprefix("header:")
        if number.isdigit():
            return WindowRequest("header", header_index=int(number))
    if name in _PRESETS:
        return WindowRequest("spec", spec=_PRESETS[name], preset=name)
    raise ImagingError(
        f"Unknown window {window[:40]!r}. Valid windows: 'header', 'header:N' (N-th header window, "
        f"0-based), 'auto' (percentiles), a WindowSpec, or a preset: {', '.join(_PRESETS)}."
    )
