"""DICOM tag values read defensively: one bad element never aborts a decode (numbers, text, first values)."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_MAX_TEXT = 1024

FloatArray = npt.NDArray[np.float64]


def _safe(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:
        return None


def _first(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return value[0] if len(value) else None
    return value


def _float(ds: Dataset, keyword: str) -> float | None:
    value = _safe(lambda: _first(ds.get(keyword)))
    try:
        number = float(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _floats(ds: Dataset, keyword: str) -> list[float]:
    """Every finite number of a (multi-valued) numeric element; unreadable values end the list."""
    value = _safe(lambda: ds.get(keyword))
    if value is None:
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    numbers: list[float] = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            break
        if not math.isfinite(number):
            break
        numbers.append(number)
    return numbers


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _safe(lambda: _first(ds.get(keyword)))
    try:
        return int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    """A header value as clean text: str, control/format characters dropped, stripped, capped."""
    value = _safe(lambda: ds.get(keyword))
    if value is None:
        return None
    try:
        if isinstance(value, MultiValue | list | tuple):
            text = "\\".join(str(v) for v in value)
        elif isinstance(value, bytes):
            text = value.decode("latin-1")
        else:
            text = str(value)
    except Exception:
        return None
    cleaned = "".join(ch for ch in text if not unicodedata.category(ch).startswith("C")).strip()
    return cleaned[:_MAX_TEXT] or None


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."
