"""Sources of files to ingest: folders, and zip/tar archives streamed without unpacking."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from indexer.errors import IndexerError
from indexer.storage.stored import SourceUri

# Files with these suffixes (or none) are expected to be images: when they fail, that is recorded.
IMAGE_SUFFIXES = frozenset({"", ".dcm", ".dicom", ".dic", ".ima", ".png", ".jpg", ".jpeg", ".jpe"})
DEFAULT_MAX_MEMBER_BYTES = 2 * 1024**3
# A zip member that inflates more than this many times its compressed size is treated as a bomb.
MAX_COMPRESSION_RATIO = 200


class UnsafeSourceError(IndexerError):
    """An archive member that must not be read: absolute path, '..', link, device, or absurd size."""


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


def _refuse(reason: str) -> Callable[[], bytes]:
    def reader() -> bytes:
        raise UnsafeSourceError(reason)

    return reader


def safe_member_name(name: str) -> str | None:
    """The normalised member name, or None when it is absolute or climbs out with '..'."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def iter_source(root: Path, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[SourceItem]:
    """Items of a folder, a zip or tar archive, or a single file."""
    root = root.expanduser()
    if root.is_file() and zipfile.is_zipfile(root):
        yield from iter_zip(root, max_member_bytes=max_member_bytes)
    elif root.is_file() and _is_tar(root):
        yield from iter_tar(root, max_member_bytes=max_member_bytes)
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
    return SourceItem(uri=str(SourceUri.of_file(path)), relative=relative, reader=_refuse_with(failure))


def iter_zip(path: Path, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[SourceItem]:
    """Members of a zip file, read one at a time as they are yielded; unsafe members are never read."""
    container = path.resolve()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = safe_member_name(info.filename)
            uri = str(SourceUri.of_member(container, info.filename))
            mode = (info.external_attr >> 16) & 0o170000
            if name is None:
                yield SourceItem(
                    uri, info.filename, _refuse(f"archive member {info.filename!r} has an unsafe path")
                )
            elif mode and mode != stat.S_IFREG:
                yield SourceItem(uri, name, _refuse(f"archive member {name!r} is a link or special file"))
            elif info.file_size > max_member_bytes:
                yield SourceItem(
                    uri,
                    name,
                    _refuse(f"archive member {name!r} declares {info.file_size:,} bytes, over the limit"),
                )
            elif info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
                yield SourceItem(
                    uri,
                    name,
                    _refuse(
                        f"archive member {name!r} inflates {info.file_size / info.compress_size:.0f}x: a zip bomb"
                    ),
                )
            else:
                yield SourceItem(uri, name, _zip_reader(archive, info, max_member_bytes), size=info.file_size)


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> Callable[[], bytes]:
    """Read the member now, while the archive is open (items are consumed in order, a batch at a time)."""
    try:
        with archive.open(info) as handle:
            data = handle.read(limit + 1)  # never trust the declared size alone
    except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
        return _refuse_with(OSError(f"archive member {info.filename!r} cannot be read: {exc}"))
    if len(data) > limit:
        return _refuse(f"archive member {info.filename!r} inflates past {limit:,} bytes")
    return lambda: data


def _refuse_with(exc: OSError) -> Callable[[], bytes]:
    def reader() -> bytes:
        raise exc

    return reader


def iter_tar(path: Path, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[SourceItem]:
    """Members of a tar (any compression), streamed in order; each member's bytes are read as it passes."""
    container = path.resolve()
    with tarfile.open(path, mode="r|*") as archive:
        for member in archive:
            uri = str(SourceUri.of_member(container, member.name))
            name = safe_member_name(member.name)
            if member.isdir():
                continue
            if name is None:
                yield SourceItem(
                    uri, member.name, _refuse(f"archive member {member.name!r} has an unsafe path")
                )
            elif not member.isreg():
                yield SourceItem(uri, name, _refuse(f"archive member {name!r} is a link or special file"))
            elif member.size > max_member_bytes:
                yield SourceItem(
                    uri,
                    name,
                    _refuse(f"archive member {name!r} declares {member.size:,} bytes, over the limit"),
                )
            else:
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                yield SourceItem(uri, name, lambda data=data: data, size=member.size)  # type: ignore[misc]
