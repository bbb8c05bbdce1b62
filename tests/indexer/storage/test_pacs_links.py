"""pacs:// uris: parsed and printed back, and turned into WADO-RS URLs and viewer deep links."""

from __future__ import annotations

from indexer.catalog.pacs_rows import PacsConnectionRow
from indexer.cli.pacs import OHIF_TEMPLATE
from indexer.storage.pacs_links import pacs_link
from indexer.storage.stored import PacsInstanceUri, is_pacs_uri

PACS = PacsConnectionRow(
    name="main",
    url="https://pacs.example/dicom-web",
    kind="dicomweb",
    viewer_url_template=OHIF_TEMPLATE.replace("{viewer}", "https://ohif.example"),
    verify_tls=True,
    write_back=False,
)


def test_uri_round_trips_even_with_uids_that_break_the_rules() -> None:
    uri = PacsInstanceUri("main", "1.2.3", "1.2.3.4", "odd uid/with&chars")
    text = str(uri)
    assert is_pacs_uri(text) and text.startswith("pacs://main/studies/1.2.3/series/1.2.3.4/instances/")
    assert "/with" not in text.split("/instances/")[1]
    assert PacsInstanceUri.parse(text) == uri


def test_link_has_wado_url_and_ohif_deep_link() -> None:
    link = pacs_link(str(PacsInstanceUri("main", "1.2.3", "1.2.3.4", "1.2.3.4.5")), {"main": PACS})
    assert link is not None and link.pacs == "main" and link.sop_instance_uid == "1.2.3.4.5"
    assert link.wado_url == "https://pacs.example/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"
    assert (
        link.viewer_url
        == "https://ohif.example/viewer?StudyInstanceUIDs=1.2.3&initialSeriesInstanceUID=1.2.3.4"
    )


def test_uids_cannot_inject_into_the_viewer_link() -> None:
    link = pacs_link(str(PacsInstanceUri("main", "1.2&x=<script>", "1", "2")), {"main": PACS})
    assert link is not None and link.viewer_url is not None
    assert "<script>" not in link.viewer_url and "&x=" not in link.viewer_url


def test_files_have_no_link_and_a_removed_pacs_keeps_only_the_uids() -> None:
    assert pacs_link("file:///data/a.dcm", {"main": PACS}) is None
    link = pacs_link(str(PacsInstanceUri("gone", "1", "2", "3")), {"main": PACS})
    assert link is not None and link.wado_url is None and link.viewer_url is None
