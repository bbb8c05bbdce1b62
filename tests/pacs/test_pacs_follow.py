"""`pacs follow` against a live Orthanc: stable studies become searchable, deleted ones leave, kill -9 loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from indexer.archive import Archive
from indexer.ingest.follow import FollowError, OrthancFollower
from indexer.settings import IndexerSettings
from tests.helpers import ThumbnailEncoder, dicom_testfile
from tests.pacs.corpus import corpus_files, upload_corpus
from tests.pacs.orthanc import STABLE_AGE_S, OrthancServer
from tests.pacs.test_pacs_sync import connect, ids_of, open_archive, sop_uids

ROOT = Path(__file__).resolve().parents[2]


def follow_until(follower: OrthancFollower, done, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not done after {timeout_s} s: {follower.report}"
        if follower.step():
            time.sleep(0.2)


def test_stable_study_becomes_searchable_and_deleted_study_leaves(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    from indexer.governance.audit import audit_records

    archive = open_archive(tmp_path / "data")
    follower = OrthancFollower(archive, connect(orthanc, archive), reconcile_s=0.5)
    follow_until(follower, lambda: follower.step())  # read past what earlier tests left in the feed
    stored_at = time.monotonic()
    (answer,) = orthanc.upload([dicom_testfile("CT_small.dcm")])
    follow_until(follower, lambda: len(ids_of(archive)) == 1)
    latency = time.monotonic() - stored_at
    print(f"stable-to-searchable latency {latency:.1f} s (StableAge {STABLE_AGE_S} s)")
    assert latency < STABLE_AGE_S + 15
    assert len(archive.index) == 1
    assert archive.catalog.pacs_cursor("test-pacs") == follower.report.cursor > 0

    with orthanc.client() as client:
        assert client.delete(f"/studies/{answer['ParentStudy']}").status_code == 200
    follow_until(follower, lambda: len(ids_of(archive)) == 0)
    assert len(archive.index) == 0
    _, events = audit_records(archive.catalog, action="pacs-study-deleted")
    assert len(events) == 1 and "images:1" in (events[0].object or "")


def test_only_orthanc_has_a_feed(orthanc: OrthancServer, tmp_path: Path) -> None:
    from dataclasses import replace

    archive = open_archive(tmp_path / "data")
    pacs = connect(orthanc, archive)
    pacs.connection = replace(pacs.connection, kind="dicomweb")
    with pytest.raises(FollowError, match="--kind orthanc"):
        OrthancFollower(archive, pacs)


FOLLOW_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from indexer.archive import Archive
    from indexer.ingest.follow import OrthancFollower
    from indexer.settings import IndexerSettings
    from tests.helpers import ThumbnailEncoder
    from tests.pacs.orthanc import OrthancServer
    from tests.pacs.test_pacs_sync import connect

    if __name__ == "__main__":
        url, user, password, data = sys.argv[1:5]
        server = OrthancServer(url, 0, 0, user, password)
        archive = Archive.open(IndexerSettings(data_dir=Path(data), batch_size=1), encoder=ThumbnailEncoder())
        follower = OrthancFollower(archive, connect(server, archive), page=3)
        follower.run(threading.Event(), poll_s=0.2)
    """
)


def test_kill_9_the_follower_then_restart_nothing_lost_or_twice(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    with orthanc.client() as client:
        start = client.get("/changes", params={"last": ""}).json()["Last"]
    files = [p for p in corpus_files() if p.stat().st_size < 200_000][:30]
    upload_corpus(orthanc, files, tmp_path / "files")
    reference = open_archive(tmp_path / "reference")
    from indexer.ingest.pacs_sync import sync_pacs

    expected = sync_pacs(reference, connect(orthanc, reference), progress=False, workers=0).ingest.indexed
    time.sleep(STABLE_AGE_S + 2)  # every study stable: its StableStudy change is in the feed

    data = tmp_path / "drill"
    archive = open_archive(data)  # the cursor starts where this test's studies start
    with archive.catalog.session() as session:
        archive.catalog.set_pacs_cursor(session, "test-pacs", start)
    archive.close()
    script = tmp_path / "follow.py"
    script.write_text(FOLLOW_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(script), orthanc.http_url, orthanc.username, orthanc.password, str(data)],
        env=env,
    )
    killed_at = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        probe = Archive.open(IndexerSettings(data_dir=data), encoder=ThumbnailEncoder())
        killed_at = len(ids_of(probe))
        probe.close()
        if killed_at >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL and 0 < killed_at < expected

    archive = open_archive(data)
    follower = OrthancFollower(archive, connect(orthanc, archive))
    assert follower.report.cursor > start  # it resumes from the committed cursor, not from the start
    while not follower.step():
        pass
    uids = sop_uids(archive)
    assert len(uids) == expected
    assert not [uid for uid, n in Counter(uids).items() if n > 1]
    assert len(archive.index) == len(ids_of(archive))
