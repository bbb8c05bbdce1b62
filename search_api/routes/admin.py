"""Administration: accounts, the audit trail, ingesting an uploaded archive, rebuilding the index."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Body, File, HTTPException, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from indexer.governance.accounts import create_user, list_accounts, set_disabled, set_role
from indexer.governance.audit import audit_records
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.ingest.uploads import (
    ingest_upload,
    keep_upload_for_ingest,
    rebuild_archive_index,
    release_upload,
    upload_dir,
)
from search_api.access import ADMIN, allow
from search_api.deps import ApiSettingsDep, AuditDep, CatalogDep, SearcherDep, read_upload
from search_api.errors import CONFLICT_RESPONSES, ERROR_RESPONSES, StrictJsonRoute
from search_api.mappers import audit_event_out, ingest_out, rebuild_out, user_out
from search_api.schemas import AuditPage, IngestOut, RebuildOut, UserCreate, UserOut, UserUpdate

router = APIRouter(route_class=StrictJsonRoute)


@router.get(
    "/users",
    response_model=list[UserOut],
    responses=ERROR_RESPONSES,
    dependencies=[allow(ADMIN, "list_users")],
)
def list_users(catalog: CatalogDep) -> list[UserOut]:
    """Every account (admin)."""
    return [user_out(account) for account in list_accounts(catalog)]


@router.post(
    "/users",
    name="create_user",
    response_model=UserOut,
    status_code=201,
    responses=CONFLICT_RESPONSES,
    dependencies=[allow(ADMIN, "create_user")],
)
def create_user_route(user: Annotated[UserCreate, Body()], catalog: CatalogDep, audit: AuditDep) -> UserOut:
    """Create a person account (admin)."""
    audit(f"user:{user.username}")
    return user_out(create_user(catalog, user.username, user.password, user.role))


@router.patch(
    "/users/{username}",
    response_model=UserOut,
    responses=CONFLICT_RESPONSES,
    dependencies=[allow(ADMIN, "update_user")],
)
def update_user(username: str, update: Annotated[UserUpdate, Body()], catalog: CatalogDep) -> UserOut:
    """Disable, enable or change the role of an account (admin)."""
    account = None
    if update.role is not None:
        account = set_role(catalog, username, update.role)
    if update.disabled is not None:
        account = set_disabled(catalog, username, update.disabled)
    if account is None:
        raise HTTPException(422, "send role and/or disabled")
    return user_out(account)


@router.get(
    "/audit", response_model=AuditPage, responses=ERROR_RESPONSES, dependencies=[allow(ADMIN, "read_audit")]
)
def read_audit(
    catalog: CatalogDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    username: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
) -> AuditPage:
    """The audit trail, newest first (admin)."""
    total, rows = audit_records(
        catalog, limit=limit, offset=offset, username=username or None, action=action or None
    )
    return AuditPage(total=total, offset=offset, limit=limit, events=[audit_event_out(r) for r in rows])


@router.post(
    "/admin/ingest",
    name="ingest_archive",
    response_model=IngestOut,
    status_code=201,
    responses=ERROR_RESPONSES,
    dependencies=[allow(ADMIN, "ingest")],
)
async def ingest_archive(
    searcher: SearcherDep,
    limits: ApiSettingsDep,
    audit: AuditDep,
    archive: Annotated[UploadFile, File(description="A .zip, .tar or .tar.gz of DICOM, PNG and JPEG images")],
    manifest: Annotated[
        UploadFile | None,
        File(description="Optional CSV: filename, case_id, patient_id, report, diagnosis columns"),
    ] = None,
) -> IngestOut:
    """Ingest an uploaded archive (admin), the same ingest as `medcbir index`: files already stored are
    skipped, bad files are counted with their reason. The answer comes when the whole archive is
    ingested (and searchable), so the upload is capped (MEDCBIR_API_MAX_INGEST_BYTES); bigger
    archives go through the CLI."""
    opened = searcher.archive
    folder = upload_dir(opened)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".upload-{uuid.uuid4().hex}"
    try:
        size = 0
        with temporary.open("wb") as handle:
            while chunk := await archive.read(1 << 20):
                size += len(chunk)
                if size > limits.max_ingest_bytes:
                    raise HTTPException(
                        413,
                        f"the archive is larger than {limits.max_ingest_bytes} bytes; "
                        "split it, or index it with `medcbir index` on the server",
                    )
                handle.write(chunk)
        if size == 0:
            raise HTTPException(422, "the uploaded archive is empty")
        loaded = None
        if manifest is not None:
            csv_path = temporary.with_suffix(".csv")
            csv_path.write_bytes(await read_upload(manifest, limits.max_upload_bytes))
            try:
                loaded = load_manifest(csv_path, ManifestColumns())
            finally:
                csv_path.unlink(missing_ok=True)
        kept = await run_in_threadpool(keep_upload_for_ingest, opened, temporary)
    finally:
        temporary.unlink(missing_ok=True)
    try:
        result = await run_in_threadpool(
            lambda: ingest_upload(opened, kept, loaded, searcher.index_lock, max_pixels=limits.max_pixels)
        )
    except BaseException:  # removed unless another request or a stored image still reads it
        await run_in_threadpool(lambda: release_upload(opened, kept, failed=True))
        raise
    await run_in_threadpool(lambda: release_upload(opened, kept, failed=False))
    report = result.report
    audit(f"archive:{kept.stem[:16]} added:{report.indexed} failed:{report.failed}")
    return ingest_out(result, len(opened.index), report.elapsed_s)


@router.post(
    "/admin/rebuild-index",
    response_model=RebuildOut,
    responses=ERROR_RESPONSES,
    dependencies=[allow(ADMIN, "rebuild_index")],
)
async def rebuild_index(
    searcher: SearcherDep,
    audit: AuditDep,
    kind: Annotated[
        Literal["auto", "flat", "hnsw", "ivf_flat", "ivf_sq8", "ivf_pq"],
        Query(description="Index kind; auto picks one from the size and memory"),
    ] = "auto",
) -> RebuildOut:
    """Rebuild the FAISS index from the embeddings the catalog stores (admin); no image is re-encoded.
    Searches wait while the new index is built and swapped in."""
    started = time.perf_counter()
    index = await run_in_threadpool(rebuild_archive_index, searcher.archive, searcher.index_lock, kind)
    audit(f"index:{index.kind} size:{len(index)}")
    return rebuild_out(index, time.perf_counter() - started)
