"""Saving and loading a FAISS index: atomic writes, the JSON sidecar (kind, tuning, checksum), memory maps."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from indexer.errors import IndexCorruptError
from indexer.vectors.kinds import IndexSpec, spec_for_kind
from indexer.vectors.tuning import Tuning

# Indexes at least this big are memory-mapped on load (read-only until the first add or remove).
MMAP_MIN_BYTES = 1 << 30


@dataclass(frozen=True)
class LoadedIndex:
    """A verified faiss index read from disk, with the kind and tuning its sidecar recorded."""

    index: faiss.Index
    spec: IndexSpec
    tuning: Tuning
    memory_mapped: bool


def write_index(path: Path, index: faiss.Index, *, encoder: str, spec: IndexSpec, tuning: Tuning) -> None:
    """Write the index, then its sidecar (encoder, dim, count, checksum, kind, tuning), each atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = faiss.serialize_index(index).tobytes()
    meta = {
        "encoder": encoder,
        "dim": int(index.d),
        "count": int(index.ntotal),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "spec": spec.to_dict(),
        "tuning": tuning.to_dict(),
    }
    atomic_write(path, blob)
    atomic_write(meta_path(path), json.dumps(meta, indent=1).encode())


def read_index(path: Path, *, encoder: str, dim: int, mmap: bool | None = None) -> LoadedIndex:
    """Read and verify a saved index; raises IndexCorruptError when it cannot be trusted.

    mmap=None memory-maps indexes of at least 1 GiB (read-only until the first write).
    """
    sidecar = meta_path(path)
    if not path.exists() or not sidecar.exists():
        raise IndexCorruptError(f"no saved index at {path}; it will be rebuilt from the catalog")
    try:
        meta = json.loads(sidecar.read_text())
        size = path.stat().st_size
        use_mmap = size >= MMAP_MIN_BYTES if mmap is None else mmap
        digest, blob = _file_digest(path, keep=not use_mmap)
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"cannot read index {path}: {exc}") from exc
    if digest != meta.get("sha256"):
        raise IndexCorruptError(f"index {path} fails its checksum (truncated or modified)")
    if meta.get("encoder") != encoder or meta.get("dim") != dim:
        raise IndexCorruptError(
            f"index {path} was built by {meta.get('encoder')} (dim {meta.get('dim')}), not {encoder} (dim {dim})"
        )
    try:
        spec = IndexSpec.from_dict(meta["spec"]) if "spec" in meta else spec_for_kind("flat", 0, dim)
        tuning = Tuning.from_dict(meta.get("tuning") or {})
        if use_mmap:
            # IVF lists map through the on-disk hook; flat codes (flat, HNSW storage) through IFC.
            flags = faiss.IO_FLAG_MMAP if spec.needs_training else faiss.IO_FLAG_MMAP_IFC
            flags |= faiss.IO_FLAG_READ_ONLY
            index = faiss.read_index(str(path), flags)
        else:
            index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise IndexCorruptError(f"cannot read index {path}: {exc}") from exc
    return LoadedIndex(index, spec, tuning, use_mmap)


def saved_spec(path: Path) -> IndexSpec | None:
    """The kind recorded beside a saved index (even one that fails its checksum), or None."""
    try:
        return IndexSpec.from_dict(json.loads(meta_path(path).read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def meta_path(path: Path) -> Path:
    """The sidecar's path: the index file's name plus `.json`."""
    return path.with_name(path.name + ".json")


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: a reader sees the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_digest(path: Path, *, keep: bool) -> tuple[str, bytes]:
    if keep:
        blob = path.read_bytes()
        return hashlib.sha256(blob).hexdigest(), blob
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest(), b""
