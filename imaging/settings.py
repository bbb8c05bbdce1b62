"""Imaging settings (env prefix MEDCBIR_IMAGING_), read when a decode asks for them, never at import."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Peak bytes a decode costs per pixel of the largest frame (the raw samples, the float32 RGB result and
# the float intermediates of the display pipeline). Measured with scripts/bench_decode_memory.py:
# ~26-27 B/px for 8-bit RGB and 16-bit grey PNG; rounded up so the budget errs on the safe side.
DECODE_BYTES_PER_PIXEL = 32


class ImagingSettings(BaseSettings):
    """Limits for decoding untrusted images: MEDCBIR_IMAGING_MAX_DECODE_MIB and MEDCBIR_IMAGING_MAX_PIXELS."""

    model_config = SettingsConfigDict(env_prefix="MEDCBIR_IMAGING_", extra="ignore")

    max_pixels: int = Field(
        default=100_000_000,
        gt=0,
        description="Largest decoded frame accepted (DICOM: rows*columns*samples; PNG/JPEG: width*height).",
    )
    max_decode_mib: int = Field(
        default=1024,
        gt=0,
        description="Memory one decode may take (MiB), checked before allocating: caps the pixels at "
        "max_decode_mib * 2**20 / DECODE_BYTES_PER_PIXEL (1024 MiB: ~33.5 Mpx).",
    )

    @property
    def pixel_limit(self) -> int:
        """The pixels one frame may have: the smaller of max_pixels and what the memory budget allows."""
        return min(self.max_pixels, self.max_decode_mib * 2**20 // DECODE_BYTES_PER_PIXEL)
