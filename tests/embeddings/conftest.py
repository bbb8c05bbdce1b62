"""Shared fixtures for the embeddings tests: real images and one offline lite0 encoder per session."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from embeddings import Encoder


def _as_float(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image.astype(np.float32) / 255.0


@pytest.fixture(scope="session")
def images() -> dict[str, npt.NDArray[np.float32]]:
    """Real photos from scikit-image (bundled with the package, no download)."""
    data = pytest.importorskip("skimage.data")
    return {
        "chelsea": _as_float(data.chelsea()),
        "astronaut": _as_float(data.astronaut()),
        "coffee": _as_float(data.coffee()),
        "camera": _as_float(data.camera()),
        "rocket": _as_float(data.rocket()),
    }


@pytest.fixture(scope="session")
def lite0(real_encoder: Encoder) -> Encoder:
    """The default encoder with its real offline weights, on CPU: the session's one (tests/conftest.py)."""
    return real_encoder
