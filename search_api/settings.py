"""Search API settings, read from MEDCBIR_API_* variables when the app is created."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ApiSettings(BaseSettings):
    """Limits, bind address and security of the HTTP API.

    Authentication is always on. `auth_disabled` (MEDCBIR_API_AUTH_DISABLED=1) is a development mode
    that treats every request as an admin named "dev"; it is honoured only for requests that arrive
    on a loopback address from a loopback client, and the server refuses to start with it on any
    other bind address.
    """

    model_config = SettingsConfigDict(env_prefix="MEDCBIR_API_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 100_000_000
    max_k: int = 100
    jwt_secret: SecretStr | None = None  # default: a random key kept in the data folder (jwt.key)
    token_minutes: int = 30
    auth_disabled: bool = False
    login_attempts_per_minute: int = 10
    cors_origins: list[str] = []  # closed by default: no cross-origin browser access
    max_case_images: int = 20
    # POST /admin/ingest answers when the whole archive is ingested (synchronously): this caps the upload
    # so one request stays a few minutes at most; bigger archives go through `medcbir index`.
    max_ingest_bytes: int = 2 * 1024**3
    # How often the server takes in vectors that other processes (`medcbir index`, another server, the
    # Ray driver, a PACS follower) wrote to or deleted from the catalog; 0 turns following off.
    index_poll_seconds: float = 5.0
    # Addresses (or CIDR networks) of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are
    # believed, comma-separated. Empty: none, so the login limiter and the audit see the real peer.
    trusted_proxies: Annotated[list[str], NoDecode] = []
    # argon2 costs 64 MiB and a core per hash: at most this many sign-ins are checked at once.
    password_hash_concurrency: int = Field(default=2, ge=1)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
