"""Embeddings settings, read from MEDCBIR_EMBEDDINGS_* environment variables when instantiated."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from embeddings.types import EmbeddingsError

# The CPU forward pass: "auto" (the default, for every command) takes ONNX Runtime on CPU when it is
# installed and gives the torch vectors (cosine >= 0.999), else torch; "onnxruntime" insists on it;
# "torch" keeps the torch forward; CUDA always runs torch.
Backend = Literal["torch", "onnxruntime", "auto"]
BACKENDS: tuple[str, ...] = get_args(Backend)


class EmbeddingsSettings(BaseSettings):
    """Which encoder to build, where to run it, with what weights and which forward pass."""

    model_config = SettingsConfigDict(env_prefix="MEDCBIR_EMBEDDINGS_", extra="ignore")

    encoder: str = "efficientnet_lite0"
    device: str | None = None
    batch_size: int = Field(default=32, ge=1)
    checkpoint: Path | None = None
    # Read by the Encoder when it is built without an explicit backend (builders take no backend).
    backend: Backend = "auto"
    # Keep ONNX exports between runs (default_cache_dir(), keyed by a hash of the weights): saves seconds a run.
    onnx_cache: bool = True


def configured_backend() -> Backend:
    """The backend MEDCBIR_EMBEDDINGS_BACKEND asks for, read now; a bad value raises EmbeddingsError."""
    return configured().backend


def configured() -> EmbeddingsSettings:
    """EmbeddingsSettings read now; a bad value raises EmbeddingsError naming the setting."""
    try:
        return EmbeddingsSettings()
    except ValidationError as exc:
        for error in exc.errors():
            if error["loc"] == ("backend",):
                raise EmbeddingsError(
                    f"unknown backend {error['input']!r} in MEDCBIR_EMBEDDINGS_BACKEND; "
                    f"choose one of {', '.join(BACKENDS)}"
                ) from exc
        raise EmbeddingsError(f"invalid MEDCBIR_EMBEDDINGS_* setting: {exc}") from exc
