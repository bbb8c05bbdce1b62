"""Owner-only file modes (0600 files, 0700 folders) for everything medcbir stores, whatever the umask."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077  # files 0600, folders 0700: the catalog holds reports and password hashes
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def use_private_modes() -> None:
    """From now on this process creates owner-only files and folders (umask 077).

    Set once where an archive or a catalog is opened rather than at each of the many places that
    write (thumbnails, uploads, index files, heads, keys, SQLite's own -wal/-shm files), so a new
    writer cannot forget it.
    """
    os.umask(PRIVATE_UMASK)


def _tighten(path: Path, mode: int) -> None:
    try:
        if path.exists() and path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError as exc:  # a read-only mount: say so, the files stay as they are
        log.warning("could not make %s owner-only (%s); check its permissions", path, exc)


def make_data_dir_private(data_dir: Path) -> None:
    """Create the data folder owner-only (or tighten an existing one made under a looser umask)."""
    use_private_modes()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _tighten(data_dir, 0o700)


def sqlite_path(url: str) -> Path | None:
    """The file of a file-backed SQLite URL; None for PostgreSQL and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    path = unquote(urlparse(url).path)
    if url.startswith("sqlite:////"):
        path = "/" + path.lstrip("/")
    elif path.startswith("/"):
        path = path[1:]  # sqlite:///relative.db
    return Path(path) if path and path != ":memory:" else None


def make_catalog_private(url: str) -> None:
    """Owner-only modes for a SQLite catalog and its -wal/-shm/-journal files (SQLite gives those the
    database file's mode), including ones made earlier under a looser umask."""
    use_private_modes()
    path = sqlite_path(url)
    if path is None:
        return
    for suffix in SQLITE_SUFFIXES:
        _tighten(path.with_name(path.name + suffix), 0o600)
