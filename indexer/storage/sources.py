"""Sources of files to ingest: folders, and zip/tar archives streamed without unpacking."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from indexer.storage.archives import (
    ArchiveLimits,
    ArchiveSettings,
    UnsafeSourceError,  # noqa: F401 (re-exported: where callers import it from)
    iter_tar_members,
    iter_zip_members,
    refuse,
)
from indexer.storage.stored import SourceUri

# Files with these suffixes (or none) are expected to be images: when they fail, that is recorded.
IMAGE_SUFFIXES = frozenset({"", ".dcm", ".dicom", ".dic", ".ima", ".png", ".jpg", ".jpeg", ".jpe"})


def _expected_image(name: str) -> bool:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix.lstrip(".").isdigit()


@dataclass(frozen=True)
class SourceItem:
    """One file found by a source: a stable uri, its path relative to the source root, and a reader."""

    uri: str
    relative: str
    reader: Callable[[], bytes] = field(repr=False, compare=False)
    size: int | None = None

    @property
    def expected_image(self) -> bool:
        """True when the name says image (or says nothing): a decode failure is then worth recording."""
        return _expected_image(self.relative)

    def read_bytes(self) -> bytes:
        """The content; raises OSError or UnsafeSourceError when it cannot or must not be read."""
        return self.reader()


def looks_like_image(head: bytes) -> bool:
    """Cheap magic-byte check used to pick up images whose names say otherwise."""
    return head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff") or head[128:132] == b"DICM"


def safe_member_name(name: str) -> str | None:
    """The normalised member name, or None when it is absolute or climbs out with '..'."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def iter_source(
    root: Path, *, max_member_bytes: int | None = None, limits: ArchiveLimits | None = None
) -> Iterator[SourceItem]:
    """Items of a folder, a zip or tar archive, or a single file.

    Archive members are inflated under `limits` (default: ArchiveSettings, MEDCBIR_ARCHIVE_*);
    `max_member_bytes` overrides the member budget alone.
    """
    root = root.expanduser()
    if root.is_file() and zipfile.is_zipfile(root):
        yield from iter_zip(root, max_member_bytes=max_member_bytes, limits=limits)
    elif root.is_file() and _is_tar(root):
        yield from iter_tar(root, max_member_bytes=max_member_bytes, limits=limits)
    else:
        yield from iter_folder(root)


def count_items(root: Path) -> int | None:
    """How many items iter_source will yield, when that is cheap to know (None for compressed tars)."""
    root = root.expanduser()
    if root.is_file() and zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as archive:
            return sum(1 for info in archive.infolist() if not info.is_dir())
    if root.is_file() and _is_tar(root):
        return None
    return sum(1 for _ in iter_folder(root))


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def iter_folder(root: Path) -> Iterator[SourceItem]:
    """Every regular file under root (hidden files and folders, and symlinks, skipped), sorted."""
    root = root.resolve()
    if root.is_file():
        yield SourceItem(
            uri=str(SourceUri.of_file(root)),
            relative=root.name,
            reader=root.read_bytes,
            size=root.stat().st_size,
        )
        return
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is neither a file, a folder nor an archive: pass what to index")
    unreadable: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable.append, followlinks=False):
        while (
            unreadable
        ):  # a folder os.walk could not list: an item whose read says why (recorded, not skipped)
            yield _unreadable_folder(root, unreadable.pop(0))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                continue
            yield SourceItem(
                uri=str(SourceUri.of_file(path)),
                relative=path.relative_to(root).as_posix(),
                reader=path.read_bytes,
                size=info.st_size,
            )


def _unreadable_folder(root: Path, error: OSError) -> SourceItem:
    path = Path(error.filename or root)
    relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    failure = OSError(
        f"folder {relative!r} cannot be listed ({error.strerror or error}): its files were not indexed; "
        "give the indexing user read and execute permission on it and index again"
    )
    return SourceItem(uri=str(SourceUri.of_file(path)), relative=relative, reader=refuse(failure))


def iter_zip(
    path: Path, *, max_member_bytes: int | None = None, limits: ArchiveLimits | None = None
) -> Iterator[SourceItem]:
    """Members of a zip file, each inflated (under the budgets) only when read; unsafe members are never read."""
    for uri, name, reader, size in iter_zip_members(
        path, _limits(limits, max_member_bytes), safe_member_name
    ):
        yield SourceItem(uri, name, reader, size=size)


def iter_tar(
    path: Path, *, max_member_bytes: int | None = None, limits: ArchiveLimits | None = None
) -> Iterator[SourceItem]:
    """Members of a tar (any compression), streamed in order; each read under the budgets as it passes."""
    for uri, name, reader, size in iter_tar_members(
        path, _limits(limits, max_member_bytes), safe_member_name
    ):
        yield SourceItem(uri, name, reader, size=size)


def _limits(limits: ArchiveLimits | None, max_member_bytes: int | None) -> ArchiveLimits:
    limits = limits or ArchiveSettings().limits()
    return replace(limits, max_member_bytes=max_member_bytes) if max_member_bytes is not None else limits
