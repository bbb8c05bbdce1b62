"""The kill -9 drill for `pacs sync`: killed mid-run, run again, every instance indexed once, index == catalog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from indexer.archive import Archive
from indexer.ingest.pacs_sync import sync_pacs
from indexer.settings import IndexerSettings
from tests.helpers import ThumbnailEncoder
from tests.pacs.corpus import corpus_files, upload_corpus
from tests.pacs.orthanc import OrthancServer
from tests.pacs.test_pacs_sync import connect, ids_of, sop_uids

ROOT = Path(__file__).resolve().parents[2]
SYNC_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from indexer.archive import Archive
    from indexer.ingest.pacs_sync import sync_pacs
    from indexer.settings import IndexerSettings
    from tests.helpers import ThumbnailEncoder
    from tests.pacs.orthanc import OrthancServer
    from tests.pacs.test_pacs_sync import connect

    if __name__ == "__main__":
        url, user, password, data = sys.argv[1:5]
        server = OrthancServer(url, 0, 0, user, password)
        archive = Archive.open(IndexerSettings(data_dir=Path(data), batch_size=2), encoder=ThumbnailEncoder())
        sync_pacs(archive, connect(server, archive), progress=False, workers=0, concurrency=1)
    """
)


def _small_corpus() -> list[Path]:
    """Small uncompressed files, quick to decode: the drill is about the kill, not the codecs."""
    return [p for p in corpus_files() if p.stat().st_size < 200_000][:30]


def test_kill_9_mid_sync_then_rerun_indexes_every_instance_once(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    upload_corpus(orthanc, _small_corpus(), tmp_path / "files")
    reference = Archive.open(IndexerSettings(data_dir=tmp_path / "reference"), encoder=ThumbnailEncoder())
    expected = sync_pacs(reference, connect(orthanc, reference), progress=False, workers=0).ingest.indexed
    assert expected >= 10

    data = tmp_path / "drill"
    script = tmp_path / "sync_once.py"
    script.write_text(SYNC_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(script), orthanc.http_url, orthanc.username, orthanc.password, str(data)]
    process = subprocess.Popen(args, env=env, cwd=ROOT)
    killed_at = 0
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if (data / "catalog.sqlite3").exists():
            probe = Archive.open(IndexerSettings(data_dir=data), encoder=ThumbnailEncoder())
            killed_at = len(ids_of(probe))
            probe.close()
            if killed_at >= 4:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.2)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the sync finished before it could be killed"
    assert 0 < killed_at < expected

    archive = Archive.open(IndexerSettings(data_dir=data), encoder=ThumbnailEncoder())
    rerun = sync_pacs(archive, connect(orthanc, archive), progress=False, workers=0)
    assert rerun.already_here >= killed_at
    uids = sop_uids(archive)
    assert len(uids) == expected  # nothing lost
    assert not [uid for uid, n in Counter(uids).items() if n > 1]  # nothing twice
    assert len(archive.index) == len(ids_of(archive))  # the index holds exactly the catalog's vectors
