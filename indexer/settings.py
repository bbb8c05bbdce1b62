"""Indexer settings: where the catalog and the index live, read from flags and MEDCBIR_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """The per-user data directory used when neither a flag nor MEDCBIR_DATA_DIR says otherwise."""
    return Path.home() / ".medcbir"


class IndexerSettings(BaseSettings):
    """One data directory holds the SQLite catalog, the FAISS index, thumbnails and the pseudonym key."""

    model_config = SettingsConfigDict(env_prefix="MEDCBIR_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MEDCBIR_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; defaults to a SQLite file in data_dir",
    )
    encoder: str = "efficientnet_lite0"
    checkpoint: Path | None = None
    batch_size: int = 32
    device: str | None = None
    image_cleanup: str = Field(
        default="",
        description="Clean-up before embedding, stored and query images alike: mask_text, crop_body "
        "(comma-separated) or empty; part of the encoder's identity (see indexer.cleanup)",
    )

    # -- the index --------------------------------------------------------------------------
    index_postprocess: str | None = Field(
        default=None,
        description="Label-free post-processing the index is built with (MEDCBIR_INDEX_POSTPROCESS): none, "
        "or steps from pcaw, dba, aqe, rerank joined by '+' (see indexer.vectors.index_postprocess); "
        "unset: `rebuild-index` keeps what the saved index serves",
    )

    @field_validator("index_postprocess")
    @classmethod
    def _known_postprocess(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from indexer.vectors.index_postprocess import parse_postprocess

        return str(parse_postprocess(value))

    @field_validator("image_cleanup")
    @classmethod
    def _known_cleanup(cls, value: str) -> str:
        from indexer.cleanup import parse_cleanup

        return ",".join(parse_cleanup(value))

    @property
    def resolved_database_url(self) -> str:
        """The catalog URL: the configured one, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'catalog.sqlite3').resolve()}"

    @property
    def thumbnail_dir(self) -> Path:
        """Rendered thumbnails, stored under paths derived from content hashes."""
        return self.data_dir / "thumbnails"

    @property
    def key_path(self) -> Path:
        """The secret key for pseudonymous patient references."""
        return self.data_dir / "pseudonym.key"
