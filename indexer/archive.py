"""An opened archive: the catalog, the encoder, the vector index and its lock, loaded once and used together."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from embeddings import ImageEncoder, create_encoder
from indexer.catalog import Catalog
from indexer.cleanup import parse_cleanup, with_cleanup
from indexer.governance.pseudonym import load_or_create_key
from indexer.settings import IndexerSettings
from indexer.storage.private import make_data_dir_private
from indexer.vectors.index import VectorIndex
from indexer.vectors.persistence import index_file_lock
from indexer.vectors.sync import CatchUp, refresh, save_in_step

log = logging.getLogger(__name__)


@dataclass
class Archive:
    """Everything a search or an ingest needs; the catalog is the truth, the index its cache."""

    settings: IndexerSettings
    catalog: Catalog
    encoder: ImageEncoder
    index: VectorIndex
    pseudonym_key: bytes
    # Every write to the index and every search of it holds this lock (the server's searches included).
    index_lock: threading.RLock = field(default_factory=threading.RLock)

    @classmethod
    def open(cls, settings: IndexerSettings, encoder: ImageEncoder | None = None) -> Archive:
        """Open (creating when new) the data folder's catalog and index, and load the encoder."""
        make_data_dir_private(settings.data_dir)  # 0700, and 0600/0700 for all it will hold
        catalog = Catalog(settings.resolved_database_url)
        if encoder is None:
            encoder = create_encoder(
                settings.encoder,
                device=settings.device,
                checkpoint=settings.checkpoint,
                batch_size=settings.batch_size,
            )
        encoder = with_cleanup(encoder, parse_cleanup(settings.image_cleanup))
        path = index_path(settings, encoder)
        generation = catalog.generation()  # read first: the index is checked against rows at least this new
        with index_file_lock(path):  # never read a file another process is half-way through replacing
            index = VectorIndex.open(path, catalog, encoder=encoder.name, dim=encoder.dim)
        index.generation = max(index.generation, generation)
        key = load_or_create_key(settings.key_path)
        log.info("archive open: encoder %s, %d vectors", encoder.name, len(index))
        if len(index) == 0:
            others = {name: n for name, n in catalog.encoders().items() if name != encoder.name and n}
            if others:
                log.warning(
                    "this archive's vectors come from another encoder or image clean-up (%s), none from %s: "
                    "open it with the same MEDCBIR_ENCODER / MEDCBIR_IMAGE_CLEANUP, or `medcbir reindex`",
                    ", ".join(f"{name}: {n}" for name, n in sorted(others.items())),
                    encoder.name,
                )
        return cls(settings=settings, catalog=catalog, encoder=encoder, index=index, pseudonym_key=key)

    @property
    def index_path(self) -> Path:
        """Where this encoder's index is saved."""
        return index_path(self.settings, self.encoder)

    def save_index(self) -> None:
        """Persist the index atomically, under its writer lock, in step with the catalog (never older than disk)."""
        save_in_step(lambda: self.index, self.catalog, self.index_lock, self.index_path)

    def refresh_index(self) -> CatchUp:
        """Take in the vectors other processes wrote to (or deleted from) the catalog since the last look."""
        return refresh(lambda: self.index, self.catalog, self.index_lock)

    def close(self) -> None:
        """Release database connections."""
        self.catalog.dispose()


def index_path(settings: IndexerSettings, encoder: ImageEncoder) -> Path:
    """One index file per encoder identity, so switching encoders never mixes vectors."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder.name)
    return settings.data_dir / "index" / f"{safe}.faiss"
