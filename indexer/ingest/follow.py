"""Following a PACS's change feed (Orthanc `/changes`): stable studies are ingested, deleted ones leave the index."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from indexer.archive import Archive
from indexer.cases import CaseManager
from indexer.governance.audit import record_audit
from indexer.ingest.pacs_sync import sync_pacs
from indexer.storage.dicomweb import DicomwebPacs, PacsError, StudyFilter
from indexer.storage.stored import PacsInstanceUri

log = logging.getLogger(__name__)

# Orthanc 1.10 has no server-side filter on the change type: every change is read, these are acted on.
# Its `/changes` drops a deleted resource's changes (the Deleted one too), so deletions are also found by
# comparing the studies held here with the PACS's, every `reconcile_s`.
STABLE_STUDY = "StableStudy"
DELETED = "Deleted"
DEFAULT_RECONCILE_S = 60.0
_DELETED_LEVELS = frozenset({"Patient", "Study", "Series", "Instance"})


class FollowError(PacsError):
    """The PACS has no change feed medcbir can follow (only Orthanc's `/changes` is followed)."""


@dataclass
class FollowReport:
    """What the follower did since it started."""

    changes: int = 0
    studies_ingested: int = 0
    images_indexed: int = 0
    studies_deleted: int = 0
    cursor: int = 0
    timings_s: list[float] = field(default_factory=list)  # per stable study: fetched + indexed


class OrthancFollower:
    """Reads Orthanc's `/changes` from the cursor stored in the catalog; at-least-once, idempotent.

    The cursor moves only after what a change produced is committed (the study's rows, or its deletion),
    so a kill at any moment replays at most the change in hand, and replaying it adds nothing (ingest
    skips what is stored; a deleted study is already gone).
    """

    def __init__(
        self,
        archive: Archive,
        pacs: DicomwebPacs,
        *,
        page: int = 100,
        reconcile_s: float = DEFAULT_RECONCILE_S,
    ) -> None:
        if pacs.connection.kind != "orthanc":
            raise FollowError(
                f"PACS {pacs.connection.name!r} is kind {pacs.connection.kind!r}: only an Orthanc change feed can "
                "be followed; re-add it with --kind orthanc, or run `medcbir pacs sync --since` on a schedule"
            )
        self.archive = archive
        self.pacs = pacs
        self.page = page
        self.name = pacs.connection.name
        self.report = FollowReport(cursor=archive.catalog.pacs_cursor(self.name))
        self.reconcile_s = reconcile_s
        self._reconciled_at = float("-inf")

    def step(self) -> bool:
        """Handle one page of changes; True when the feed is read to its end.

        Deletions in a row are handled once (one look at which studies are gone), before the cursor
        passes them; changes that ask nothing of medcbir move the cursor at the end of the page.
        """
        answer = self.pacs.orthanc_get("/changes", since=self.report.cursor, limit=self.page)
        deleted = False
        position = self.report.cursor
        for change in answer.get("Changes", []):
            self.report.changes += 1
            kind, level = change.get("ChangeType"), change.get("ResourceType")
            if kind == DELETED and level in _DELETED_LEVELS:
                deleted = True
            elif kind == STABLE_STUDY:
                if deleted:
                    self._forget_deleted_studies()
                    deleted = False
                self._ingest_study(str(change["ID"]))
                self._commit_cursor(int(change["Seq"]))
            position = int(change["Seq"])
        due = time.monotonic() - self._reconciled_at >= self.reconcile_s
        if deleted or due:
            self._forget_deleted_studies()
        done = bool(answer.get("Done", True))
        position = max(position, int(answer.get("Last", position))) if done else position
        if position > self.report.cursor:
            self._commit_cursor(position)
        return done

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> FollowReport:
        """Follow until `stop` is set, reading the feed to its end, then waiting `poll_s` between looks."""
        while not stop.is_set():
            if self.step():
                stop.wait(poll_s)
        return self.report

    def _commit_cursor(self, position: int) -> None:
        with self.archive.catalog.session() as session:
            self.archive.catalog.set_pacs_cursor(session, self.name, position)
        self.report.cursor = position

    def _ingest_study(self, orthanc_id: str) -> None:
        started = time.perf_counter()
        try:
            study = self.pacs.orthanc_get(f"/studies/{orthanc_id}")
        except PacsError as exc:
            if "HTTP 404" in str(exc):  # deleted since: its Deleted change follows
                return
            raise
        uid = (study.get("MainDicomTags") or {}).get("StudyInstanceUID")
        if not uid:
            return
        report = sync_pacs(self.archive, self.pacs, StudyFilter(study=uid), progress=False, workers=0)
        self.report.studies_ingested += 1
        self.report.images_indexed += report.ingest.indexed
        self.report.timings_s.append(time.perf_counter() - started)
        log.info("PACS %s: stable study ingested, %d images", self.name, report.ingest.indexed)

    def _forget_deleted_studies(self) -> None:
        """Remove from the index every study of this PACS that the PACS no longer has (an audit row each)."""
        self._reconciled_at = time.monotonic()
        stored = self.archive.catalog.study_case_ids(PacsInstanceUri.pacs_prefix(self.name))
        if not stored:
            return
        present = set(self.pacs.search_studies())
        cases = CaseManager(self.archive, self.archive.index_lock)
        for uid, case_ids in stored.items():
            if uid in present:
                continue
            removed = sum(cases.delete_case(case_id, f"pacs-follow:{self.name}") for case_id in case_ids)
            record_audit(
                self.archive.catalog,
                action="pacs-study-deleted",
                outcome="success",
                username=f"pacs-follow:{self.name}",
                object=f"pacs:{self.name} study:{uid} images:{removed}",
                client="pacs-follow",
            )
            self.report.studies_deleted += 1
            log.info("PACS %s: a study deleted in the PACS left the index (%d images)", self.name, removed)
