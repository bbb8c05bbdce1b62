"""The indexer's front door names real objects and stays cheap to import."""

from __future__ import annotations

import subprocess
import sys

import indexer


def test_every_front_door_name_resolves_to_its_home() -> None:
    from indexer.archive import Archive
    from indexer.errors import IndexerError
    from indexer.ingest.local import ingest_path
    from indexer.vectors.index import VectorIndex

    assert indexer.Archive is Archive
    assert indexer.VectorIndex is VectorIndex
    assert indexer.ingest_path is ingest_path
    assert indexer.IndexerError is IndexerError
    for name in indexer.__all__:
        assert getattr(indexer, name) is not None


def test_importing_the_errors_does_not_import_torch_or_faiss() -> None:
    code = "import sys, indexer.errors; print('torch' in sys.modules, 'faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]
