"""Re-embedding the catalog with another encoder into that encoder's own index, beside the serving one."""

from __future__ import annotations

import logging
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from tqdm import tqdm

from embeddings import EmbeddingsError, ImageEncoder
from imaging import ImagingError, load_image
from indexer.archive import index_path
from indexer.catalog import Catalog
from indexer.errors import IndexerError
from indexer.settings import IndexerSettings
from indexer.vectors.index import VectorIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReindexResult:
    """What one reindex run did."""

    embedded: int
    already: int
    failed: int
    index_path: Path
    index_size: int


def read_source(uri: str) -> bytes:
    """The bytes behind a catalog `source_uri`: a `file://` path, or a member of a zip or tar archive
    (`file:///archive.zip!/member`, as indexer.storage.sources names them); other schemes cannot be re-read."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise IndexerError(f"cannot re-read {uri!r}: only file:// sources can be re-embedded; re-index it")
    path = unquote(parsed.path)
    if "!/" not in path or Path(path).is_file():
        return Path(path).read_bytes()
    container, member = path.split("!/", 1)
    return read_archive_member(Path(container), member)


def read_archive_member(container: Path, member: str) -> bytes:
    """One member of a zip or tar archive (OSError when the archive or the member is gone)."""
    if zipfile.is_zipfile(container):
        with zipfile.ZipFile(container) as archive:
            try:
                return archive.read(member)
            except KeyError as exc:
                raise FileNotFoundError(f"{container.name} has no member {member!r}") from exc
    try:
        with tarfile.open(container, mode="r:*") as archive:
            handle = archive.extractfile(member)
            if handle is None:
                raise FileNotFoundError(f"{container.name}: member {member!r} is not a regular file")
            return handle.read()
    except KeyError as exc:
        raise FileNotFoundError(f"{container.name} has no member {member!r}") from exc
    except tarfile.TarError as exc:
        raise OSError(f"{container.name} is not a readable zip or tar archive") from exc


def source_exists(uri: str) -> bool:
    """True when the file behind a `file://` source (or the archive holding it) is still there."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        return False
    path = unquote(parsed.path)
    return Path(path).is_file() or ("!/" in path and Path(path.split("!/", 1)[0]).is_file())


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
                    pixels.append(load_image(read_source(uri), frame=frame).pixels)
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
        vindex = VectorIndex.build_from_catalog(catalog, encoder=encoder.name, dim=encoder.dim)
        path = index_path(settings, encoder)
        vindex.save(path)
        return ReindexResult(
            embedded=embedded, already=len(have), failed=failed, index_path=path, index_size=len(vindex)
        )
    finally:
        catalog.dispose()
