"""The encoder protocol and the embeddings error hierarchy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


class EmbeddingsError(RuntimeError):
    """Base class for encoder errors; the message says what to do."""


class UnknownEncoderError(EmbeddingsError, KeyError):
    """The encoder name is neither registered nor a timm model name."""


class WeightsNotFoundError(EmbeddingsError):
    """Pretrained weights are neither installed offline nor downloadable; names the package or flag."""


@runtime_checkable
class ImageEncoder(Protocol):
    """Anything that turns display-ready images into L2-normalised float32 vectors."""

    @property
    def name(self) -> str:
        """Registry name plus weight identity, recorded in the catalog beside every vector."""
        ...

    @property
    def dim(self) -> int:
        """Length of each vector."""
        ...

    def embed(self, images: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        """Embed H x W x 3 float32 [0, 1] images into an (N, dim) float32 array of unit rows."""
        ...
