"""Following a PACS: Orthanc's `/changes` feed, or QIDO-RS polling by study date for a plain DICOMweb server."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

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
# A plain DICOMweb server has no deletion feed: deletions are found by listing all of its studies, which
# costs more on a large archive, so it is done less often by default.
DEFAULT_QIDO_RECONCILE_S = 3600.0
DEFAULT_LOOKBACK_DAYS = 2
_DELETED_LEVELS = frozenset({"Patient", "Study", "Series", "Instance"})


class FollowError(PacsError):
    """The PACS cannot be followed the way that was asked (e.g. a `/changes` feed of a non-Orthanc)."""


@dataclass
class FollowReport:
    """What the follower did since it started."""

    changes: int = 0  # Orthanc: changes read; QIDO polling: studies looked at
    polls: int = 0
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
        ingest_study(self.archive, self.pacs, uid, self.report)
        self.report.timings_s[-1] = time.perf_counter() - started  # from the look at the change on

    def _forget_deleted_studies(self) -> None:
        self._reconciled_at = time.monotonic()
        forget_deleted_studies(self.archive, self.pacs, self.report)


def forget_deleted_studies(archive: Archive, pacs: DicomwebPacs, report: FollowReport) -> None:
    """Remove from the index every study of this PACS that the PACS no longer has (an audit row each):
    one listing of all its studies, then one query by UID for each study held here that it left out."""
    name = pacs.connection.name
    stored = archive.catalog.study_case_ids(PacsInstanceUri.pacs_prefix(name))
    if not stored:
        return
    present = set(pacs.search_studies())
    cases = CaseManager(archive, archive.index_lock)
    for uid, case_ids in stored.items():
        # a study missing from the listing is asked for by its UID before it leaves: a PACS that cuts its
        # answers short (a result cap) must not empty the index
        if uid in present or pacs.search_studies(StudyFilter(study=uid)):
            continue
        removed = sum(cases.delete_case(case_id, f"pacs-follow:{name}") for case_id in case_ids)
        record_audit(
            archive.catalog,
            action="pacs-study-deleted",
            outcome="success",
            username=f"pacs-follow:{name}",
            object=f"pacs:{name} study:{uid} images:{removed}",
            client="pacs-follow",
        )
        report.studies_deleted += 1
        log.info("PACS %s: a study deleted in the PACS left the index (%d images)", name, removed)


def ingest_study(archive: Archive, pacs: DicomwebPacs, uid: str, report: FollowReport) -> None:
    """Ingest what this archive lacks of one study (idempotent: stored instances are skipped)."""
    started = time.perf_counter()
    synced = sync_pacs(archive, pacs, StudyFilter(study=uid), progress=False, workers=0)
    report.studies_ingested += 1
    report.images_indexed += synced.ingest.indexed
    report.timings_s.append(time.perf_counter() - started)
    log.info("PACS %s: study ingested, %d images", pacs.connection.name, synced.ingest.indexed)


def qido_cursor_name(pacs: str) -> str:
    """The catalog cursor of a PACS's QIDO polling (apart from a `/changes` sequence number of that name)."""
    key = f"qido:{pacs}"
    return key if len(key) <= 64 else "qido:" + hashlib.sha256(pacs.encode()).hexdigest()[:32]


def _as_int(day: date) -> int:
    return int(day.strftime("%Y%m%d"))


def _as_date(position: int) -> date:
    return datetime.strptime(str(position), "%Y%m%d").date()


class QidoFollower:
    """Polls a plain DICOMweb server with QIDO-RS for studies dated from the cursor minus a lookback window.

    The cursor is a date (YYYYMMDD) kept in the catalog: it moves to the poll's date only after every
    study that poll listed is ingested, so a kill at any moment repeats at most that poll, and repeating
    it adds nothing (instances already stored, by PACS uri or SOP Instance UID, are neither fetched nor
    ingested). A study is listed down to its instances only when the PACS reports an instance count for
    it that differs from the last look (at the first poll: from the instances stored here). What
    polling cannot see: a study whose Study Date is older than the cursor minus `lookback_days` when it
    reaches the PACS, a study without a Study Date, and deletions (found instead by listing all the
    PACS's studies every `reconcile_s`; 0 or less: never).
    """

    def __init__(
        self,
        archive: Archive,
        pacs: DicomwebPacs,
        *,
        since: str | None = None,
        lookback_days: int = DEFAULT_LOOKBACK_DAYS,
        reconcile_s: float = DEFAULT_QIDO_RECONCILE_S,
        today: Callable[[], date] = date.today,
    ) -> None:
        if lookback_days < 0:
            raise FollowError(f"the lookback window must be 0 days or more, not {lookback_days}")
        self.archive = archive
        self.pacs = pacs
        self.name = pacs.connection.name
        self.cursor_name = qido_cursor_name(self.name)
        self.lookback = timedelta(days=lookback_days)
        self.reconcile_s = reconcile_s
        self._today = today
        stored = archive.catalog.pacs_cursor(self.cursor_name)
        # --since replaces the stored cursor; with neither, only studies from today on are new
        start = int(since) if since else (stored or _as_int(today()))
        _as_date(start)  # a malformed stored or given date fails here, not mid-poll
        self.report = FollowReport(cursor=start)
        self._sizes: dict[str, int | None] = {}
        self._stored: dict[str, int] | None = None  # instances held per study, read at the first poll
        self._reconciled_at = time.monotonic() if reconcile_s > 0 else float("inf")

    @property
    def window_start(self) -> str:
        """The first Study Date the next poll asks for (YYYYMMDD)."""
        return (_as_date(self.report.cursor) - self.lookback).strftime("%Y%m%d")

    def step(self) -> bool:
        """One poll: list the window's studies, ingest what is new or grew, then move the cursor. Always True
        (a poll reads everything there is to read)."""
        polled_on = _as_int(self._today())  # taken first: a study dated during the poll is in the next one
        sizes = self.pacs.study_sizes(StudyFilter(since=self.window_start))
        if self._stored is None:  # after a restart: a study whose instances are all here is not re-listed
            self._stored = self.archive.catalog.instance_counts(PacsInstanceUri.pacs_prefix(self.name))
        for uid, size in sizes.items():
            self.report.changes += 1
            if size is not None and (self._sizes.get(uid) == size or self._stored.pop(uid, -1) >= size):
                self._sizes[uid] = size
                continue  # the PACS holds what it held at the last look, or what is stored here
            ingest_study(self.archive, self.pacs, uid, self.report)
            self._sizes[uid] = size
        if self.reconcile_s > 0 and time.monotonic() - self._reconciled_at >= self.reconcile_s:
            self._reconciled_at = time.monotonic()
            forget_deleted_studies(self.archive, self.pacs, self.report)
        self.report.polls += 1
        position = max(self.report.cursor, polled_on)
        if position != self.report.cursor or self.report.polls == 1:
            with self.archive.catalog.session() as session:
                self.archive.catalog.set_pacs_cursor(session, self.cursor_name, position)
            self.report.cursor = position
        return True

    def run(self, stop: threading.Event, poll_s: float = 30.0) -> FollowReport:
        """Poll until `stop` is set, `poll_s` seconds apart."""
        while not stop.is_set():
            self.step()
            stop.wait(poll_s)
        return self.report


def follower_for(
    archive: Archive,
    pacs: DicomwebPacs,
    *,
    reconcile_s: float | None = None,
    since: str | None = None,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
) -> OrthancFollower | QidoFollower:
    """The follower that fits the PACS's kind: Orthanc's change feed, else QIDO-RS polling by date."""
    if pacs.connection.kind == "orthanc":
        if since is not None:
            raise FollowError("--since applies to QIDO polling only: an Orthanc feed resumes from its cursor")
        return OrthancFollower(
            archive, pacs, reconcile_s=DEFAULT_RECONCILE_S if reconcile_s is None else reconcile_s
        )
    return QidoFollower(
        archive,
        pacs,
        since=since,
        lookback_days=lookback_days,
        reconcile_s=DEFAULT_QIDO_RECONCILE_S if reconcile_s is None else reconcile_s,
    )
