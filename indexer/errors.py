"""Indexer exceptions; each message says what to do next."""

from __future__ import annotations


class IndexerError(RuntimeError):
    """Base class for indexer errors."""


class ManifestError(IndexerError, ValueError):
    """The manifest CSV is unreadable or lacks a column the user asked for."""


class IndexCorruptError(IndexerError):
    """The saved FAISS index is missing, truncated or fails its checksum; rebuild it from the catalog."""


class EncoderMismatchError(IndexerError):
    """The catalog holds vectors from another encoder than the one asked for; re-index or pick that encoder."""


class NotFoundError(IndexerError, LookupError):
    """The requested case or image does not exist."""


class HeadError(IndexerError):
    """A prediction head or vote calibration cannot be trained from what the catalog holds."""
