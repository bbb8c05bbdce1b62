"""`pacs sync` against a live Orthanc: the same instances as `index` of the same files, resumable, dedup."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.archive import Archive
from indexer.catalog.pacs_rows import PacsConnectionRow
from indexer.ingest.local import ingest_path
from indexer.ingest.pacs_sync import sync_pacs
from indexer.settings import IndexerSettings
from indexer.storage.dicomweb import DicomwebPacs, PacsCredentials, StudyFilter
from indexer.storage.stored import PacsInstanceUri, read_stored, set_pacs_reader
from tests.helpers import ThumbnailEncoder
from tests.pacs.corpus import corpus_files, upload_corpus
from tests.pacs.orthanc import OrthancServer


def open_archive(folder: Path) -> Archive:
    return Archive.open(IndexerSettings(data_dir=folder), encoder=ThumbnailEncoder())


def connect(
    orthanc: OrthancServer, archive: Archive, name: str = "test-pacs", kind: str = "orthanc"
) -> DicomwebPacs:
    row = PacsConnectionRow(name, orthanc.dicomweb_url, kind, None, True, False)
    archive.catalog.add_pacs_connection(row, replace=True)
    credentials = PacsCredentials(username=orthanc.username, password=orthanc.password)  # type: ignore[arg-type]
    return DicomwebPacs(row, credentials=credentials)


def sop_uids(archive: Archive) -> list[str]:
    return [image.sop_instance_uid or "" for image in archive.catalog.images_by_ids(ids_of(archive)).values()]


def ids_of(archive: Archive) -> list[int]:
    return [int(i) for i in archive.catalog.image_ids_where(encoder=archive.encoder.name)]


def test_sync_indexes_what_index_indexes_from_the_same_files(orthanc: OrthancServer, tmp_path: Path) -> None:
    """The whole pydicom-data corpus: `pacs sync` indexes exactly what `index` indexes from the same files."""
    on_disk = upload_corpus(orthanc, corpus_files(), tmp_path / "files")
    assert len(on_disk) > 50  # the corpus is there (pydicom-data installed)

    from_disk = open_archive(tmp_path / "disk")
    disk_report = ingest_path(from_disk, tmp_path / "files", progress=False, workers=1)

    synced = open_archive(tmp_path / "synced")
    pacs = connect(orthanc, synced)
    report = sync_pacs(synced, pacs, progress=False, workers=1, concurrency=4)

    assert report.listed == len(on_disk)
    assert report.ingest.indexed == disk_report.indexed
    assert sorted(sop_uids(synced)) == sorted(sop_uids(from_disk))
    assert len(synced.index) == len(ids_of(synced)) == report.ingest.indexed
    images = synced.catalog.images_by_ids(ids_of(synced)).values()
    uri = PacsInstanceUri.parse(next(iter(images)).source_uri)
    assert uri.pacs == "test-pacs"

    again = sync_pacs(synced, pacs, progress=False, workers=1)
    assert again.ingest.indexed == 0  # a re-run adds nothing
    assert again.already_here >= report.ingest.indexed  # ... and fetches nothing it holds


def test_synced_instance_is_read_back_from_the_pacs(orthanc: OrthancServer, tmp_path: Path) -> None:
    from tests.helpers import dicom_testfile

    orthanc.upload([dicom_testfile("CT_small.dcm")])
    archive = open_archive(tmp_path / "data")
    pacs = connect(orthanc, archive)
    assert sync_pacs(archive, pacs, progress=False, workers=0).ingest.indexed == 1
    (image,) = archive.catalog.images_by_ids(ids_of(archive)).values()
    set_pacs_reader(lambda uri: pacs.retrieve(_instance(uri)))
    try:
        import pydicom

        data = read_stored(image.source_uri)
        assert pydicom.dcmread(__import__("io").BytesIO(data)).SOPInstanceUID == image.sop_instance_uid
    finally:
        set_pacs_reader(None)


def _instance(uri: PacsInstanceUri):  # type: ignore[no-untyped-def]
    from indexer.storage.dicomweb import PacsInstance

    return PacsInstance(uri.study, uri.series, uri.sop)


@pytest.mark.parametrize("modality, expected", [("CT", {"CT"}), ("MR", {"MR"})])
def test_sync_filters_by_modality(
    orthanc: OrthancServer, tmp_path: Path, modality: str, expected: set[str]
) -> None:
    from tests.helpers import dicom_testfile

    orthanc.upload([dicom_testfile("CT_small.dcm"), dicom_testfile("MR_small.dcm")])
    archive = open_archive(tmp_path / "data")
    report = sync_pacs(
        archive,
        connect(orthanc, archive),
        StudyFilter(modalities=frozenset({modality})),
        progress=False,
        workers=0,
    )
    assert report.ingest.indexed == 1
    modalities = {i.modality for i in archive.catalog.images_by_ids(ids_of(archive)).values()}
    assert modalities == expected


def test_a_hit_from_the_pacs_points_back_into_it(orthanc: OrthancServer, tmp_path: Path) -> None:
    from search_api.searcher import Searcher
    from tests.helpers import dicom_testfile

    orthanc.upload([dicom_testfile("CT_small.dcm"), dicom_testfile("MR_small.dcm")])
    archive = open_archive(tmp_path / "data")
    pacs = connect(orthanc, archive)
    template = "https://ohif.example/viewer?StudyInstanceUIDs={study}&initialSeriesInstanceUID={series}"
    archive.catalog.add_pacs_connection(
        PacsConnectionRow("test-pacs", orthanc.dicomweb_url, "orthanc", template, True, False), replace=True
    )
    assert sync_pacs(archive, pacs, progress=False, workers=0).ingest.indexed == 2
    hit = Searcher(archive).search(dicom_testfile("CT_small.dcm").read_bytes(), k=1).hits[0]
    assert hit.pacs is not None and hit.pacs.pacs == "test-pacs"
    assert hit.pacs.sop_instance_uid == hit.source_uri.rsplit("/", 1)[1]
    assert hit.pacs.study_instance_uid == hit.study_instance_uid
    assert hit.pacs.viewer_url == template.format(
        study=hit.study_instance_uid, series=hit.series_instance_uid
    )
    with orthanc.client() as client:  # the WADO-RS URL retrieves that very instance
        answer = client.get(
            hit.pacs.wado_url or "", headers={"Accept": "multipart/related; type=application/dicom"}
        )
    assert answer.status_code == 200 and hit.pacs.sop_instance_uid.encode() in answer.content
