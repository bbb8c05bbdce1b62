"""The DICOM node against a live Orthanc: C-ECHO, C-STORE routed by Orthanc, spool-then-ack, allowed AE titles."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.archive import Archive
from indexer.ingest.receiver import DicomReceiver, Spool, SpoolWorker
from tests.helpers import dicom_testfile
from tests.pacs.orthanc import RECEIVER_AET, OrthancServer
from tests.pacs.test_pacs_sync import ids_of, open_archive


@pytest.fixture()
def archive(tmp_path: Path) -> Archive:
    return open_archive(tmp_path / "data")


@pytest.fixture()
def receiver(orthanc: OrthancServer, tmp_path: Path) -> Iterator[DicomReceiver]:
    node = DicomReceiver(Spool(tmp_path / "data" / "received"), RECEIVER_AET, ["ORTHANC"])
    node.start(orthanc.receiver_port)
    yield node
    node.stop()


def test_orthanc_echoes_and_stores_to_the_receiver_and_it_becomes_searchable(
    orthanc: OrthancServer, receiver: DicomReceiver, archive: Archive
) -> None:
    (uploaded,) = orthanc.upload([dicom_testfile("CT_small.dcm")])
    worker = SpoolWorker(archive, receiver.spool)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.1), daemon=True)
    thread.start()
    try:
        with orthanc.client() as client:
            assert client.post("/modalities/medcbir/echo", json={}).status_code == 200
            sent = time.monotonic()
            answer = client.post("/modalities/medcbir/store", json={"Resources": [uploaded["ParentStudy"]]})
            assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 60
        while not ids_of(archive):
            assert time.monotonic() < deadline, worker.report
            time.sleep(0.1)
        print(f"C-STORE to searchable: {time.monotonic() - sent:.2f} s")
    finally:
        stop.set()
        thread.join(timeout=30)
    (image,) = archive.catalog.images_by_ids(ids_of(archive)).values()
    assert image.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert receiver.spool.pending() == [] and Path(image.source_uri.removeprefix("file://")).is_file()
    assert len(archive.index) == 1


def test_a_calling_aet_not_allowed_is_rejected_and_logged(
    orthanc: OrthancServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = DicomReceiver(Spool(tmp_path / "received"), RECEIVER_AET, ["SOMEONE-ELSE"])
    node.start(orthanc.receiver_port)
    caplog.set_level(logging.WARNING)
    try:
        (uploaded,) = orthanc.upload([dicom_testfile("CT_small.dcm")])
        with orthanc.client() as client:
            answer = client.post("/modalities/medcbir/store", json={"Resources": [uploaded["ID"]]})
        assert answer.status_code != 200
    finally:
        node.stop()
    assert node.spool.pending() == []
    assert "rejected an association from calling AE 'ORTHANC'" in caplog.text


def test_spooled_but_not_ingested_survives_a_crash(tmp_path: Path, archive: Archive) -> None:
    spool = Spool(tmp_path / "data" / "received")
    spool.write(dicom_testfile("CT_small.dcm").read_bytes())  # acknowledged, then the process died
    assert len(spool.pending()) == 1
    worker = SpoolWorker(archive, spool)  # the restarted node
    assert worker.drain() == 1 and worker.report.indexed == 1
    assert spool.pending() == [] and len(ids_of(archive)) == 1
    spool.write(dicom_testfile("CT_small.dcm").read_bytes())  # sent again: indexed once
    assert worker.drain() == 1 and worker.report.already_indexed == 1 and len(ids_of(archive)) == 1
