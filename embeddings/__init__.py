"""Image embeddings: the encoder registry, timm models with offline weights, batching and devices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embeddings.registry import (
    DEFAULT_ENCODER,
    create_encoder,
    create_encoder_from_settings,
    list_encoders,
    register_encoder,
)
from embeddings.settings import EmbeddingsSettings
from embeddings.types import EmbeddingsError, ImageEncoder, UnknownEncoderError, WeightsNotFoundError

if TYPE_CHECKING:
    from embeddings.encoder import Encoder

__all__ = [
    "DEFAULT_ENCODER",
    "EmbeddingsError",
    "EmbeddingsSettings",
    "Encoder",
    "ImageEncoder",
    "UnknownEncoderError",
    "WeightsNotFoundError",
    "create_encoder",
    "create_encoder_from_settings",
    "list_encoders",
    "register_encoder",
]


def __getattr__(name: str) -> Any:
    # Encoder pulls in torch; load it only when asked for, so `import embeddings` stays light.
    if name == "Encoder":
        from embeddings.encoder import Encoder

        return Encoder
    raise AttributeError(f"module 'embeddings' has no attribute {name!r}")
