"""The indexer's front door: Archive, ingest_path, Catalog, VectorIndex, CaseManager and every indexer error."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.archive import Archive
    from indexer.cases import CaseManager
    from indexer.catalog import Catalog
    from indexer.errors import (
        EncoderMismatchError,
        HeadError,
        IndexCorruptError,
        IndexerError,
        ManifestError,
        NotFoundError,
    )
    from indexer.ingest.local import ingest_path
    from indexer.settings import IndexerSettings
    from indexer.vectors.index import VectorIndex

# Resolved on first use, so `import indexer.errors` (or the CLI's --help) does not import torch or faiss.
_HOMES = {
    "Archive": "indexer.archive",
    "CaseManager": "indexer.cases",
    "Catalog": "indexer.catalog",
    "EncoderMismatchError": "indexer.errors",
    "HeadError": "indexer.errors",
    "IndexCorruptError": "indexer.errors",
    "IndexerError": "indexer.errors",
    "IndexerSettings": "indexer.settings",
    "ManifestError": "indexer.errors",
    "NotFoundError": "indexer.errors",
    "VectorIndex": "indexer.vectors.index",
    "ingest_path": "indexer.ingest.local",
}

__all__ = [
    "Archive",
    "CaseManager",
    "Catalog",
    "EncoderMismatchError",
    "HeadError",
    "IndexCorruptError",
    "IndexerError",
    "IndexerSettings",
    "ManifestError",
    "NotFoundError",
    "VectorIndex",
    "ingest_path",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
