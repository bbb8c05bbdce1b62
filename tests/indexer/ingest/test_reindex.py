"""`reindex_catalog`: a second encoder's vectors go to image_embeddings and to its own index file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.archive import index_path
from indexer.catalog import Case, Catalog, Image
from indexer.ingest.reindex import reindex_catalog
from indexer.settings import IndexerSettings
from indexer.vectors.index import VectorIndex
from tests.helpers import ThumbnailEncoder
from tests.indexer.evaluation.conftest import write_png


class MeanColourEncoder:
    """Another tiny encoder: the image's mean grey level and its complement, normalised."""

    name = "test-mean-colour"
    dim = 2
    device = "cpu"

    def embed(self, images: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        means = np.array([float(image.mean()) for image in images], dtype=np.float32)
        vectors = np.stack([means, 1.0 - means], axis=1)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _catalog_with_images(tmp_path: Path, settings: IndexerSettings) -> tuple[Catalog, list[int]]:
    first = ThumbnailEncoder()
    catalog = Catalog(settings.resolved_database_url)
    ids = []
    with catalog.session() as session:
        case = Case(case_key="c1")
        session.add(case)
        for i, value in enumerate((30, 120, 220)):
            path = tmp_path / "files" / f"{i}.png"
            write_png(path, value, seed=i)
            row = Image(
                case=case,
                source_uri=path.as_uri(),
                sha256=f"{i:064d}",
                format="png",
                encoder=first.name,
                embedding=np.zeros(first.dim, np.float32).tobytes(),
            )
            session.add(row)
            session.flush()
            ids.append(row.id)
        gone = Image(
            case=case,
            source_uri=(tmp_path / "files" / "deleted.png").as_uri(),
            sha256="f" * 64,
            format="png",
            encoder=first.name,
            embedding=np.zeros(first.dim, np.float32).tobytes(),
        )
        session.add(gone)
    return catalog, ids


def test_reindex_embeds_every_readable_image_into_the_new_encoders_index(tmp_path: Path) -> None:
    settings = IndexerSettings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    catalog, ids = _catalog_with_images(tmp_path, settings)
    encoder = MeanColourEncoder()

    result = reindex_catalog(settings, encoder, progress=False)
    assert (result.embedded, result.already, result.failed) == (3, 0, 1)
    assert result.index_size == 3

    # The first encoder's rows are untouched; the new one has its own vectors, ids and index file.
    assert catalog.encoders() == {ThumbnailEncoder.name: 4, encoder.name: 3}
    assert sorted(catalog.image_ids_where(encoder=encoder.name).tolist()) == ids
    streamed = {
        int(i): v
        for chunk_ids, vectors in catalog.embeddings(encoder.name)
        for i, v in zip(chunk_ids, vectors, strict=True)
    }
    assert sorted(streamed) == ids
    assert streamed[ids[0]][0] < streamed[ids[2]][0]  # dark image has the lower mean grey
    loaded = VectorIndex.load(index_path(settings, encoder), encoder=encoder.name, dim=encoder.dim)
    assert sorted(loaded.ids().tolist()) == ids
    assert result.index_path == index_path(settings, encoder)
    assert result.index_path != index_path(settings, ThumbnailEncoder())  # type: ignore[arg-type]

    # A rerun is resumable: nothing left to embed.
    again = reindex_catalog(settings, encoder, progress=False)
    assert (again.embedded, again.already) == (0, 3)
    catalog.dispose()
