"""Why an image matched: kept query images, similarity maps and head Grad-CAM rendered as PNG overlays."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from embeddings import EmbeddingsError
from embeddings.encoder import Encoder
from embeddings.explain import feature_box, grad_cam_of_features, similarity_maps, spatial_features
from imaging import load_image
from imaging.overlay import encode_png, overlay_heatmap, side_by_side
from indexer.archive import Archive
from indexer.cleanup import model_encoder
from indexer.prediction.heads import LinearHead
from indexer.prediction.versions import latest_head
from indexer.storage.stored import read_stored_if_present
from search_api.searcher import NotFoundError

QUERY_ENTRIES = 256
QUERY_BYTES = 256 * 1024 * 1024
QUERY_TTL_S = 30 * 60.0
DEFAULT_SIDE = 384
NO_HEAD = "no trained head: run medcbir train-head"

Pixels = npt.NDArray[np.float32]


class ExplanationUnavailableError(RuntimeError):
    """The served encoder cannot explain its matches (no spatial feature map, e.g. a test encoder)."""


class NoHeadError(LookupError):
    """No prediction head was trained on the served encoder's embeddings."""


class UnknownLabelError(ValueError):
    """A Grad-CAM was asked for a label the head does not predict."""


@dataclass
class _Kept:
    owner: str
    data: bytes
    expires: float


class QueryStore:
    """The raw bytes of recent query images, by random id, for their owner only.

    Bounded three ways: entries, total bytes (least recently used first out) and age. Raw bytes,
    not pixels: keeping them costs the search nothing, and they are decoded only when explained.
    They live in memory only and are never logged.
    """

    def __init__(
        self,
        max_entries: int = QUERY_ENTRIES,
        max_bytes: int = QUERY_BYTES,
        ttl_s: float = QUERY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, _Kept] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)

    def put(self, owner: str, data: bytes) -> str | None:
        """Keep a query image for `owner`; its id, or None when it alone is over the byte budget."""
        if len(data) > self.max_bytes or self.max_entries < 1:
            return None
        query_id = secrets.token_hex(16)
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._entries[query_id] = _Kept(owner, data, now + self.ttl_s)
            self._bytes += len(data)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped.data)
        return query_id

    def get(self, query_id: str, owner: str) -> bytes:
        """The query image kept for `owner`; another user's query is as unknown as an expired one."""
        with self._lock:
            self._expire(self._clock())
            kept = self._entries.get(query_id)
            if kept is None or kept.owner != owner:
                raise NotFoundError(
                    f"query {query_id} does not exist or has expired (kept {self.ttl_s / 60:.0f} minutes); "
                    "search again"
                )
            self._entries.move_to_end(query_id)
            return kept.data

    def _expire(self, now: float) -> None:
        for query_id in [q for q, kept in self._entries.items() if kept.expires <= now]:
            self._bytes -= len(self._entries.pop(query_id).data)


@dataclass(frozen=True)
class Explanation:
    """A PNG overlay and the number it explains (a cosine similarity, or a class probability)."""

    png: bytes
    score: float
    label: str | None = None


class Explainer:
    """Computes explanations for the served encoder over an open archive; knows nothing of HTTP."""

    def __init__(
        self,
        archive: Archive,
        max_pixels: int | None = None,
        queries: QueryStore | None = None,
        head_source: Callable[[], LinearHead | None] | None = None,
    ):
        self.archive = archive
        self.max_pixels = max_pixels
        self.queries = queries or QueryStore()
        # The API passes the Searcher's cached predictors, so one head is loaded and reloaded, not two.
        self._head_source = head_source or (
            lambda: latest_head(archive.settings.data_dir, archive.encoder.name)
        )

    # -- inputs --------------------------------------------------------------------------------

    def query_pixels(self, query_id: str, owner: str) -> Pixels:
        """The decoded pixels of a kept query image, as the search embedded them."""
        return load_image(self.queries.get(query_id, owner), max_pixels=self.max_pixels).pixels

    def image_pixels(self, image_id: int) -> Pixels:
        """An archived image decoded from its source file as at ingest; its thumbnail if the file is gone."""
        row = self.archive.catalog.image(image_id)
        if row is None:
            raise NotFoundError(f"image {image_id} does not exist")
        source = read_stored_if_present(row.source_uri)
        if source is not None:
            return load_image(source, max_pixels=self.max_pixels, frame=row.frame_index).pixels
        thumbnail = self.archive.settings.thumbnail_dir / Path(row.thumbnail_path or "")
        if row.thumbnail_path and thumbnail.is_file():
            return load_image(thumbnail.read_bytes(), max_pixels=self.max_pixels).pixels
        raise NotFoundError(f"image {image_id}: its source file and thumbnail are gone")

    def head(self) -> LinearHead:
        """The newest head trained on the served encoder."""
        head = self._head_source()
        if head is None:
            raise NoHeadError(NO_HEAD)
        return head

    # -- explanations --------------------------------------------------------------------------

    def similarity(self, query: Pixels, neighbour: Pixels, max_side: int = DEFAULT_SIDE) -> Explanation:
        """Query | neighbour side by side, each with the locations that drove their cosine similarity."""
        encoder = self._encoder()
        features = self._features(encoder, [query, neighbour])
        maps = similarity_maps(features[0], features[1])
        panels = [
            overlay_heatmap(image, heat, feature_box(encoder, *image.shape[:2]), max_side)
            for image, heat in ((query, maps.query), (neighbour, maps.neighbour))
        ]
        return Explanation(png=encode_png(side_by_side(panels)), score=maps.similarity)

    def grad_cam(self, pixels: Pixels, label: str | None = None, max_side: int = DEFAULT_SIDE) -> Explanation:
        """Grad-CAM of the head's class `label` (default: its top class for this image) over the image."""
        encoder = self._encoder()
        head = self.head()
        features = self._features(encoder, [pixels])[0]
        pooled = features.mean(axis=(0, 1))
        vector = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        probabilities = head.predict_proba(vector)[0]
        if label is None:
            index = int(np.argmax(probabilities))
        elif label in head.labels:
            index = head.labels.index(label)
        else:
            raise UnknownLabelError(
                f"the head (version {head.version}) does not predict {label!r}; "
                f"choose one of: {', '.join(head.labels)}"
            )
        heat = grad_cam_of_features(features, head.weight[index], float(head.bias[index]))
        png = encode_png(overlay_heatmap(pixels, heat, feature_box(encoder, *pixels.shape[:2]), max_side))
        return Explanation(png=png, score=float(probabilities[index]), label=head.labels[index])

    @staticmethod
    def _features(encoder: Encoder, images: list[Pixels]) -> npt.NDArray[np.float32]:
        try:
            return spatial_features(encoder, images)
        except EmbeddingsError as exc:  # a model that pools otherwise: say so, as for a test encoder
            raise ExplanationUnavailableError(str(exc)) from exc

    def _encoder(self) -> Encoder:
        encoder = model_encoder(self.archive.encoder)
        if not isinstance(encoder, Encoder):
            raise ExplanationUnavailableError(
                f"the served encoder {encoder.name} has no spatial feature maps to explain matches with; "
                "serve a timm CNN encoder such as efficientnet_lite0"
            )
        return encoder
