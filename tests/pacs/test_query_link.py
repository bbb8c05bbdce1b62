"""The query itself links back into the PACS when it is a PACS instance (searched by reference or archived)."""

from __future__ import annotations

from pathlib import Path

import httpx

from indexer.archive import Archive
from indexer.catalog.pacs_rows import PacsConnectionRow
from indexer.ingest.pacs_sync import sync_pacs
from indexer.storage.dicomweb import StudyFilter
from tests.helpers import dicom_testfile
from tests.pacs.orthanc import OrthancServer
from tests.pacs.test_pacs_sync import connect
from tests.pacs.test_search_by_instance import api  # noqa: F401  (the fixture)

CT = {
    "study_instance_uid": "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
    "series_instance_uid": "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322",
    "sop_instance_uid": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
}
MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"


def test_the_query_carries_its_viewer_link(
    orthanc: OrthancServer,
    api: tuple[str, dict[str, str], Archive],  # noqa: F811
    tmp_path: Path,
) -> None:
    url, auth, archive = api
    pacs = connect(orthanc, archive)
    template = "https://ohif.example/viewer?StudyInstanceUIDs={study}&initialSeriesInstanceUID={series}"
    archive.catalog.add_pacs_connection(
        PacsConnectionRow("test-pacs", orthanc.dicomweb_url, "orthanc", template, True, False), replace=True
    )
    orthanc.upload([dicom_testfile("CT_small.dcm"), dicom_testfile("MR_small.dcm")])
    assert (
        sync_pacs(archive, pacs, StudyFilter(study=MR_STUDY), progress=False, workers=0).ingest.indexed == 1
    )
    archive.save_index()

    # by reference, not indexed: the query is the PACS instance that was asked for
    answer = httpx.post(
        f"{url}/search/by-instance", data={"pacs": "test-pacs", **CT}, headers=auth, timeout=60
    )
    assert answer.status_code == 200, answer.text
    link = answer.json()["query"]["pacs"]
    assert link["pacs"] == "test-pacs" and link["sop_instance_uid"] == CT["sop_instance_uid"]
    assert link["viewer_url"].startswith("http") and CT["study_instance_uid"] in link["viewer_url"]
    assert CT["sop_instance_uid"] in link["wado_url"]

    # an archived image synced from the PACS, searched by its id: the link of its own study
    mr_id = next(
        i
        for i, r in archive.catalog.images_by_ids(list(range(1, 10))).items()
        if r.source_uri.startswith("pacs://")
    )
    answer = httpx.post(f"{url}/search/by-image/{mr_id}", headers=auth, timeout=60)
    assert answer.status_code == 200, answer.text
    query = answer.json()["query"]
    assert query["image_id"] == mr_id and MR_STUDY in query["pacs"]["viewer_url"]

    # an uploaded file is no PACS instance: no link
    upload = httpx.post(
        f"{url}/search",
        files={"file": ("ct.dcm", dicom_testfile("CT_small.dcm").read_bytes())},
        headers=auth,
        timeout=60,
    )
    assert upload.status_code == 200 and upload.json()["query"]["pacs"] is None
