"""Shared fixtures for the imaging tests: real DICOM from pydicom/pydicom-data, skimage rasters."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed (pip install pydicom-data)")
    return Path(str(path))


@pytest.fixture
def dcm() -> Callable[[str], Path]:
    """Path of a pydicom test file (bundled or pydicom-data) by name; skips when it is not installed."""
    return _pydicom_file


@pytest.fixture(autouse=True)
def _quiet_pydicom() -> Iterator[None]:
    # Several pydicom test files are deliberately non-conformant; their warnings are not under test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture(scope="session")
def retina() -> np.ndarray:
    from skimage import data

    return np.asarray(data.retina())


@pytest.fixture(scope="session")
def ihc() -> np.ndarray:
    from skimage import data

    return np.asarray(data.immunohistochemistry())


@pytest.fixture
def encode() -> Callable[..., bytes]:
    """Encode an array with Pillow into PNG/JPEG bytes."""

    def _encode(arr: np.ndarray, fmt: str, **kwargs: object) -> bytes:
        buffer = BytesIO()
        Image.fromarray(arr).save(buffer, format=fmt, **kwargs)
        return buffer.getvalue()

    return _encode
