"""Re-embedding the catalog with another encoder into that encoder's own index, beside the serving one."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embeddings import EmbeddingsError, ImageEncoder
from imaging import ImagingError
from indexer.archive import index_path
from indexer.catalog import Catalog
from indexer.errors import IndexerError
from indexer.settings import IndexerSettings
from indexer.storage.stored import load_stored_image
from indexer.vectors.index import VectorIndex
from indexer.vectors.sync import save_in_step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReindexResult:
    """What one reindex run did."""

    embedded: int
    already: int
    failed: int
    index_path: Path
    index_size: int


def reindex_catalog(
    settings: IndexerSettings, encoder: ImageEncoder, *, batch: int = 32, progress: bool = True
) -> ReindexResult:
    """Embed every catalog image that has no vector from `encoder` yet, store the vectors, then build its index.

    Vectors go to the catalog first (resumable: a rerun embeds only what is missing), and the index
    file is written once, atomically, at the end under the encoder's own name; an API serving another
    encoder keeps its own index file and is never touched. Images whose source can no longer be
    read or decoded are recorded as failures and left out of the new index.
    """
    catalog = Catalog(settings.resolved_database_url)
    try:
        have = catalog.vector_ids(encoder.name)
        total = catalog.stats().images
        embedded = failed = 0
        bar = tqdm(total=total, desc=f"reindex {encoder.name}", unit="img", disable=not progress)
        for rows in catalog.image_sources(batch=batch):
            ids: list[int] = []
            pixels = []
            for image_id, uri, frame, _ in rows:
                if image_id in have:
                    continue
                try:
                    pixels.append(load_stored_image(uri, frame).pixels)
                    ids.append(image_id)
                except (OSError, ImagingError, IndexerError) as exc:
                    failed += 1
                    log.warning("reindex: cannot re-read image %d: %s", image_id, exc)
                    catalog.record_failure(uri, exc)
            if ids:
                try:
                    vectors = encoder.embed(pixels)
                except EmbeddingsError as exc:
                    raise IndexerError(f"the encoder refused a batch while reindexing: {exc}") from exc
                catalog.store_embeddings(encoder.name, ids, np.asarray(vectors, dtype=np.float32))
                embedded += len(ids)
            bar.update(len(rows))
        bar.close()
        generation = catalog.generation()  # the build reads rows at least this new
        vindex = VectorIndex.build_from_catalog(catalog, encoder=encoder.name, dim=encoder.dim)
        vindex.generation = generation
        path = index_path(settings, encoder)
        save_in_step(lambda: vindex, catalog, threading.RLock(), path)
        return ReindexResult(
            embedded=embedded, already=len(have), failed=failed, index_path=path, index_size=len(vindex)
        )
    finally:
        catalog.dispose()
