"""`pacs follow` of a plain DICOMweb server (QIDO-RS polling by study date), against the live Orthanc's DICOMweb."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import date
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from indexer.archive import Archive
from indexer.ingest.follow import QidoFollower, follower_for, qido_cursor_name
from indexer.ingest.pacs_sync import sync_pacs
from indexer.settings import IndexerSettings
from indexer.storage.dicomweb import DicomwebPacs, PacsCredentials, StudyFilter
from search_api.searcher import Searcher
from tests.helpers import ThumbnailEncoder, dicom_testfile
from tests.pacs.corpus import corpus_files, upload_corpus
from tests.pacs.orthanc import OrthancServer
from tests.pacs.test_pacs_sync import connect, ids_of, open_archive, sop_uids

ROOT = Path(__file__).resolve().parents[2]
TODAY = date.today().strftime("%Y%m%d")


def dated_copy(source: Path, target: Path, study_date: str, *, study: str | None = None) -> Path | None:
    """`source` with its Study Date set (and, when given, its Study Instance UID and a new SOP Instance
    UID), written to `target`; None for a file pydicom cannot rewrite."""
    try:
        ds = pydicom.dcmread(source, force=True)
        ds.StudyDate = study_date
        if study is not None:
            ds.StudyInstanceUID = study
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(target, enforce_file_format=False)
    except Exception:
        return None
    return target


def test_a_new_study_becomes_searchable_a_grown_one_is_completed_a_deleted_one_leaves(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    from indexer.governance.audit import audit_records

    archive = open_archive(tmp_path / "data")
    pacs = connect(orthanc, archive, kind="dicomweb")
    follower = follower_for(archive, pacs, reconcile_s=0.5)
    assert isinstance(follower, QidoFollower)
    assert follower.window_start < TODAY  # today and the lookback days before it
    follower.step()
    assert ids_of(archive) == [] and archive.catalog.pacs_cursor(qido_cursor_name("test-pacs")) == int(TODAY)

    study = generate_uid()
    new = dated_copy(dicom_testfile("CT_small.dcm"), tmp_path / "new.dcm", TODAY, study=study)
    old = dated_copy(dicom_testfile("MR_small.dcm"), tmp_path / "old.dcm", "19990101", study=generate_uid())
    assert new is not None and old is not None
    orthanc.upload([new, old])
    follower.step()
    assert len(ids_of(archive)) == 1 == len(archive.index)  # the old-dated study is outside the window
    hit = Searcher(archive).search(new.read_bytes(), k=1).hits[0]
    assert hit.image_id == ids_of(archive)[0] and hit.similarity > 0.99

    looked = follower.report.studies_ingested
    follower.step()  # nothing changed in the PACS: the study is not listed down to its instances again
    assert follower.report.studies_ingested == looked
    more = dated_copy(dicom_testfile("CT_small.dcm"), tmp_path / "more.dcm", TODAY, study=study)
    assert more is not None
    orthanc.upload([more])  # the study grows: the next poll sees its count change and fetches the new one
    follower.step()
    assert len(ids_of(archive)) == 2 == len(archive.index)

    with orthanc.client() as client:
        (orthanc_id,) = client.post("/tools/lookup", content=study).json()
        assert client.delete(f"/studies/{orthanc_id['ID']}").status_code == 200
    time.sleep(0.6)
    follower.step()
    assert ids_of(archive) == [] and len(archive.index) == 0
    _, events = audit_records(archive.catalog, action="pacs-study-deleted")
    assert len(events) == 1 and "images:2" in (events[0].object or "")


def test_since_replays_older_dates_without_duplicates(orthanc: OrthancServer, tmp_path: Path) -> None:
    archive = open_archive(tmp_path / "data")
    pacs = connect(orthanc, archive, kind="dicomweb")
    old = dated_copy(dicom_testfile("MR_small.dcm"), tmp_path / "old.dcm", "19990101", study=generate_uid())
    assert old is not None
    orthanc.upload([old])
    ingested = []
    for _ in range(2):  # a second follower from the same date finds the study stored: nothing twice
        follower = QidoFollower(archive, pacs, since="19990101", lookback_days=0)
        assert follower.window_start == "19990101"
        follower.step()
        ingested.append(follower.report.studies_ingested)
    # the restarted follower does not even list the study's instances: all of them are stored here
    assert ingested == [1, 0]
    assert len(sop_uids(archive)) == 1 == len(set(sop_uids(archive))) == len(archive.index)


FOLLOW_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from indexer.archive import Archive
    from indexer.ingest.follow import QidoFollower
    from indexer.settings import IndexerSettings
    from tests.helpers import ThumbnailEncoder
    from tests.pacs.orthanc import OrthancServer
    from tests.pacs.test_pacs_sync import connect

    if __name__ == "__main__":
        url, user, password, data = sys.argv[1:5]
        server = OrthancServer(url, 0, 0, user, password)
        archive = Archive.open(IndexerSettings(data_dir=Path(data), batch_size=1), encoder=ThumbnailEncoder())
        QidoFollower(archive, connect(server, archive, kind="dicomweb")).run(threading.Event(), poll_s=0.2)
    """
)


def test_kill_9_the_poller_then_restart_nothing_lost_or_twice(orthanc: OrthancServer, tmp_path: Path) -> None:
    (tmp_path / "dated").mkdir()
    small = [p for p in corpus_files() if p.stat().st_size < 200_000][:30]
    dated = [
        d for n, p in enumerate(small) if (d := dated_copy(p, tmp_path / "dated" / f"{n:02d}.dcm", TODAY))
    ]
    upload_corpus(orthanc, dated, tmp_path / "files")
    reference = open_archive(tmp_path / "reference")
    expected = sync_pacs(reference, connect(orthanc, reference), progress=False, workers=0).ingest.indexed
    assert expected >= 10

    data = tmp_path / "drill"
    script = tmp_path / "follow.py"
    script.write_text(FOLLOW_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(script), orthanc.http_url, orthanc.username, orthanc.password, str(data)]
    process = subprocess.Popen(args, env=env, cwd=ROOT)
    killed_at = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if (data / "catalog.sqlite3").exists():
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
    # killed inside its first poll: the cursor was not moved past what that poll had not finished
    assert archive.catalog.pacs_cursor(qido_cursor_name("test-pacs")) in (0, int(TODAY))
    follower = QidoFollower(archive, connect(orthanc, archive, kind="dicomweb"))
    follower.step()
    uids = sop_uids(archive)
    assert len(uids) == expected  # nothing lost
    assert not [uid for uid, n in Counter(uids).items() if n > 1]  # nothing twice
    assert len(archive.index) == len(ids_of(archive))
    assert archive.catalog.pacs_cursor(qido_cursor_name("test-pacs")) == int(TODAY)


class CappedPacs(DicomwebPacs):
    """The live Orthanc as a PACS that caps its answers: a listing of all its studies gives the first only."""

    def search_studies(self, wanted: StudyFilter = StudyFilter(), *, limit: int | None = None) -> list[str]:
        found = super().search_studies(wanted, limit=limit)
        return found if wanted.study else found[:1]


def test_a_listing_cut_short_by_the_pacs_does_not_empty_the_index(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    archive = open_archive(tmp_path / "data")
    row = connect(orthanc, archive, kind="dicomweb").connection
    credentials = PacsCredentials(username=orthanc.username, password=orthanc.password)  # type: ignore[arg-type]
    pacs = CappedPacs(row, credentials=credentials)
    studies = [generate_uid(), generate_uid()]
    copies = [
        dated_copy(dicom_testfile(name), tmp_path / name, TODAY, study=study)
        for name, study in zip(("CT_small.dcm", "MR_small.dcm"), studies, strict=True)
    ]
    orthanc.upload([c for c in copies if c is not None])
    follower = QidoFollower(archive, pacs, reconcile_s=0.01)
    time.sleep(0.02)
    follower.step()
    assert len(ids_of(archive)) == 2 and follower.report.studies_deleted == 0  # each study asked for by UID

    with orthanc.client() as client:
        (found,) = client.post("/tools/lookup", content=studies[1]).json()
        assert client.delete(f"/studies/{found['ID']}").status_code == 200
    time.sleep(0.02)
    follower.step()
    assert len(ids_of(archive)) == 1 == len(archive.index) and follower.report.studies_deleted == 1
