"""Bulk sync from a PACS: QIDO-RS lists instances, WADO-RS fetches them (bounded concurrency), the Ingestor ingests."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from indexer.archive import Archive
from indexer.ingest.local import FramePolicy, Ingestor, IngestReport
from indexer.storage.dicomweb import DicomwebPacs, PacsError, PacsInstance, PacsUnreachableError, StudyFilter
from indexer.storage.sources import SourceItem
from indexer.storage.stored import PacsInstanceUri

if TYPE_CHECKING:
    from indexer.ingest.ray import RayOptions
    from indexer.ingest.ray_tasks import EncoderFactory

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    """What one sync did: what the PACS listed, what was already here, and the ingest of the rest."""

    studies: int = 0
    listed: int = 0
    already_here: int = 0
    ingest: IngestReport = field(default_factory=IngestReport)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Instances fetched and ingested per second."""
        return self.ingest.seen / self.elapsed_s if self.elapsed_s > 0 else 0.0


def instance_uri(pacs: str, instance: PacsInstance) -> str:
    """The catalog source uri of an instance of PACS `pacs`."""
    return str(PacsInstanceUri(pacs, instance.study, instance.series, instance.sop))


def _reader(future: Future[bytes]) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return future.result()
        except PacsUnreachableError:
            raise  # the PACS went away: stop the run (it resumes where it stopped)
        except PacsError as exc:  # this instance only: recorded as a failure, the run goes on
            raise OSError(str(exc)) from exc

    return read


def fetched_items(
    pacs: DicomwebPacs, instances: Iterable[PacsInstance], concurrency: int
) -> Iterator[SourceItem]:
    """Items whose bytes are fetched ahead, `concurrency` retrievals at a time, in listing order."""
    name = pacs.connection.name
    concurrency = max(1, concurrency)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="wado") as pool:
        window: deque[tuple[PacsInstance, Future[bytes]]] = deque()
        pending = iter(instances)
        try:
            for instance in pending:
                window.append((instance, pool.submit(pacs.retrieve, instance)))
                if len(window) >= 2 * concurrency:
                    yield _item(name, *window.popleft())
            while window:
                yield _item(name, *window.popleft())
        finally:
            for _, future in window:
                future.cancel()


def _item(name: str, instance: PacsInstance, future: Future[bytes]) -> SourceItem:
    return SourceItem(
        uri=instance_uri(name, instance), relative=f"{instance.sop}.dcm", reader=_reader(future)
    )


def sync_pacs(
    archive: Archive,
    pacs: DicomwebPacs,
    wanted: StudyFilter = StudyFilter(),
    *,
    concurrency: int | None = None,
    progress: bool = True,
    workers: int | None = None,
    frames: FramePolicy = "representative",
    engine: Literal["local", "ray"] = "local",
    ray_options: RayOptions | None = None,
    factory: EncoderFactory | None = None,
) -> SyncReport:
    """Ingest every instance of the matching studies that this archive does not hold yet.

    Resumable: instances already stored (by their PACS uri, or their SOP Instance UID from any source)
    are neither fetched nor ingested again, so a run killed at any moment is finished by the next one.
    Raises PacsUnreachableError when the PACS does not answer (nothing half-done is lost).
    With engine "ray", the instances are still fetched here (WADO-RS, `concurrency` at once) and shipped
    to Ray decode tasks and embedding actors in windows; rows and vectors are written here, by the same
    writer as the local engine (`factory` builds the actors' encoder; default: the archive's settings).
    """
    start = time.perf_counter()
    report = SyncReport()
    name = pacs.connection.name
    studies = pacs.search_studies(wanted)
    report.studies = len(studies)
    listed: list[PacsInstance] = []
    for study in studies:
        try:
            listed.extend(pacs.instances_of_study(study, wanted.modalities))
        except PacsUnreachableError:
            raise
        except PacsError as exc:  # one study the PACS cannot list: recorded, the others go on
            archive.catalog.record_failure(f"{PacsInstanceUri.pacs_prefix(name)}studies/{study}", exc)
    report.listed = len(listed)
    here = archive.catalog.source_uris_with_prefix(PacsInstanceUri.pacs_prefix(name))
    stored_sops = archive.catalog.stored_sop_instance_uids({i.sop for i in listed})
    todo = [i for i in listed if instance_uri(name, i) not in here and i.sop not in stored_sops]
    report.already_here = report.listed - len(todo)
    log.info(
        "PACS %s: %d studies, %d instances listed, %d already here, %d to fetch",
        name,
        report.studies,
        report.listed,
        report.already_here,
        len(todo),
    )
    items = fetched_items(pacs, todo, concurrency or pacs.settings.concurrency)
    if engine == "ray" and not todo:
        report.ingest = IngestReport()  # nothing to fetch: Ray is not started for nothing
    elif engine == "ray":
        from indexer.ingest.ray import RayIngestor

        ray_ingestor = RayIngestor(archive, options=ray_options, factory=factory, frames=frames)
        report.ingest = ray_ingestor.run_items(items, total=len(todo), progress=progress)
    else:
        ingestor = Ingestor(archive, workers=workers, frames=frames)
        report.ingest = ingestor.run(items, total=len(todo), progress=progress)
    report.elapsed_s = time.perf_counter() - start
    return report
