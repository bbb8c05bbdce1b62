"""Catalog rows and indexer results -> the API's wire schemas (and the per-role view of them)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np

from indexer.catalog import Case, CaseEdit, Image
from indexer.catalog.pacs_rows import PacsConnectionRow
from indexer.governance.accounts import Account
from indexer.governance.audit import AuditRecord
from indexer.ingest.uploads import UploadIngest
from indexer.storage.pacs_links import pacs_link
from indexer.vectors.index import VectorIndex
from search_api.access import Principal
from search_api.schemas import (
    AuditEventOut,
    CaseEditOut,
    CaseImage,
    CaseOut,
    CaseSummary,
    Hit,
    IngestFailureOut,
    IngestOut,
    PacsLink,
    RebuildOut,
    SearchResponse,
    UserOut,
)

EXCERPT_CHARS = 160


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC; stored times are UTC (SQLite drops the zone)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def split_label_field(value: str | None) -> list[str]:
    """Diagnosis labels sent as one form field, separated by ';' or '|'."""
    return [part for part in re.split(r"[;|]", value or "") if part.strip()]


def excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str | None:
    """The first `limit` characters of a report on one line, or None for no report."""
    if not text:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def pacs_link_out(uri: str, connections: Mapping[str, PacsConnectionRow]) -> PacsLink | None:
    """The way back into the PACS of an image ingested from one; None for other images."""
    link = pacs_link(uri, connections)
    return None if link is None else PacsLink(**dataclasses.asdict(link))


def hit_out(
    rank: int, row: Image, similarity: float, pacs: Mapping[str, PacsConnectionRow] | None = None
) -> Hit:
    """A retrieved image row (with its case) as a search hit (`pacs`: the configured PACS by name)."""
    case = row.case
    return Hit(
        rank=rank,
        image_id=row.id,
        case_id=case.id,
        case_key=case.case_key,
        source_uri=row.source_uri,
        similarity=float(np.clip(similarity, -1.0, 1.0)),
        modality=row.modality,
        body_part=row.body_part,
        study_description=row.study_description,
        series_description=row.series_description,
        study_instance_uid=row.study_instance_uid or case.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        frame_index=row.frame_index,
        diagnosis=case.labels,
        report=case.report,
        patient_ref=case.patient_ref,
        thumbnail_url=f"/images/{row.id}/thumbnail",
        case_url=f"/cases/{case.id}",
        pacs=pacs_link_out(row.source_uri, pacs or {}),
    )


def case_out(case: Case) -> CaseOut:
    """A stored case with its images."""
    return CaseOut(
        case_id=case.id,
        case_key=case.case_key,
        patient_ref=case.patient_ref,
        study_instance_uid=case.study_instance_uid,
        report=case.report,
        diagnosis=case.labels,
        images=[
            CaseImage(
                image_id=img.id,
                source_uri=img.source_uri,
                modality=img.modality,
                body_part=img.body_part,
                study_description=img.study_description,
                series_description=img.series_description,
                sop_instance_uid=img.sop_instance_uid,
                rows=img.rows,
                columns=img.columns,
                frames=img.frames,
                thumbnail_url=f"/images/{img.id}/thumbnail",
            )
            for img in case.images
        ],
    )


def case_summary(case: Case) -> CaseSummary:
    """A case as one line of the case list: labels, modalities, body parts, a report excerpt."""
    images = list(case.images)
    return CaseSummary(
        case_id=case.id,
        case_key=case.case_key,
        diagnosis=case.labels,
        modalities=sorted({i.modality.upper() for i in images if i.modality}),
        body_parts=sorted({i.body_part.upper() for i in images if i.body_part}),
        study_description=next((i.study_description for i in images if i.study_description), None),
        image_ids=[i.id for i in images],
        thumbnail_url=f"/images/{images[0].id}/thumbnail" if images else None,
        report_excerpt=excerpt(case.report),
    )


def case_edit_out(edit: CaseEdit) -> CaseEditOut:
    """One change of a case's history."""
    return CaseEditOut(
        at=utc_iso(edit.at),
        username=edit.username,
        field=edit.field,
        old_value=edit.old_value,
        new_value=edit.new_value,
    )


def user_out(account: Account) -> UserOut:
    """An account as the admin sees it (never its hash)."""
    return UserOut(
        username=account.username,
        role=account.role,  # type: ignore[arg-type]
        disabled=account.disabled,
        service=account.service,
    )


def audit_event_out(record: AuditRecord) -> AuditEventOut:
    """One audit row."""
    return AuditEventOut(
        id=record.id,
        at=utc_iso(record.at),
        username=record.username,
        role=record.role,
        action=record.action,
        object=record.object,
        outcome=record.outcome,
        status=record.status,
        client=record.client,
        request_id=record.request_id,
    )


def ingest_out(result: UploadIngest, index_size: int, elapsed_s: float) -> IngestOut:
    """What an uploaded archive's ingest did."""
    report = result.report
    return IngestOut(
        seen=report.seen,
        added=report.indexed,
        skipped=report.already_indexed,
        not_images=report.not_images,
        failed=report.failed,
        failures=[
            IngestFailureOut(member=f.member, error_type=f.error_type, reason=f.reason)
            for f in result.failures
        ],
        index_size=index_size,
        elapsed_s=round(elapsed_s, 2),
    )


def rebuild_out(index: VectorIndex, elapsed_s: float) -> RebuildOut:
    """What a rebuild of the FAISS index made."""
    tuning = index.tuning
    return RebuildOut(
        size=len(index),
        kind=index.kind,
        tuning_param=tuning.param or None,
        tuning_value=tuning.value if tuning.param else None,
        recall_at_10=tuning.recall_at_10,
        elapsed_s=round(elapsed_s, 2),
    )


def redact(response: SearchResponse, principal: Principal) -> SearchResponse:
    """Object-level view of a search answer: only admins see where archived files live (paths can
    carry names); everyone sees the pseudonymous patient reference, never a patient id."""
    if principal.is_admin:
        return response
    hits = [h.model_copy(update={"source_uri": f"image:{h.image_id}"}) for h in response.hits]
    return response.model_copy(update={"hits": hits})


def redact_case(case: CaseOut, principal: Principal) -> CaseOut:
    """The same view of a case as of a search hit."""
    if principal.is_admin:
        return case
    images = [i.model_copy(update={"source_uri": f"image:{i.image_id}"}) for i in case.images]
    return case.model_copy(update={"images": images})
