"""Search API settings, read from MEDCBIR_API_* variables when the app is created."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """Limits and bind address of the HTTP API."""

    model_config = SettingsConfigDict(env_prefix="MEDCBIR_API_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 100_000_000
    max_k: int = 100
