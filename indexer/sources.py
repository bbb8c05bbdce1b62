"""Sources of files to ingest: a folder walked recursively, yielding (uri, path) items."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Files with these suffixes (or none) are expected to be images: when they fail, that is recorded.
IMAGE_SUFFIXES = frozenset({"", ".dcm", ".dicom", ".dic", ".ima", ".png", ".jpg", ".jpeg", ".jpe"})
_SNIFF_BYTES = 132


@dataclass(frozen=True)
class SourceItem:
    """One file found by a source: its stable uri, its path, and its path relative to the root."""

    uri: str
    path: Path
    relative: str

    @property
    def expected_image(self) -> bool:
        """True when the name says image (or says nothing): a decode failure is then worth recording."""
        return self.path.suffix.lower() in IMAGE_SUFFIXES or self.path.suffix.lower().lstrip(".").isdigit()

    def read_bytes(self) -> bytes:
        """The file's content."""
        return self.path.read_bytes()


def looks_like_image(path: Path) -> bool:
    """Cheap magic-byte check used to pick up images whose names say otherwise."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff") or head[128:132] == b"DICM"


def iter_folder(root: Path) -> Iterator[SourceItem]:
    """Every regular file under root (hidden files and folders skipped), sorted for stable runs."""
    root = root.resolve()
    if root.is_file():
        yield SourceItem(uri=root.as_uri(), path=root, relative=root.name)
        return
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is neither a file nor a folder: pass the folder of images to index")
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            yield SourceItem(uri=path.as_uri(), path=path, relative=path.relative_to(root).as_posix())
