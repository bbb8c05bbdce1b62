"""Source uris (the one place that makes and parses them) and reading a stored source, or its pixels, back."""

from __future__ import annotations

import re
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote
from urllib.request import url2pathname

from imaging import DecodedImage, WindowSpec, load_image, read_dicom
from indexer.errors import IndexerError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

FILE_SCHEME = "file"
# Separates an archive file's uri from the member's name inside it: `file:///data/a.zip!/study/ct.dcm`.
# `Path.as_uri()` percent-encodes "!", so the first "!/" of a uri always ends the archive's part.
MEMBER_MARK = "!/"
PACS_SCHEME = "pacs"
# Schemes whose stored bytes can be read back here; `pacs://` once a process has installed its reader
# (indexer.storage.pacs_reader.install_pacs_reader), since reading needs the PACS's address and account.
READABLE_SCHEMES = (FILE_SCHEME, PACS_SCHEME)
_PACS_PATH = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9_-]{0,63})/studies/([^/]+)/series/([^/]+)/instances/([^/]+)$"
)
_pacs_reader: Callable[[PacsInstanceUri], bytes] | None = None


class StoredSourceGoneError(IndexerError, FileNotFoundError):
    """A stored image's source file (or the archive holding it, or its member) is no longer there."""


class UnreadableSourceUriError(IndexerError, ValueError):
    """A source uri of a kind this process cannot read back (not a `file://` file or archive member)."""


@dataclass(frozen=True)
class SourceUri:
    """Where a stored image came from: a local file, or a member of a zip or tar archive file.

    `str(uri)` is the form kept in the catalog (`Image.source_uri`, `IngestFailure.source_uri`).
    """

    path: Path
    member: str | None = None
    scheme: str = FILE_SCHEME

    @classmethod
    def of_file(cls, path: Path) -> SourceUri:
        """The uri of a file (made absolute; callers pass resolved paths, as the sources do)."""
        return cls(path if path.is_absolute() else path.absolute())

    @classmethod
    def of_member(cls, archive: Path, member: str) -> SourceUri:
        """The uri of the member named `member` (the raw name, as the archive spells it) of an archive file."""
        return cls(archive if archive.is_absolute() else archive.absolute(), member)

    @staticmethod
    def members_prefix(archive: Path) -> str:
        """How the uri of every member of `archive` starts (to find its rows with a prefix query)."""
        return str(SourceUri.of_member(archive, ""))

    @classmethod
    def parse(cls, uri: str) -> SourceUri:
        """Parse a catalog source uri; raises UnreadableSourceUriError for any other kind than `file://`.

        A bare absolute path (no scheme) is accepted as a file too, as re-reading always did.
        """
        if uri.startswith(f"{FILE_SCHEME}://"):
            container, mark, member = uri[len(FILE_SCHEME) + 3 :].partition(MEMBER_MARK)
            path = Path(url2pathname(container))
            return cls(path, member if mark else None)
        if uri.startswith("/"):
            if MEMBER_MARK in uri and not Path(uri).exists():
                container, _, member = uri.partition(MEMBER_MARK)
                return cls(Path(container), member)
            return cls(Path(uri))
        raise UnreadableSourceUriError(
            f"cannot read {uri!r} back: only {FILE_SCHEME}:// sources (files and archive members) "
            "can be re-read here; re-index the image from where it lives now"
        )

    @property
    def is_member(self) -> bool:
        """True for a member of a zip or tar archive."""
        return self.member is not None

    def __str__(self) -> str:
        base = self.path.as_uri()
        return base if self.member is None else f"{base}{MEMBER_MARK}{self.member}"


@dataclass(frozen=True)
class PacsInstanceUri:
    """Where an image ingested from a PACS lives: the PACS's configured name and the instance's UIDs.

    `str(uri)` is `pacs://NAME/studies/S/series/SE/instances/I` (the DICOMweb path of the instance).
    """

    pacs: str
    study: str
    series: str
    sop: str

    @classmethod
    def parse(cls, uri: str) -> PacsInstanceUri:
        """Parse a `pacs://` uri; UnreadableSourceUriError when it is not one."""
        prefix = f"{PACS_SCHEME}://"
        match = _PACS_PATH.match(uri[len(prefix) :]) if uri.startswith(prefix) else None
        if match is None:
            raise UnreadableSourceUriError(f"{uri!r} is not a pacs://NAME/studies/.../instances/... uri")
        pacs, study, series, sop = match.groups()
        return cls(pacs, unquote(study), unquote(series), unquote(sop))

    @staticmethod
    def pacs_prefix(pacs: str) -> str:
        """How the uri of every instance of one PACS starts."""
        return f"{PACS_SCHEME}://{pacs}/"

    def __str__(self) -> str:
        study, series, sop = (quote(uid, safe=".") for uid in (self.study, self.series, self.sop))
        return f"{PACS_SCHEME}://{self.pacs}/studies/{study}/series/{series}/instances/{sop}"


def is_pacs_uri(uri: str) -> bool:
    """True for the uri of an image ingested from a PACS."""
    return uri.startswith(f"{PACS_SCHEME}://")


def set_pacs_reader(reader: Callable[[PacsInstanceUri], bytes] | None) -> None:
    """Install (or remove) how this process reads a `pacs://` instance back (a WADO-RS retrieval)."""
    global _pacs_reader
    _pacs_reader = reader


def _read_pacs(uri: str) -> bytes:
    if _pacs_reader is None:
        raise UnreadableSourceUriError(
            f"{uri!r} lives in a PACS and this process has no PACS reader: open the archive through "
            "`medcbir serve` or a `medcbir pacs` command, which install one"
        )
    return _pacs_reader(PacsInstanceUri.parse(uri))


def _parsed(uri: str | SourceUri) -> SourceUri:
    return uri if isinstance(uri, SourceUri) else SourceUri.parse(uri)


def stored_exists(uri: str | SourceUri) -> bool:
    """True when the file behind a source (or the archive holding it) is still there; False for uris
    that cannot be read back. The member itself is only looked for when it is read."""
    try:
        source = _parsed(uri)
    except UnreadableSourceUriError:
        return False
    return source.path.is_file()


def local_path(uri: str | SourceUri) -> Path | None:
    """The file on this machine behind a plain-file source, when it is still there; None for archive
    members, other kinds of uri, or files that are gone."""
    try:
        source = _parsed(uri)
    except UnreadableSourceUriError:
        return None
    return source.path if source.member is None and source.path.is_file() else None


def read_stored(uri: str | SourceUri) -> bytes:
    """The bytes of a stored source: a file, or a member of a zip or tar archive.

    Raises StoredSourceGoneError (an OSError) when the file, the archive or the member is gone,
    UnreadableSourceUriError for a kind of uri that cannot be read back, and OSError when the
    archive cannot be read.
    """
    if isinstance(uri, str) and is_pacs_uri(uri):
        return _read_pacs(uri)
    source = _parsed(uri)
    try:
        if source.member is None:
            return source.path.read_bytes()
        return read_archive_member(source.path, source.member)
    except FileNotFoundError as exc:
        if isinstance(exc, StoredSourceGoneError):
            raise
        raise StoredSourceGoneError(
            f"the stored source {source.path.name!r} is gone ({exc.strerror or exc}): put the file back "
            "where it was indexed from, or delete the case and index it again"
        ) from exc


def read_stored_if_present(uri: str | SourceUri) -> bytes | None:
    """The bytes of a stored source, or None when it is gone or cannot be read (callers then fall back,
    e.g. to the stored thumbnail)."""
    try:
        return read_stored(uri)
    except (OSError, UnreadableSourceUriError):
        return None


def read_archive_member(archive: Path, member: str) -> bytes:
    """One member of a zip or tar archive; StoredSourceGoneError when the archive or member is gone."""
    if not archive.is_file():
        raise StoredSourceGoneError(
            f"the archive {archive.name!r} is gone: put it back where it was indexed from, "
            "or delete its cases and index them again"
        )
    gone = StoredSourceGoneError(f"the archive {archive.name!r} no longer has the member {member!r}")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            try:
                return handle.read(member)
            except KeyError as exc:
                raise gone from exc
    try:
        with tarfile.open(archive, mode="r:*") as handle:
            extracted = handle.extractfile(member)
            if extracted is None:
                raise StoredSourceGoneError(f"{archive.name}: member {member!r} is not a regular file")
            return extracted.read()
    except KeyError as exc:
        raise gone from exc
    except tarfile.TarError as exc:
        raise OSError(f"{archive.name} is not a readable zip or tar archive") from exc


def load_stored_image(
    uri: str | SourceUri,
    frame_index: int | None = None,
    *,
    max_pixels: int | None = None,
    window: WindowSpec | str | None = None,
) -> DecodedImage:
    """A stored image decoded again as the ingest decoded it: from the bytes (so the format comes from
    the content, and DICOM without preamble or File Meta is read as it was), at its stored frame.

    Raises what read_stored and imaging.load_image raise.
    """
    return load_image(read_stored(uri), max_pixels=max_pixels, frame=frame_index, window=window)


def load_stored_dataset(uri: str | SourceUri, *, max_pixels: int | None = None) -> Dataset:
    """A stored DICOM source's whole data set read back as the ingest read it (imaging.read_dicom:
    with or without preamble and File Meta, the Transfer Syntax UID set); pixel data left encoded.

    Raises what read_stored and imaging.read_dicom raise.
    """
    return read_dicom(read_stored(uri), max_pixels=max_pixels)
