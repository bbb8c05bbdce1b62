"""Reading a `pacs://` instance back with WADO-RS: one DICOMweb client per configured PACS, for this process."""

from __future__ import annotations

import threading

from indexer.catalog import Catalog
from indexer.storage.dicomweb import DicomwebPacs, PacsSettings
from indexer.storage.stored import PacsInstanceUri, set_pacs_reader


class PacsReader:
    """Resolves a uri's PACS name through the catalog and retrieves the instance (clients kept per name)."""

    def __init__(self, catalog: Catalog, settings: PacsSettings | None = None) -> None:
        self.catalog = catalog
        self.settings = settings or PacsSettings()
        self._clients: dict[str, DicomwebPacs] = {}
        self._lock = threading.Lock()

    def client(self, name: str) -> DicomwebPacs:
        """The client of the PACS called `name` (NotFoundError when it is not configured)."""
        with self._lock:
            if name not in self._clients:
                self._clients[name] = DicomwebPacs(self.catalog.pacs_connection(name), self.settings)
            return self._clients[name]

    def __call__(self, uri: PacsInstanceUri) -> bytes:
        from indexer.storage.dicomweb import PacsInstance

        return self.client(uri.pacs).retrieve(PacsInstance(uri.study, uri.series, uri.sop))


def install_pacs_reader(catalog: Catalog, settings: PacsSettings | None = None) -> PacsReader:
    """Let read_stored read `pacs://` uris in this process, through the PACS connections of `catalog`."""
    reader = PacsReader(catalog, settings)
    set_pacs_reader(reader)
    return reader
