"""Zip and tar members streamed one at a time under a per-member and a per-archive inflation budget."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.errors import IndexerError
from indexer.storage.stored import SourceUri

MIB = 1024**2
_READ_BLOCK = MIB
# Ratios are judged only past these many inflated bytes: a small file of zeros is harmless, and a
# whole archive of compressible DICOM may inflate this much before its overall ratio counts.
MEMBER_RATIO_FLOOR = MIB
ARCHIVE_RATIO_FLOOR = 64 * MIB
# A tar member's compressed cost is measured on the raw stream, which gzip/bz2/xz read ahead in blocks.
_STREAM_SLACK = MIB


class UnsafeSourceError(IndexerError):
    """An archive member that must not be read: absolute path, '..', link, device, or over an inflation budget."""


class ArchiveSettings(BaseSettings):
    """Inflation budgets for zip and tar archives (env prefix MEDCBIR_ARCHIVE_), read when an archive is opened."""

    model_config = SettingsConfigDict(env_prefix="MEDCBIR_ARCHIVE_", extra="ignore")

    max_member_mib: int = Field(
        default=1024, gt=0, description="Largest inflated member (MiB); a bigger one is refused unread."
    )
    max_member_ratio: int = Field(
        default=200,
        gt=0,
        description="A member inflating more than this many times its compressed bytes is a bomb "
        "(zip: from its header, then while reading; tar.gz/bz2/xz and sparse tar: measured while reading).",
    )
    max_ratio: int = Field(
        default=50,
        gt=0,
        description="The whole archive may inflate at most this many times the compressed bytes read so far "
        f"(past {ARCHIVE_RATIO_FLOOR // MIB} MiB); past it the archive is a bomb and the rest is not read.",
    )

    def limits(self) -> ArchiveLimits:
        """The budgets in bytes and ratios, as the readers use them."""
        return ArchiveLimits(self.max_member_mib * MIB, self.max_member_ratio, self.max_ratio)


@dataclass(frozen=True)
class ArchiveLimits:
    """The inflation budgets of one archive read (see ArchiveSettings for their meaning and env names)."""

    max_member_bytes: int
    max_member_ratio: int
    max_ratio: int

    @property
    def max_member_mib(self) -> str:
        """The member budget in MiB, for messages."""
        return f"{self.max_member_bytes / MIB:g}"


class _Budget:
    """Bytes inflated from one archive against the compressed bytes consumed to produce them."""

    def __init__(self, container: Path, limits: ArchiveLimits, consumed: Callable[[], int]) -> None:
        self.container = container
        self.limits = limits
        self.consumed = consumed
        self.inflated = 0
        self.exhausted = False

    def read(self, handle: IO[bytes], name: str, member_compressed: Callable[[], int]) -> bytes:
        """The member's bytes, read a block at a time; raises UnsafeSourceError naming the setting it broke."""
        blocks: list[bytes] = []
        size = 0
        while block := handle.read(_READ_BLOCK):
            size += len(block)
            self.inflated += len(block)
            if size > self.limits.max_member_bytes:
                raise UnsafeSourceError(
                    f"archive member {name!r} inflates past {self.limits.max_member_mib} MiB "
                    "(MEDCBIR_ARCHIVE_MAX_MEMBER_MIB): refused as a bomb; raise the setting if it is genuine"
                )
            packed = max(member_compressed(), 1)
            if size > MEMBER_RATIO_FLOOR and size > self.limits.max_member_ratio * packed:
                raise UnsafeSourceError(
                    f"archive member {name!r} inflates {size / packed:.0f}x (over MEDCBIR_ARCHIVE_MAX_MEMBER_RATIO"
                    f"={self.limits.max_member_ratio}): refused as a bomb; raise the setting if it is genuine"
                )
            self._check_archive(name)
            blocks.append(block)
        return b"".join(blocks)

    def _check_archive(self, name: str) -> None:
        consumed = max(self.consumed(), 1)
        if self.inflated > ARCHIVE_RATIO_FLOOR and self.inflated > self.limits.max_ratio * consumed:
            self.exhausted = True
            raise UnsafeSourceError(
                f"archive {self.container.name} inflated {self.inflated // MIB} MiB from {consumed / MIB:.1f} MiB "
                f"({self.inflated / consumed:.0f}x, over MEDCBIR_ARCHIVE_MAX_RATIO={self.limits.max_ratio}) at "
                f"member {name!r}: refused as a decompression bomb, the rest of the archive was not read; "
                "raise the setting if the archive is genuine"
            )


def refuse(reason: str | Exception) -> Callable[[], bytes]:
    """A reader that raises: UnsafeSourceError(reason) for a text, or the given exception."""

    def reader() -> bytes:
        raise UnsafeSourceError(reason) if isinstance(reason, str) else reason

    return reader


def _check_name(
    raw: str, safe: str | None, is_regular: bool, declared: int, limits: ArchiveLimits
) -> str | None:
    """Why a member is refused before reading it, or None when it may be read."""
    if safe is None:
        return f"archive member {raw!r} has an unsafe path"
    if not is_regular:
        return f"archive member {safe!r} is a link or special file"
    if declared > limits.max_member_bytes:
        return (
            f"archive member {safe!r} declares {declared:,} bytes, over the limit of "
            f"{limits.max_member_mib} MiB (MEDCBIR_ARCHIVE_MAX_MEMBER_MIB)"
        )
    return None


def iter_zip_members(
    path: Path, limits: ArchiveLimits, safe_name: Callable[[str], str | None]
) -> Iterator[tuple[str, str, Callable[[], bytes], int | None]]:
    """(uri, name, reader, size) per zip member; a member is inflated only when its reader is called."""
    container = path.resolve()
    archive = zipfile.ZipFile(path)  # kept open by the readers; closed when the last one is dropped
    read_so_far = 0

    def consumed() -> int:
        return read_so_far

    budget = _Budget(container, limits, consumed)
    for info in archive.infolist():
        if budget.exhausted:
            return
        if info.is_dir():
            continue
        name = safe_name(info.filename)
        uri = str(SourceUri.of_member(container, info.filename))
        mode = (info.external_attr >> 16) & 0o170000
        why = _check_name(info.filename, name, not mode or mode == stat.S_IFREG, info.file_size, limits)
        ratio = info.file_size / info.compress_size if info.compress_size else 0.0
        if why is None and info.file_size > MEMBER_RATIO_FLOOR and ratio > limits.max_member_ratio:
            why = (
                f"archive member {name!r} inflates {ratio:.0f}x (over MEDCBIR_ARCHIVE_MAX_MEMBER_RATIO="
                f"{limits.max_member_ratio}): a zip bomb; raise the setting if it is genuine"
            )
        if why is not None:
            yield uri, name or info.filename, refuse(why), None
            continue
        read_so_far += info.compress_size
        yield uri, name or info.filename, _zip_reader(archive, info, budget), info.file_size


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> Callable[[], bytes]:
    def reader() -> bytes:
        try:
            with archive.open(info) as handle:
                return budget.read(handle, info.filename, lambda: info.compress_size)
        except UnsafeSourceError:
            raise
        except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
            raise OSError(f"archive member {info.filename!r} cannot be read: {exc}") from None

    return reader


def iter_tar_members(
    path: Path, limits: ArchiveLimits, safe_name: Callable[[str], str | None]
) -> Iterator[tuple[str, str, Callable[[], bytes], int | None]]:
    """(uri, name, reader, size) per tar member (any compression), each read under the budget as it passes."""
    container = path.resolve()
    with path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
        budget = _Budget(container, limits, raw.tell)
        for member in archive:
            if member.isdir():
                continue
            uri = str(SourceUri.of_member(container, member.name))
            name = safe_name(member.name)
            why = _check_name(member.name, name, member.isreg(), member.size, limits)
            if why is not None:
                yield uri, name or member.name, refuse(why), None
                continue
            start = raw.tell() - _STREAM_SLACK  # the decompressor reads ahead: never overstate a ratio
            try:
                handle = archive.extractfile(member)
                data = budget.read(handle, member.name, _since(raw, start)) if handle else b""
            except UnsafeSourceError as exc:
                yield uri, name or member.name, refuse(exc), member.size
                if budget.exhausted:
                    return
                continue
            except (OSError, tarfile.TarError, EOFError) as exc:
                yield (
                    uri,
                    name or member.name,
                    refuse(OSError(f"archive member {name!r} cannot be read: {exc}")),
                    None,
                )
                return  # a broken stream cannot be resumed
            yield uri, name or member.name, lambda data=data: data, member.size  # type: ignore[misc]


def _since(raw: IO[bytes], start: int) -> Callable[[], int]:
    """The compressed bytes read from raw since start: what one tar member cost in the stream."""
    return lambda: raw.tell() - start
