"""The catalog's stored embeddings: the vectors the FAISS index is rebuilt from and re-ranks with."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.generation import CatalogGeneration
from indexer.catalog.models import Image, ImageEmbedding, has_vector_from
from indexer.errors import IndexCorruptError

Chunk = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]


class StoredVectors:
    """Catalog methods over stored vectors (each image's own row vector, and image_embeddings for others).

    With `image_ids_where` these make the Catalog an `indexer.vectors.store.VectorSource`.
    """

    _sessions: sessionmaker[Session]

    def embeddings(self, encoder: str, batch: int = 10_000) -> Iterator[Chunk]:
        """Stream (ids, vectors) of every image embedded by the encoder, in id order."""
        last = 0
        while True:
            with self._sessions() as session:
                rows = session.execute(
                    select(Image.id, Image.embedding)
                    .where(Image.encoder == encoder, Image.id > last)
                    .order_by(Image.id)
                    .limit(batch)
                ).all()
            if not rows:
                break
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            last = int(ids[-1])
            yield ids, vectors
        yield from self._reindexed_embeddings(encoder, batch)

    def _reindexed_embeddings(self, encoder: str, batch: int) -> Iterator[Chunk]:
        last = 0
        while True:
            with self._sessions() as session:
                rows = session.execute(
                    select(ImageEmbedding.image_id, ImageEmbedding.vector)
                    .join(Image, Image.id == ImageEmbedding.image_id)
                    .where(ImageEmbedding.encoder == encoder, Image.encoder != encoder)
                    .where(ImageEmbedding.image_id > last)
                    .order_by(ImageEmbedding.image_id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            last = int(ids[-1])
            yield ids, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def stored_vectors(
        self, ids: npt.NDArray[np.int64], *, encoder: str, dim: int
    ) -> npt.NDArray[np.float32]:
        """The exact stored vectors from `encoder` for ids, in the order given; IndexCorruptError if one is missing."""
        found: dict[int, bytes] = {}
        wanted = [int(i) for i in ids]
        with self._sessions() as session:
            for start in range(0, len(wanted), 1000):
                chunk = wanted[start : start + 1000]
                own = select(Image.id, Image.embedding).where(Image.id.in_(chunk), Image.encoder == encoder)
                extra = select(ImageEmbedding.image_id, ImageEmbedding.vector).where(
                    ImageEmbedding.image_id.in_(chunk), ImageEmbedding.encoder == encoder
                )
                for query in (own, extra):
                    for row_id, blob in session.execute(query):
                        found[int(row_id)] = blob
        missing = [i for i in wanted if i not in found]
        if missing:
            raise IndexCorruptError(
                f"{len(missing)} ids (e.g. {missing[0]}) have no {encoder} vector in the catalog; "
                "run `medcbir rebuild-index`"
            )
        out = np.empty((len(wanted), dim), dtype=np.float32)
        for row, i in enumerate(wanted):
            out[row] = np.frombuffer(found[i], dtype=np.float32)
        return out

    def embedding_of(self, image_id: int, encoder: str) -> npt.NDArray[np.float32] | None:
        """The image's stored vector from `encoder` (its own row or image_embeddings), or None."""
        with self._sessions() as session:
            own = session.execute(
                select(Image.embedding).where(Image.id == image_id, Image.encoder == encoder)
            ).scalar()
            if own is None:
                own = session.execute(
                    select(ImageEmbedding.vector).where(
                        ImageEmbedding.image_id == image_id, ImageEmbedding.encoder == encoder
                    )
                ).scalar()
        return None if own is None else np.frombuffer(own, dtype=np.float32)

    def generation(self) -> int:
        """How many vector rows were ever inserted, deleted or changed (any writer, any encoder)."""
        with self._sessions() as session:
            value = session.scalar(select(CatalogGeneration.generation).where(CatalogGeneration.id == 1))
        return int(value or 0)

    def vector_count(self, encoder: str) -> int:
        """How many images have a vector from `encoder` (what a complete index of it holds)."""
        with self._sessions() as session:
            return int(session.scalar(select(func.count(Image.id)).where(has_vector_from(encoder))) or 0)

    def ids_with_vector(self, ids: npt.NDArray[np.int64], *, encoder: str) -> npt.NDArray[np.int64]:
        """The subset of ids that (still) have a vector from `encoder`, sorted."""
        wanted = [int(i) for i in ids]
        found: list[int] = []
        with self._sessions() as session:
            for start in range(0, len(wanted), 1000):
                chunk = wanted[start : start + 1000]
                found.extend(
                    session.scalars(select(Image.id).where(Image.id.in_(chunk), has_vector_from(encoder)))
                )
        return np.unique(np.asarray(found, dtype=np.int64))

    def vector_ids(self, encoder: str) -> set[int]:
        """Ids of images that already have a vector from `encoder` (row or image_embeddings)."""
        with self._sessions() as session:
            return {int(i) for i in session.scalars(select(Image.id).where(has_vector_from(encoder)))}

    def store_embeddings(self, encoder: str, ids: Sequence[int], vectors: npt.NDArray[np.float32]) -> None:
        """Keep `encoder`'s vectors of existing images in image_embeddings (replacing older ones)."""
        with self._sessions() as session, session.begin():
            wanted = [int(i) for i in ids]
            existing = {
                row.image_id: row
                for row in session.scalars(
                    select(ImageEmbedding).where(
                        ImageEmbedding.encoder == encoder, ImageEmbedding.image_id.in_(wanted)
                    )
                )
            }
            for image_id, vector in zip(wanted, vectors, strict=True):
                blob = np.asarray(vector, dtype=np.float32).tobytes()
                if image_id in existing:
                    existing[image_id].vector = blob
                else:
                    session.add(ImageEmbedding(image_id=image_id, encoder=encoder, vector=blob))
