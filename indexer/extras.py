"""require_extra: the one way the indexer and the API import an optional dependency, naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from indexer.errors import IndexerError


class MissingExtraError(IndexerError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def extra_hint(extra: str) -> str:
    """What to run to get an extra, in the words every such message uses."""
    return f"install the {extra} extra: pip install -e '.[{extra}]'"


def require_extra(
    module: str,
    extra: str,
    *,
    needed_for: str | None = None,
    error: type[MissingExtraError] = MissingExtraError,
) -> ModuleType:
    """Import `module`, or raise `error` (a MissingExtraError) saying which extra to install.

    `needed_for` opens the message ("plots need matplotlib: install the eval extra: ...").
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = extra_hint(extra)
        missing = error(f"{needed_for}: {hint}" if needed_for else hint)
        missing.name = module  # as ImportError names what could not be imported
        raise missing from exc
