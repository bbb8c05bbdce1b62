"""Embeddings settings, read from MEDCBIR_EMBEDDINGS_* environment variables when instantiated."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EmbeddingsSettings(BaseSettings):
    """Which encoder to build, where to run it and with what weights."""

    model_config = SettingsConfigDict(env_prefix="MEDCBIR_EMBEDDINGS_", extra="ignore")

    encoder: str = "efficientnet_lite0"
    device: str | None = None
    batch_size: int = Field(default=32, ge=1)
    checkpoint: Path | None = None
