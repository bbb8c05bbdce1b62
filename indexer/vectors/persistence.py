"""Saving and loading a FAISS index: atomic writes, the JSON sidecar (kind, tuning, checksums, post-processing), the lock."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.errors import IndexCorruptError
from indexer.vectors.index_postprocess import FittedPostprocess
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
    generation: int  # the catalog generation the index was in step with when saved (-1: unknown)
    postprocess: FittedPostprocess | None = None  # the fitted post-processing the index serves


def write_index(
    path: Path,
    index: faiss.Index,
    *,
    encoder: str,
    spec: IndexSpec,
    tuning: Tuning,
    generation: int = -1,
    postprocess: FittedPostprocess | None = None,
) -> None:
    """Write the post-processing state, the index, then its sidecar (encoder, dims, count, checksums,
    kind, tuning, generation, post-processing SPEC and version), each atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = faiss.serialize_index(index).tobytes()
    post_meta: dict[str, Any] = {"spec": "none"}
    if postprocess is not None:
        state = postprocess.to_bytes()
        post_meta = postprocess.meta(state)
        if not (postprocess_path(path).exists() and _recorded_state_digest(path) == post_meta["sha256"]):
            atomic_write(postprocess_path(path), state)  # unchanged since the last save: not rewritten
    meta = {
        "encoder": encoder,
        "dim": int(index.d),
        "input_dim": postprocess.input_dim if postprocess is not None else int(index.d),
        "count": int(index.ntotal),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "spec": spec.to_dict(),
        "tuning": tuning.to_dict(),
        "generation": int(generation),
        "postprocess": post_meta,
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
        meta = _sidecar(sidecar)
        size = path.stat().st_size
        use_mmap = size >= MMAP_MIN_BYTES if mmap is None else mmap
        digest, blob = _file_digest(path, keep=not use_mmap)
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"cannot read index {path} or its sidecar {sidecar.name}: {exc}") from exc
    if digest != meta.get("sha256"):
        raise IndexCorruptError(f"index {path} fails its checksum (truncated or modified)")
    input_dim = meta.get("input_dim", meta.get("dim"))
    if meta.get("encoder") != encoder or input_dim != dim:
        raise IndexCorruptError(
            f"index {path} was built by {meta.get('encoder')} (dim {input_dim}), not {encoder} (dim {dim})"
        )
    try:
        postprocess = _read_postprocess(path, meta.get("postprocess") or {"spec": "none"})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexCorruptError(
            f"cannot read the post-processing state of index {path} ({postprocess_path(path).name}): {exc}"
        ) from exc
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
        generation = int(meta.get("generation", -1))
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexCorruptError(f"cannot read index {path} (its sidecar {sidecar.name}): {exc}") from exc
    return LoadedIndex(index, spec, tuning, use_mmap, generation, postprocess)


def _read_postprocess(path: Path, meta: dict[str, Any]) -> FittedPostprocess | None:
    if str(meta.get("spec", "none")) == "none":
        return None
    return FittedPostprocess.from_saved(meta, postprocess_path(path).read_bytes())


def saved_postprocess(path: Path) -> str | None:
    """The post-processing SPEC recorded beside a saved index (even one that fails its checksum), or None."""
    try:
        return str(_sidecar(meta_path(path))["postprocess"]["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _recorded_state_digest(path: Path) -> str | None:
    try:
        return str(_sidecar(meta_path(path))["postprocess"]["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def postprocess_path(path: Path) -> Path:
    """The fitted post-processing state: the index file's name plus `.postprocess.npz`."""
    return path.with_name(path.name + ".postprocess.npz")


def _sidecar(sidecar: Path) -> dict[str, Any]:
    meta = json.loads(sidecar.read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"the sidecar {sidecar} holds {type(meta).__name__}, not a JSON object")
    return meta


def saved_generation(path: Path) -> int | None:
    """The catalog generation recorded beside a saved index, or None when there is none to read."""
    try:
        return int(_sidecar(meta_path(path))["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


_FILE_LOCKS: dict[Path, tuple[threading.RLock, list[int]]] = {}
_FILE_LOCKS_GUARD = threading.Lock()


@contextmanager
def index_file_lock(path: Path) -> Iterator[None]:
    """Hold the writer lock of an index file (`<index>.lock`, flock): one saver at a time across processes.

    Re-entrant within a process (a thread holding it may take it again); other threads wait.
    """
    import fcntl  # POSIX only, like the rest of the deployment (flock on the data folder's disk)

    key = path.resolve()
    with _FILE_LOCKS_GUARD:
        rlock, state = _FILE_LOCKS.setdefault(key, (threading.RLock(), [0, -1]))
    with rlock:
        if state[0] == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            state[1] = fd
        state[0] += 1
        try:
            yield
        finally:
            state[0] -= 1
            if state[0] == 0:
                fcntl.flock(state[1], fcntl.LOCK_UN)
                os.close(state[1])
                state[1] = -1


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
