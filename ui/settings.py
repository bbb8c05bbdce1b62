"""UI settings: where the search API lives, from the command line, env (MEDCBIR_UI_*) or defaults."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_API_URL = "http://127.0.0.1:8000"


class UiSettings(BaseSettings):
    """Settings of the Streamlit UI; env vars carry the prefix MEDCBIR_UI_ (e.g. MEDCBIR_UI_API_URL)."""

    model_config = SettingsConfigDict(env_prefix="MEDCBIR_UI_", extra="ignore")

    api_url: str = DEFAULT_API_URL
    timeout: float = 60.0


def load_settings(argv: Sequence[str] = ()) -> UiSettings:
    """Read the settings now: `--api-url URL` in argv beats MEDCBIR_UI_API_URL, which beats the default.

    Unknown arguments are ignored, because Streamlit (and pytest, under AppTest) own the rest of argv.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--api-url", dest="api_url", default=None)
    parsed, _unknown = parser.parse_known_args(list(argv))
    settings = UiSettings()
    if parsed.api_url:
        settings = settings.model_copy(update={"api_url": parsed.api_url})
    return settings
