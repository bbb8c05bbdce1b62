"""Imaging settings (env prefix MEDCBIR_IMAGING_), read when a decode asks for them, never at import."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ImagingSettings(BaseSettings):
    """Limits for decoding untrusted images; override with MEDCBIR_IMAGING_MAX_PIXELS."""

    model_config = SettingsConfigDict(env_prefix="MEDCBIR_IMAGING_", extra="ignore")

    max_pixels: int = Field(
        default=100_000_000,
        gt=0,
        description="Largest decoded frame accepted (DICOM: rows*columns*samples; PNG/JPEG: width*height).",
    )
