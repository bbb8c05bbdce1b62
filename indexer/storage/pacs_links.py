"""Where a PACS-ingested image lives in its PACS: the WADO-RS URL and the viewer deep link of a `pacs://` uri."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from indexer.catalog.pacs_rows import PacsConnectionRow
from indexer.storage.stored import PacsInstanceUri, UnreadableSourceUriError, is_pacs_uri


@dataclass(frozen=True)
class PacsLink:
    """A hit's way back into its PACS."""

    pacs: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    wado_url: str | None  # None when the PACS is no longer configured
    viewer_url: str | None  # None without a viewer template


def viewer_url(template: str, study: str, series: str, sop: str) -> str:
    """Fill {study}, {series}, {sop} (URL-quoted) into a viewer template; nothing else is substituted."""
    for key, uid in (("{study}", study), ("{series}", series), ("{sop}", sop)):
        template = template.replace(key, quote(uid, safe="."))
    return template


def pacs_link(uri: str, connections: Mapping[str, PacsConnectionRow]) -> PacsLink | None:
    """The link of an image whose source uri is `pacs://`; None for any other uri."""
    if not is_pacs_uri(uri):
        return None
    try:
        where = PacsInstanceUri.parse(uri)
    except UnreadableSourceUriError:
        return None
    connection = connections.get(where.pacs)
    study, series, sop = (quote(uid, safe=".") for uid in (where.study, where.series, where.sop))
    wado = f"{connection.url}/studies/{study}/series/{series}/instances/{sop}" if connection else None
    template = connection.viewer_url_template if connection else None
    return PacsLink(
        pacs=where.pacs,
        study_instance_uid=where.study,
        series_instance_uid=where.series,
        sop_instance_uid=where.sop,
        wado_url=wado,
        viewer_url=viewer_url(template, where.study, where.series, where.sop) if template else None,
    )
