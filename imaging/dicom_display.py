"""The DICOM display pipeline: stored values -> modality LUT -> VOI (header window, LUT or percentiles) -> [0, 1] RGB."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, convert_color_space

from imaging.dicom_tags import _float, _floats, _int, _safe, _short, _text
from imaging.types import (
    CorruptImageError,
    ImagingError,
)
from imaging.windows import DEFAULT_CT_PRESET, PERCENTILES, WindowRequest, list_window_presets

LOGGER = logging.getLogger("imaging.dicom")  # one logger name for the whole DICOM decode
FloatArray = npt.NDArray[np.float64]
_Window = tuple[float | None, float | None, str | None, str]  # center, width, source, voi kind


def _to_display(
    arr: np.ndarray[Any, Any], ds: Dataset, photometric: str, index: int, request: WindowRequest
) -> tuple[npt.NDArray[np.float32], _Window]:
    """Pixels in [0, 1], H x W x 3, and (center, width, source, voi kind) of the window used."""
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, ds)
            depth = _palette_depth(ds, arr.dtype)
        except Exception as exc:
            raise CorruptImageError(f"The DICOM palette colour LUT is unusable ({_short(exc)}).") from exc
        return _scale_unsigned(rgb, depth), (None, None, None, "palette")
    if arr.ndim == 3:
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            arr = convert_color_space(arr, photometric, "RGB")
        elif photometric not in ("RGB", "YBR_ICT", "YBR_RCT", ""):
            LOGGER.info("Treating DICOM colour photometric %s as RGB", photometric)
        depth = _int(ds, "BitsStored") or 8
        if arr.dtype.itemsize == 1:
            depth = 8
        depth = min(max(depth, 1), 8 * arr.dtype.itemsize)
        if arr.dtype.kind == "i":  # signed colour is unusual but legal: shift to 0..2**depth - 1
            arr = arr.astype(np.float64) + float(2 ** (depth - 1))
        return _scale_unsigned(arr[..., :3], depth), (None, None, None, "colour")

    values, in_hounsfield = _apply_modality(arr, ds, index)
    grey, window = _apply_voi(values, ds, index, request, in_hounsfield)
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    grey32 = np.clip(np.nan_to_num(grey, nan=0.0), 0.0, 1.0).astype(np.float32)
    return np.repeat(grey32[..., None], 3, axis=2), window


def _scale_unsigned(arr: np.ndarray[Any, Any], depth: int) -> npt.NDArray[np.float32]:
    top = float(2 ** min(max(depth, 1), 32) - 1)
    out = np.asarray(arr, dtype=np.float64) / top
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def _palette_depth(ds: Dataset, dtype: np.dtype[Any]) -> int:
    """Bits per palette entry; 16-bit tables that only hold 0..255 are really 8-bit (seen in the wild)."""
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    try:
        depth = int(descriptor[2]) if descriptor is not None else 8
    except (TypeError, ValueError, IndexError):
        depth = 8
    if depth > 8:
        every_index = np.arange(min(2 ** (8 * dtype.itemsize), 65536)).astype(dtype)
        if int(np.max(apply_color_lut(every_index, ds))) <= 255:
            depth = 8
    return depth


def _frame_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The item of a functional-group macro (enhanced multi-frame) that applies to frame `index`."""
    try:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame is not None and index < len(per_frame):
            seq = per_frame[index].get(sequence)
            if seq:
                return seq[0]  # type: ignore[no-any-return]
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            seq = shared[0].get(sequence)
            if seq:
                return seq[0]  # type: ignore[no-any-return]
    except Exception:  # a broken functional group is treated as absent
        return None
    return None


def _apply_modality(arr: np.ndarray[Any, Any], ds: Dataset, index: int) -> tuple[FloatArray, bool]:
    """Stored values -> modality values; True when they are Hounsfield units (CT with a modality transform)."""
    values = arr.astype(np.float64)
    is_ct = (_text(ds, "Modality") or "").upper() == "CT"
    lut_seq = _safe(lambda: ds.get("ModalityLUTSequence"))
    if lut_seq:
        lut = _lut_from_item(lut_seq[0], ds)
        if lut is not None:
            return _apply_lut(values, *lut), is_ct
    source = _frame_item(ds, index, "PixelValueTransformationSequence") or ds
    slope = _float(source, "RescaleSlope")
    intercept = _float(source, "RescaleIntercept")
    rescale_type = (_text(source, "RescaleType") or "").upper()
    in_hounsfield = is_ct and (intercept is not None or rescale_type == "HU")
    if slope is None or slope == 0.0:
        slope = 1.0
    return values * slope + (intercept or 0.0), in_hounsfield


def _header_vois(ds: Dataset, index: int) -> list[tuple[str, Any]]:
    """The header's VOI choices in order: VOI LUT Sequence items, then Window Center/Width pairs."""
    choices: list[tuple[str, Any]] = []
    lut_seq = _safe(lambda: ds.get("VOILUTSequence"))
    for item in lut_seq or []:
        lut = _lut_from_item(item, ds)
        if lut is not None:
            choices.append(("lut", lut))
    source = _frame_item(ds, index, "FrameVOILUTSequence") or ds
    centers = _floats(source, "WindowCenter")
    widths = _floats(source, "WindowWidth")
    function = (_text(source, "VOILUTFunction") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    for center, width in zip(centers, widths, strict=False):
        choices.append(("window", (center, width, function)))
    return choices


def _apply_voi(
    values: FloatArray, ds: Dataset, index: int, request: WindowRequest, in_hounsfield: bool
) -> tuple[FloatArray, _Window]:
    """Modality values -> [0, 1] with the requested window (policy in imaging.windows)."""
    if request.kind == "spec" and request.spec is not None:
        spec = request.spec
        source = f"preset:{request.preset}" if request.preset else "request"
        return _window(values, spec.center, spec.width, spec.function), (
            spec.center,
            spec.width,
            source,
            spec.function.lower(),
        )
    if request.kind == "auto":
        return _percentile_window(values)
    choices = _header_vois(ds, index)
    if choices and request.kind == "header":
        position = request.header_index
        if position >= len(choices):
            raise ImagingError(
                f"Header window {position} was requested but the DICOM header has {len(choices)} VOI "
                f"choice(s) (valid: 'header:0'..'header:{len(choices) - 1}')."
            )
        chosen = _apply_header_voi(values, *choices[position])
        if chosen is None:
            raise ImagingError(f"Header window {position} is unusable: its width is not positive.")
        return chosen
    for kind, value in choices:  # an unusable choice (zero width, ...) falls through to the next
        chosen = _apply_header_voi(values, kind, value)
        if chosen is not None:
            return chosen
    if in_hounsfield:
        spec = list_window_presets()[DEFAULT_CT_PRESET]
        return _window(values, spec.center, spec.width, spec.function), (
            spec.center,
            spec.width,
            f"preset:{DEFAULT_CT_PRESET}",
            spec.function.lower(),
        )
    return _percentile_window(values)


def _apply_header_voi(values: FloatArray, kind: str, value: Any) -> tuple[FloatArray, _Window] | None:
    if kind == "lut":
        table, first_mapped = value
        out = _apply_lut(values, table, first_mapped)
        lo, hi = float(table.min()), float(table.max())
        scaled = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
        return scaled, (None, None, "header", "lut")
    center, width, function = value
    least = 1.0 if function == "LINEAR" else 0.0
    if width < least or width <= 0.0:
        return None
    return _window(values, center, width, function), (center, width, "header", function.lower())


def _percentile_window(values: FloatArray) -> tuple[FloatArray, _Window]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values), (None, None, "percentile", "linear_exact")
    lo, hi = (float(v) for v in np.percentile(finite, PERCENTILES))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros_like(values), (lo, 0.0, "percentile", "linear_exact")
    center, width = (lo + hi) / 2.0, hi - lo
    return _window(values, center, width, "LINEAR_EXACT"), (center, width, "percentile", "linear_exact")


def _window(values: FloatArray, center: float, width: float, function: str) -> FloatArray:
    """PS3.3 C.11.2.1.2 windowing to [0, 1]."""
    if function == "SIGMOID":
        with np.errstate(over="ignore"):
            out: FloatArray = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        return out
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width <= 1.0:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _lut_from_item(item: Dataset, ds: Dataset) -> tuple[FloatArray, int] | None:
    """(LUT entries, first mapped value) from a Modality/VOI LUT item, or None when unusable."""
    try:
        descriptor = [int(v) for v in item.LUTDescriptor]
        entries = descriptor[0] or 65536
        first_mapped = descriptor[1]
        if first_mapped >= 32768 and _int(ds, "PixelRepresentation") == 1:
            first_mapped -= 65536  # a signed first-mapped value read through the US VR
        raw = item.LUTData
        if isinstance(raw, bytes | bytearray):
            little = ds.original_encoding[1] is not False
            dtype: np.dtype[Any] = np.dtype("<u2" if little else ">u2")
            if len(raw) == entries and descriptor[2] == 8:
                dtype = np.dtype(np.uint8)
            table = np.frombuffer(bytes(raw), dtype=dtype).astype(np.float64)
        else:
            seq = raw if isinstance(raw, list | tuple | MultiValue) else [raw]
            table = np.asarray([float(v) for v in seq], dtype=np.float64)
        if table.size == 0:
            return None
        return table[:entries], first_mapped
    except Exception as exc:
        LOGGER.info("Ignoring an unusable DICOM LUT (%s)", _short(exc))
        return None


def _apply_lut(values: FloatArray, table: FloatArray, first_mapped: int) -> FloatArray:
    idx = np.clip(np.rint(values) - first_mapped, 0, table.size - 1).astype(np.intp)
    out: FloatArray = table[idx]
    return out
