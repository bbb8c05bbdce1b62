"""Ray Data worker side: the decode task and the embedding actor, and the row columns they exchange."""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embeddings import EmbeddingsError, ImageEncoder, create_encoder
from imaging import DecodedImage, UnsupportedFormatError
from indexer.cleanup import with_cleanup
from indexer.errors import IndexerError
from indexer.ingest.local import FramePolicy, decode_for_ingest
from indexer.settings import IndexerSettings
from indexer.storage.sources import SourceItem, looks_like_image

log = logging.getLogger(__name__)

EncoderFactory = Callable[[], ImageEncoder]


def encoder_factory(settings: IndexerSettings, batch_size: int | None = None) -> EncoderFactory:
    """A picklable recipe that builds, on each actor, the encoder the settings name."""
    return partial(
        create_encoder,
        settings.encoder,
        device=settings.device,
        checkpoint=settings.checkpoint,
        batch_size=batch_size or settings.batch_size,
    )


_COLUMNS = ("uri", "relative", "sha256", "status", "payload", "vector", "last")


def _empty_columns() -> dict[str, list[Any]]:
    return {name: [] for name in _COLUMNS}


def _add(
    out: dict[str, list[Any]],
    uri: str,
    relative: str,
    sha256: str,
    status: str,
    payload: bytes = b"",
    last: bool = True,
) -> None:
    for name, value in zip(_COLUMNS, (uri, relative, sha256, status, payload, b"", last), strict=True):
        out[name].append(value)


def _to_batch(out: dict[str, list[Any]]) -> dict[str, npt.NDArray[Any]]:
    batch: dict[str, npt.NDArray[Any]] = {}
    for name, values in out.items():
        column = np.empty(len(values), dtype=bool if name == "last" else object)
        column[:] = values
        batch[name] = column
    return batch


def decode_rows(
    batch: dict[str, npt.NDArray[Any]],
    *,
    stored: frozenset[bytes],
    max_pixels: int | None,
    frames: FramePolicy,
) -> dict[str, npt.NDArray[Any]]:
    """Ray task: read (folder files) and hash each file, skip stored content, decode the rest.

    One output row per frame, or one per file that is stored, failed or not an image; `last`
    marks a file's final row so the driver counts files, not frames.
    """
    out = _empty_columns()
    for uri, relative, path, data in zip(
        batch["uri"], batch["relative"], batch["path"], batch["data"], strict=True
    ):
        uri, relative = str(uri), str(relative)
        if path:
            try:
                data = Path(str(path)).read_bytes()
            except OSError as exc:
                _add(out, uri, relative, "", "failed", pickle.dumps(exc))
                continue
        data = bytes(data)
        digest = hashlib.sha256(data)
        sha = digest.hexdigest()
        if digest.digest() in stored:
            _add(out, uri, relative, sha, "stored")
            continue
        result = decode_for_ingest(data, max_pixels, frames)
        if isinstance(result, BaseException):
            item = SourceItem(uri, relative, reader=bytes)
            not_image = isinstance(result, UnsupportedFormatError) and not (
                item.expected_image or looks_like_image(data[:132])
            )
            _add(out, uri, relative, sha, "not_image" if not_image else "failed", _pickle_error(result))
        elif not result:
            _add(out, uri, relative, sha, "empty")
        else:
            for i, frame in enumerate(result):
                _add(out, uri, relative, sha, "decoded", pickle.dumps(frame), last=i == len(result) - 1)
    return _to_batch(out)


def _pickle_error(error: BaseException) -> bytes:
    try:
        return pickle.dumps(error)
    except Exception:  # an exception that cannot cross processes keeps its type name and message
        return pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))


class EmbedRows:
    """Ray actor: builds the encoder once, then embeds the decoded rows of each batch it is given."""

    def __init__(self, factory: EncoderFactory, encoder_name: str, cleanup: tuple[str, ...] = ()) -> None:
        self.encoder = with_cleanup(factory(), cleanup)  # the archive's image clean-up, as in local ingest
        if self.encoder.name != encoder_name:
            raise IndexerError(
                f"the Ray actors built encoder {self.encoder.name!r} but the archive's index is for "
                f"{encoder_name!r}: install the same package and weights on every node"
            )

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Replace each decoded row's pixels by its vector (pixels never travel back to the driver)."""
        status = batch["status"].copy()
        payload = batch["payload"].copy()
        vector = np.empty(len(status), dtype=object)
        vector[:] = [b""] * len(status)
        rows = [i for i, s in enumerate(status) if s == "decoded"]
        frames: list[tuple[DecodedImage, bytes, str]] = [pickle.loads(payload[i]) for i in rows]
        results = self._embed([image.pixels for image, _, _ in frames])
        for i, (image, thumbnail, pixel_digest), result in zip(rows, frames, results, strict=True):
            if isinstance(result, BaseException):
                status[i], payload[i] = "failed", _pickle_error(result)
            else:
                status[i] = "embedded"
                payload[i] = pickle.dumps((image.metadata, thumbnail, pixel_digest))
                vector[i] = np.asarray(result, dtype=np.float32).tobytes()
        return {**batch, "status": status, "payload": payload, "vector": vector}

    def _embed(self, images: list[npt.NDArray[np.float32]]) -> list[npt.NDArray[np.float32] | BaseException]:
        """Embed a batch; when it fails, embed one by one so only the bad image fails (as the local engine)."""
        if not images:
            return []
        try:
            return list(self.encoder.embed(images))
        except Exception as exc:  # MemoryError or a model error on one odd image must not lose its batch
            log.warning(
                "a batch of %d images failed to embed (%s); retrying one by one",
                len(images),
                type(exc).__name__,
            )
        results: list[npt.NDArray[np.float32] | BaseException] = []
        for image in images:
            try:
                results.append(self.encoder.embed([image])[0])
            except EmbeddingsError as exc:
                results.append(exc)
            except Exception as exc:
                results.append(RuntimeError(f"unexpected embedding error ({type(exc).__name__}: {exc})"))
        return results
