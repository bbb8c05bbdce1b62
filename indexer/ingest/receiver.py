"""The DICOM node: a C-STORE / C-ECHO SCP that spools each instance (fsync) before acknowledging it, and the spool worker."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.archive import Archive
from indexer.extras import require_extra
from indexer.ingest.local import Ingestor, IngestReport
from indexer.storage.sources import SourceItem
from indexer.storage.stored import SourceUri

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # "Refused: out of resources": the sender keeps the instance and retries


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Spool:
    """Received instances on disk: `incoming/` until ingested, then kept under `stored/` (their source)."""

    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def stored(self) -> Path:
        return self.root / "stored"

    def stored_path(self, sha256: str) -> Path:
        """Where an instance is kept once ingested (named by content hash, never by DICOM text)."""
        return self.stored / sha256[:2] / f"{sha256}.dcm"

    def write(self, data: bytes) -> Path:
        """Write an instance durably (temp file, fsync, rename, fsync the folder); its incoming path."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256(data).hexdigest()
        final = self.incoming / f"{sha}.dcm"
        temporary = self.incoming / f".{sha}.{threading.get_ident()}.tmp"
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        _fsync_dir(self.incoming)
        return final

    def pending(self) -> list[Path]:
        """Spooled instances not ingested yet, oldest first."""
        if not self.incoming.is_dir():
            return []
        found = [p for p in self.incoming.glob("*.dcm") if p.is_file()]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def items(self, paths: Sequence[Path]) -> Iterator[SourceItem]:
        """Items reading the incoming file under the uri of where it will be kept."""
        for path in paths:
            target = self.stored_path(path.stem)
            yield SourceItem(
                str(SourceUri.of_file(target)), target.name, path.read_bytes, path.stat().st_size
            )

    def keep(self, paths: Sequence[Path]) -> None:
        """Move ingested instances to where their rows say they are."""
        for path in paths:
            target = self.stored_path(path.stem)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


@dataclass
class SpoolWorker:
    """Ingests what the receiver spooled; a crash at any point loses nothing (the spool is re-read)."""

    archive: Archive
    spool: Spool
    report: IngestReport = field(default_factory=IngestReport)

    def drain(self) -> int:
        """Ingest every pending instance once; how many were handled."""
        pending = self.spool.pending()
        if not pending:
            return 0
        done = Ingestor(self.archive, workers=0).run(
            self.spool.items(pending), total=len(pending), progress=False
        )
        self.spool.keep(pending)  # after the rows: a crash before this re-reads them, and ingest skips them
        for name in ("seen", "indexed", "already_indexed", "not_images", "failed"):
            setattr(self.report, name, getattr(self.report, name) + getattr(done, name))
        return len(pending)

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Drain the spool until `stop` is set."""
        while not stop.is_set():
            if not self.drain():
                stop.wait(poll_s)


class DicomReceiver:
    """A pynetdicom Storage SCP (every storage SOP class) with Verification, spooling before it answers."""

    def __init__(
        self, spool: Spool, aet: str = "MEDCBIR", allowed_aets: Sequence[str] = (), *, host: str = "127.0.0.1"
    ) -> None:
        pynetdicom = require_extra("pynetdicom", "pacs", needed_for="the DICOM receiver needs pynetdicom")
        sop = require_extra("pynetdicom.sop_class", "pacs")
        self.spool, self.host = spool, host
        self.ae: Any = pynetdicom.AE(ae_title=aet)
        for context in pynetdicom.AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, pynetdicom.ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(sop.Verification)
        if allowed_aets:
            self.ae.require_calling_aet = list(allowed_aets)
        self._server: Any = None
        self._events = pynetdicom.evt

    def _on_store(self, event: Any) -> int:
        try:
            self.spool.write(event.encoded_dataset(include_meta=True))
        except Exception:  # a full disk or a broken data set: refuse, so the sender keeps it
            log.exception("could not spool a received instance; refused it")
            return OUT_OF_RESOURCES
        return SUCCESS

    def _on_rejected(self, event: Any) -> None:
        log.warning(
            "rejected an association from calling AE %r (not in the allowed AE titles)",
            event.assoc.requestor.ae_title,
        )

    def start(self, port: int) -> None:
        """Listen on `port` in background threads."""
        handlers = [
            (self._events.EVT_C_STORE, self._on_store),
            (self._events.EVT_REJECTED, self._on_rejected),
        ]
        self._server = self.ae.start_server((self.host, port), block=False, evt_handlers=handlers)

    def stop(self) -> None:
        """Stop listening (associations in progress end)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
