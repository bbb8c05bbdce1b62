"""Series queries: every frame of the sent files embedded as slices, searched in two stages over stored series."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from imaging import iter_frames
from indexer.vectors.series import SeriesIndex
from search_api.schemas import SeriesHitOut, SeriesPair, SeriesSearchResponse
from search_api.searcher import Searcher

log = logging.getLogger(__name__)

MAX_SLICES = 500
SHORTLIST = 200


class InvalidSeriesError(ValueError):
    """A series query that cannot be searched: too many slices, mixed modalities, or no frames."""


class SeriesSearcher:
    """Stored images grouped into series (by SeriesInstanceUID, else by source file: the frames of one
    multi-frame object), slices ordered by frame; the grouping is rebuilt when the index changes."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        self._lock = threading.Lock()
        self._built: tuple[int, SeriesIndex, list[list[int]], list[int]] | None = None
        self._keys: list[str] = []

    def search(
        self, files: Sequence[bytes], k: int = 10, max_slices: int | None = None
    ) -> SeriesSearchResponse:
        """The k stored series most like the sent slices (several files, or one multi-frame file);
        at most `max_slices` (default MAX_SLICES) slices, all of one modality."""
        start = time.perf_counter()
        max_slices = max_slices or MAX_SLICES
        frames, modalities = [], set()
        for data in files:
            for frame in iter_frames(data, max_pixels=self.searcher.max_pixels):
                frames.append(frame.pixels)
                if frame.metadata.modality:
                    modalities.add(frame.metadata.modality)
                if len(frames) > max_slices:
                    raise InvalidSeriesError(
                        f"more than {max_slices} slices in one series query; send a subset (every n-th slice)"
                    )
        if not frames:
            raise InvalidSeriesError("no image frames in the sent files; send DICOM, PNG or JPEG slices")
        if len(modalities) > 1:
            raise InvalidSeriesError(
                f"the slices mix modalities ({', '.join(sorted(modalities))}); send one series at a time"
            )
        encoder = self.searcher.archive.encoder
        query = np.concatenate([encoder.embed(frames[i : i + 32]) for i in range(0, len(frames), 32)])
        index, members, cases = self._index()
        hits = index.search(query, k=k, shortlist=SHORTLIST, pairs=3)
        out = []
        for rank, hit in enumerate(hits, start=1):
            images = members[hit.series_id]
            out.append(
                SeriesHitOut(
                    rank=rank,
                    series_key=self._keys[hit.series_id],
                    case_id=cases[hit.series_id],
                    slices=len(images),
                    score=hit.score,
                    pairs=[
                        SeriesPair(query_slice=q, image_id=images[s], similarity=v) for q, s, v in hit.pairs
                    ],
                )
            )
        return SeriesSearchResponse(
            query_slices=len(frames),
            series_indexed=len(index),
            hits=out,
            took_ms=(time.perf_counter() - start) * 1000.0,
        )

    def _index(self) -> tuple[SeriesIndex, list[list[int]], list[int]]:
        archive = self.searcher.archive
        generation = archive.index.generation
        with self._lock:
            if self._built is not None and self._built[0] == generation:
                return self._built[1], self._built[2], self._built[3]
            ids: list[int] = []
            vectors: list[npt.NDArray[np.float32]] = []
            for chunk_ids, chunk in archive.catalog.embeddings(archive.encoder.name):
                ids.extend(int(i) for i in chunk_ids)
                vectors.append(np.asarray(chunk, np.float32))
            if not ids:
                raise InvalidSeriesError("the archive holds no images yet; index some first")
            by_id = dict(zip(ids, np.concatenate(vectors), strict=True))
            rows = archive.catalog.images_by_ids(ids)
            groups: dict[str, list[tuple[int, int]]] = {}
            case_of: dict[str, int] = {}
            for image_id, row in rows.items():
                key = f"series:{row.series_instance_uid}" if row.series_instance_uid else f"file:{row.sha256}"
                groups.setdefault(key, []).append((row.frame_index, image_id))
                case_of[key] = row.case_id
            keys = sorted(groups)
            members = [[image_id for _, image_id in sorted(groups[key])] for key in keys]
            index = SeriesIndex(list(range(len(keys))), [np.stack([by_id[i] for i in m]) for m in members])
            self._keys = keys
            cases = [case_of[key] for key in keys]
            self._built = (generation, index, members, cases)
            log.info("series index: %d series from %d images", len(keys), len(ids))
            return index, members, cases
