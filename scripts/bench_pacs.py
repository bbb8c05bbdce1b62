"""Benchmark the PACS connector against a real Orthanc: sync throughput vs `index` of the same files, and
stored-to-searchable latency of `pacs follow` (Orthanc's feed, and QIDO-RS polling) (issue 13).

    PYTHONPATH=. python scripts/bench_pacs.py [--encoder efficientnet_lite0] [--studies 8] [--engine ray]
        [--qido-poll-s 2] [--out FILE]

Starts Debian's Orthanc on loopback (tests/pacs/orthanc.py, StableAge 2 s), uploads the pydicom-data
corpus (the instances Orthanc keeps), then in one process: indexes the same files from disk, syncs them
from Orthanc into a second archive (same encoder, same decode workers; `--engine ray`: the sync decodes
and embeds on a local Ray), follows Orthanc's /changes while studies are stored one at a time, then
polls it as a plain DICOMweb server (kind dicomweb, QIDO-RS every --qido-poll-s) while the same studies,
dated today, are stored one at a time. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from embeddings import create_encoder
from indexer.archive import Archive
from indexer.catalog.pacs_rows import PacsConnectionRow
from indexer.ingest.follow import OrthancFollower, QidoFollower
from indexer.ingest.local import IngestReport, ingest_path
from indexer.ingest.pacs_sync import SyncReport, sync_pacs
from indexer.settings import IndexerSettings
from indexer.storage.dicomweb import DicomwebPacs, PacsCredentials
from tests.pacs.corpus import corpus_files, upload_corpus
from tests.pacs.orthanc import STABLE_AGE_S, OrthancServer, running_orthanc


def connect(orthanc: OrthancServer, archive: Archive, kind: str = "orthanc") -> DicomwebPacs:
    row = PacsConnectionRow("bench", orthanc.dicomweb_url, kind, None, True, False)
    archive.catalog.add_pacs_connection(row, replace=True)
    credentials = PacsCredentials(username=orthanc.username, password=orthanc.password)  # type: ignore[arg-type]
    return DicomwebPacs(row, credentials=credentials)


MISSED_AFTER_S = 60


def latency(
    orthanc: OrthancServer,
    archive: Archive,
    files: list[Path],
    studies: int,
    missed: list[str],
    qido_poll_s: float | None = None,
) -> list[float]:
    """Seconds from storing a study in Orthanc to its image being searchable, one study at a time: through
    Orthanc's /changes feed, or (`qido_poll_s`) through QIDO-RS polling as a plain DICOMweb server."""
    with orthanc.client() as client:  # measure from now: the feed's history is not this run's studies
        last = int(client.get("/changes", params={"last": ""}).json()["Last"])
        assert client.get("/instances").json() == [], "Orthanc still holds instances: clear it first"
    follower: OrthancFollower | QidoFollower
    if qido_poll_s is None:
        with archive.catalog.session() as session:
            archive.catalog.set_pacs_cursor(session, "bench", last)
        follower, poll_s = OrthancFollower(archive, connect(orthanc, archive), reconcile_s=3600), 0.2
    else:
        follower = QidoFollower(archive, connect(orthanc, archive, "dicomweb"), reconcile_s=0)
        poll_s = qido_poll_s
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop, poll_s), daemon=True)
    thread.start()
    timings = []
    try:
        for path in files[:studies]:
            before = len(archive.index)
            stored = time.monotonic()
            orthanc.upload([path])
            while len(archive.index) == before and time.monotonic() - stored < MISSED_AFTER_S:
                time.sleep(0.05)
            if len(archive.index) == before:
                print(
                    f"{path.name}: not searchable after {MISSED_AFTER_S} s (counted as missed)",
                    file=sys.stderr,
                )
                missed.append(path.name)
            else:
                timings.append(time.monotonic() - stored)
    finally:
        stop.set()
        thread.join(timeout=60)
    return timings


def one_instance_per_study(files: list[Path], synced: Archive) -> list[Path]:
    """Files that the sync indexed, smallest first, each of its own study and SOP Instance UID (each store
    is one new stable study with one new image)."""
    import pydicom

    ids = [int(i) for i in synced.catalog.image_ids_where(encoder=synced.encoder.name)]
    indexed = {row.sop_instance_uid for row in synced.catalog.images_by_ids(ids).values()}
    chosen, studies, sops = [], set(), set()
    for path in sorted(files, key=lambda p: p.stat().st_size):
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        study, sop = str(header.get("StudyInstanceUID", "")), str(header.get("SOPInstanceUID", ""))
        if sop in indexed and study and study not in studies and sop not in sops:
            studies.add(study)
            sops.add(sop)  # the corpus reuses some SOP Instance UIDs across studies: a dedup, not a miss
            chosen.append(path)
    return chosen


def dated_today(files: list[Path], folder: Path) -> list[Path]:
    """Copies of `files` with today's Study Date (what a new study in a PACS has, and QIDO polling asks for)."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    today = time.strftime("%Y%m%d")
    copies = []
    for path in files:
        ds = pydicom.dcmread(path, force=True)
        ds.StudyDate = today
        ds.save_as(folder / path.name, enforce_file_format=False)
        copies.append(folder / path.name)
    return copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sync-first", action="store_true", help="Sync before indexing from disk")
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="The sync's engine")
    parser.add_argument("--qido-poll-s", type=float, default=2.0, help="QIDO polling interval")
    args = parser.parse_args()
    encoder = create_encoder(args.encoder, device="cpu")
    with tempfile.TemporaryDirectory() as folder, running_orthanc(Path(folder)) as orthanc:
        root = Path(folder)
        files = upload_corpus(orthanc, corpus_files(), root / "files")
        disk = Archive.open(IndexerSettings(data_dir=root / "disk"), encoder=encoder)
        synced = Archive.open(IndexerSettings(data_dir=root / "synced"), encoder=encoder)
        timed: dict[str, float] = {}

        def run_index() -> IngestReport:
            start = time.perf_counter()
            done = ingest_path(disk, root / "files", progress=False, workers=args.workers)
            timed["index"] = time.perf_counter() - start
            return done

        def run_sync() -> SyncReport:
            start = time.perf_counter()
            if args.engine == "ray":
                from functools import partial

                factory = partial(create_encoder, args.encoder, device="cpu")
                done = sync_pacs(
                    synced, connect(orthanc, synced), progress=False, engine="ray", factory=factory
                )
            else:
                done = sync_pacs(synced, connect(orthanc, synced), progress=False, workers=args.workers)
            timed["sync"] = time.perf_counter() - start
            return done

        if args.sync_first:  # the first run also warms the encoder up: swap to see the order's share
            report, indexed = run_sync(), run_index()
        else:
            indexed, report = run_index(), run_sync()
        index_s, sync_s = timed["index"], timed["sync"]
        print(f"index {index_s:.1f} s ({indexed.indexed} indexed), sync {sync_s:.1f} s", file=sys.stderr)
        orthanc.clear()  # stable-to-searchable: studies stored one by one into an empty Orthanc
        small = one_instance_per_study(files, synced)
        followed = Archive.open(IndexerSettings(data_dir=root / "followed"), encoder=encoder)
        missed: list[str] = []
        timings = latency(orthanc, followed, small, args.studies, missed)
        orthanc.clear()
        polled = Archive.open(IndexerSettings(data_dir=root / "polled"), encoder=encoder)
        dated = dated_today(small[: args.studies], root / "dated")
        qido_missed: list[str] = []
        qido = latency(orthanc, polled, dated, args.studies, qido_missed, qido_poll_s=args.qido_poll_s)
    result = {
        "bench": "pacs",
        "encoder": encoder.name,
        "order": "sync-first" if args.sync_first else "index-first",
        "sync_engine": args.engine,
        "instances": len(files),
        "index_indexed": indexed.indexed,
        "sync_indexed": report.ingest.indexed,
        "index_s": round(index_s, 2),
        "sync_s": round(sync_s, 2),
        "index_per_s": round(len(files) / index_s, 2),
        "sync_per_s": round(len(files) / sync_s, 2),
        "sync_vs_index": round(index_s / sync_s, 3),
        "stable_age_s": STABLE_AGE_S,
        "latency_s": [round(t, 2) for t in timings],
        "latency_p50_s": round(statistics.median(timings), 2),
        "latency_max_s": round(max(timings), 2),
        "latency_missed": missed,
        "qido_poll_s": args.qido_poll_s,
        "qido_latency_s": [round(t, 2) for t in qido],
        "qido_latency_p50_s": round(statistics.median(qido), 2) if qido else None,
        "qido_latency_max_s": round(max(qido), 2) if qido else None,
        "qido_latency_missed": qido_missed,
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
