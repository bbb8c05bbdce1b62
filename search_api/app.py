"""The FastAPI application: lifespan loads the archive once; routes map errors to clear 4xx answers.

Every route is classified in search_api.security.ROUTE_POLICY (who may call it, what it audits).
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer, OAuth2PasswordRequestForm
from starlette.concurrency import run_in_threadpool

from imaging import (
    CorruptImageError,
    ImageTooLargeError,
    ImagingError,
    MissingCodecError,
    UnsupportedFormatError,
)
from indexer.archive import Archive
from indexer.cases import CaseIngestError, CaseManager, DuplicateImageError
from indexer.errors import ManifestError
from indexer.governance.accounts import (
    AccountError,
    authenticate,
    create_user,
    list_accounts,
    revoke_token,
    set_disabled,
    set_role,
)
from indexer.governance.audit import audit_records
from indexer.governance.pseudonym import load_or_create_key
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.ingest.uploads import UploadError, ingest_upload, keep_upload, rebuild_archive_index, upload_dir
from indexer.settings import IndexerSettings
from search_api.explanations import (
    Explainer,
    Explanation,
    ExplanationUnavailableError,
    NoHeadError,
    UnknownLabelError,
)
from search_api.schemas import (
    CT_WINDOW_PRESETS,
    AuditEventOut,
    AuditPage,
    CaseEditOut,
    CaseList,
    CaseOut,
    CaseUpdate,
    DisplayWindow,
    ErrorOut,
    FilterOptions,
    GroupBy,
    HealthOut,
    IngestFailureOut,
    IngestOut,
    LogoutOut,
    MeOut,
    RebuildOut,
    SearchFilters,
    SearchResponse,
    TokenOut,
    UserCreate,
    UserOut,
    UserUpdate,
)
from search_api.searcher import InvalidWindowError, NotFoundError, Searcher
from search_api.security import LoginLimiter, Principal, SecurityMiddleware, is_loopback, issue_token
from search_api.settings import ApiSettings

log = logging.getLogger(__name__)

CT_PRESET_NAMES = list(CT_WINDOW_PRESETS)
_GROUPINGS: dict[str, GroupBy] = {"study": "study", "series": "series"}

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
    404: {"model": ErrorOut},
    413: {"model": ErrorOut},
    415: {"model": ErrorOut},
    422: {"model": ErrorOut},
}


def _status_for(exc: ImagingError) -> int:
    if isinstance(exc, UnsupportedFormatError):
        return 415
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, CorruptImageError | MissingCodecError):
        return 422
    return 422


# Errors whose message is the answer, by the status they map to (ImagingError and AccountError need more).
_ERROR_STATUS: dict[type[Exception], int] = {
    NotFoundError: 404,
    NoHeadError: 404,
    InvalidWindowError: 422,
    UnknownLabelError: 422,
    ExplanationUnavailableError: 409,
}


def _detail_handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    return handler


def get_searcher(request: Request) -> Searcher:
    """The searcher the lifespan built."""
    searcher: Searcher = request.app.state.searcher
    return searcher


def get_api_settings(request: Request) -> ApiSettings:
    """The settings the app was created with."""
    settings: ApiSettings = request.app.state.api_settings
    return settings


# Declared for the OpenAPI document (how to authenticate); SecurityMiddleware does the checking.
_bearer = OAuth2PasswordBearer(tokenUrl="token", auto_error=False)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_principal(
    request: Request,
    _token: Annotated[str | None, Depends(_bearer)] = None,
    _key: Annotated[str | None, Depends(_api_key)] = None,
) -> Principal:
    """The caller SecurityMiddleware authenticated for this request."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:
        raise HTTPException(401, "sign in first: POST /token", headers={"WWW-Authenticate": "Bearer"})
    return principal


def get_case_manager(request: Request) -> CaseManager:
    """The case manager the lifespan built."""
    manager: CaseManager = request.app.state.case_manager
    return manager


def set_audit_object(request: Request, value: str) -> None:
    """Name what a request touched (e.g. the cases a search showed) in its audit row."""
    request.state.audit_object = value[:4000]


def get_explainer(request: Request) -> Explainer:
    """The explainer the lifespan built (similarity maps, Grad-CAM, the kept query images)."""
    explainer: Explainer = request.app.state.explainer
    return explainer


def explanation_png(explanation: Explanation) -> Response:
    """A PNG explanation with the score it explains (and the class, for Grad-CAM) in headers."""
    headers = {"X-Medcbir-Score": f"{explanation.score:.6f}"}
    if explanation.label is not None and explanation.label.isascii() and explanation.label.isprintable():
        headers["X-Medcbir-Label"] = explanation.label
    return Response(content=explanation.png, media_type="image/png", headers=headers)


# Catalog ids are 64-bit integers: larger numbers are a 422, never a database overflow.
RowId = Annotated[int, Path(ge=0, le=2**63 - 1)]
SearcherDep = Annotated[Searcher, Depends(get_searcher)]
ApiSettingsDep = Annotated[ApiSettings, Depends(get_api_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
CaseManagerDep = Annotated[CaseManager, Depends(get_case_manager)]
ExplainerDep = Annotated[Explainer, Depends(get_explainer)]
QueryId = Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="query_id of a POST /search answer")]
ExplainSide = Annotated[int, Query(ge=64, le=1024, description="Longest side of each panel")]
ExplainLabel = Annotated[
    str | None, Query(max_length=256, description="The head's class to explain; default: its top class")
]
_PNG = {200: {"content": {"image/png": {}}}, **_ERRORS}


def search_filters(
    limits: ApiSettingsDep,
    k: Annotated[int, Form(ge=1, description="How many neighbours to return")] = 10,
    modality: Annotated[str | None, Form(max_length=16, description="Only images of this modality")] = None,
    body_part: Annotated[
        str | None, Form(max_length=64, description="Only images of this body part (BodyPartExamined)")
    ] = None,
    label: Annotated[
        str | None, Form(max_length=256, description="Only images whose case carries this diagnosis label")
    ] = None,
    min_similarity: Annotated[
        float | None, Form(ge=-1.0, le=1.0, description="Drop neighbours less similar than this")
    ] = None,
    group_by: Annotated[
        Literal["study", "series", "none"] | None,
        Form(description="Keep only the best hit per study or per series"),
    ] = None,
    exclude_patient: Annotated[
        bool, Form(description="Drop images of the query's own patient (matched by pseudonym)")
    ] = False,
) -> SearchFilters:
    """The search filters of a form; empty strings mean "no filter"."""
    if k > limits.max_k:
        raise HTTPException(422, f"k={k} is above the maximum of {limits.max_k}; ask for fewer neighbours")
    return SearchFilters(
        k=k,
        modality=(modality or "").strip() or None,
        body_part=(body_part or "").strip() or None,
        label=(label or "").strip() or None,
        min_similarity=min_similarity,
        group_by=_GROUPINGS.get(group_by or "none"),
        exclude_patient=exclude_patient,
    )


SearchFiltersDep = Annotated[SearchFilters, Depends(search_filters)]
CenterForm = Annotated[
    float | None, Form(description="Window center (level) for the displayed image, in window_units")
]
WidthForm = Annotated[float | None, Form(gt=0, description="Window width for the displayed image")]
PresetForm = Annotated[
    str | None, Form(max_length=32, description="A named CT window: " + ", ".join(CT_PRESET_NAMES))
]


def _window_or_none(center: float | None, width: float | None) -> DisplayWindow | None:
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise HTTPException(422, "send both window_center and window_width, or a preset")
    return DisplayWindow(center=center, width=width)


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload is larger than {limit} bytes; send a smaller image")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise HTTPException(422, "the uploaded file is empty; send a DICOM, PNG or JPEG image")
    return data


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


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC; stored times are UTC (SQLite drops the zone)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def split_label_field(value: str | None) -> list[str]:
    """Diagnosis labels sent as one form field, separated by ';' or '|'."""
    return [part for part in re.split(r"[;|]", value or "") if part.strip()]


def check_can_start(settings: ApiSettings, archive: Archive) -> None:
    """Refuse to serve beyond loopback without authentication: no dev mode, and at least one admin."""
    if is_loopback(settings.host):
        if settings.auth_disabled:
            log.warning(
                "AUTHENTICATION DISABLED (MEDCBIR_API_AUTH_DISABLED): development mode, loopback only"
            )
        return
    if settings.auth_disabled:
        raise RuntimeError(
            f"refusing to serve on {settings.host} with MEDCBIR_API_AUTH_DISABLED set: development mode "
            "is for 127.0.0.1 only; unset it and create users with `medcbir users create`"
        )
    if not any(a.role == "admin" and not a.disabled for a in list_accounts(archive.catalog)):
        raise RuntimeError(
            f"refusing to serve on {settings.host} with no user accounts: create the first admin with "
            "`medcbir users create --admin --username NAME` first"
        )


def create_app(
    settings: IndexerSettings | None = None,
    api_settings: ApiSettings | None = None,
    archive: Archive | None = None,
) -> FastAPI:
    """Build the app; the archive (catalog, encoder, index) is opened once, at startup."""
    limits = api_settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = archive if archive is not None else Archive.open(settings or IndexerSettings())
        try:
            check_can_start(limits, opened)
            app.state.api_settings = limits
            app.state.searcher = Searcher(opened, max_pixels=limits.max_pixels)
            app.state.case_manager = CaseManager(opened, app.state.searcher.index_lock, limits.max_pixels)
            app.state.explainer = Explainer(
                opened, limits.max_pixels, head_source=lambda: app.state.searcher.predictors().head
            )
            secret = limits.jwt_secret.get_secret_value().encode() if limits.jwt_secret else None
            if secret is not None and len(secret) < 32:
                raise RuntimeError("MEDCBIR_API_JWT_SECRET must be at least 32 characters")
            app.state.jwt_secret = secret or load_or_create_key(opened.settings.data_dir / "jwt.key")
            app.state.login_limiter = LoginLimiter(limits.login_attempts_per_minute)
        except BaseException:
            if archive is None:
                opened.close()
            raise
        log.info("search API ready: %d vectors, encoder %s", len(opened.index), opened.encoder.name)
        try:
            yield
        finally:
            if archive is None:
                opened.close()

    app = FastAPI(
        title="medcbir search API",
        version="0.1.0",
        description="Content-based medical image retrieval: send an image, get the most similar past cases. "
        "Sign in with POST /token (OAuth2 password flow) and send `Authorization: Bearer <token>`; "
        "service accounts send `X-API-Key`.",
        lifespan=lifespan,
    )
    app.add_middleware(SecurityMiddleware, fastapi_app=app)
    if limits.cors_origins:  # closed unless origins are named
        app.add_middleware(
            CORSMiddleware,
            allow_origins=limits.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )

    @app.exception_handler(ImagingError)
    async def imaging_error(_request: Request, exc: ImagingError) -> JSONResponse:
        return JSONResponse(status_code=_status_for(exc), content={"detail": str(exc)})

    @app.exception_handler(AccountError)
    async def account_error(_request: Request, exc: AccountError) -> JSONResponse:
        message = str(exc)
        status = (
            404
            if message.startswith("no user named")
            else 409
            if "already" in message or "last" in message
            else 422
        )
        return JSONResponse(status_code=status, content={"detail": message})

    @app.get("/health", response_model=HealthOut)
    def health(searcher: SearcherDep) -> HealthOut:
        return searcher.health()

    for error, status in _ERROR_STATUS.items():
        app.add_exception_handler(error, _detail_handler(status))

    @app.post(
        "/token", response_model=TokenOut, responses={401: {"model": ErrorOut}, 429: {"model": ErrorOut}}
    )
    async def login(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
        """OAuth2 password flow: form fields username and password; answers a signed, expiring JWT."""
        client = request.client.host if request.client else "unknown"
        request.state.audit_username = form.username[:64]
        wait = request.app.state.login_limiter.allow(client, form.username)
        if wait is not None:
            raise HTTPException(
                429, "too many sign-in attempts; wait a minute", headers={"Retry-After": str(math.ceil(wait))}
            )
        catalog = request.app.state.searcher.archive.catalog
        account = await run_in_threadpool(authenticate, catalog, form.username, form.password)
        if account is None:
            raise HTTPException(401, "wrong username or password", headers={"WWW-Authenticate": "Bearer"})
        request.state.audit_role = account.role
        minutes = request.app.state.api_settings.token_minutes
        token = issue_token(request.app.state.jwt_secret, account, minutes)
        return TokenOut(
            access_token=token,
            expires_in=minutes * 60,
            username=account.username,
            role=account.role,  # type: ignore[arg-type]
        )

    @app.get("/me", response_model=MeOut, responses=_ERRORS)
    def me(principal: PrincipalDep) -> MeOut:
        """Who the credentials belong to."""
        return MeOut(username=principal.username, role=principal.role, auth=principal.auth)  # type: ignore[arg-type]

    @app.post("/logout", response_model=LogoutOut, responses=_ERRORS)
    def logout(request: Request, principal: PrincipalDep) -> LogoutOut:
        """Sign out: the presented bearer token is refused from now on, by every worker (the catalog keeps
        its id until it would have expired). API keys stay valid until an admin revokes them."""
        if principal.auth != "token" or principal.token_id is None or principal.token_expires is None:
            return LogoutOut(
                revoked=False, detail="only bearer tokens are signed out; API keys are revoked by an admin"
            )
        expires = datetime.fromtimestamp(principal.token_expires, UTC)
        revoke_token(_catalog(request), principal.token_id, expires)
        return LogoutOut(revoked=True, detail="signed out: this token is refused from now on")

    @app.post("/search", response_model=SearchResponse, responses=_ERRORS)
    async def search(
        request: Request,
        principal: PrincipalDep,
        searcher: SearcherDep,
        limits: ApiSettingsDep,
        filters: SearchFiltersDep,
        file: Annotated[
            UploadFile, File(description="The query image: DICOM, PNG or JPEG (decided by its bytes)")
        ],
        window_center: CenterForm = None,
        window_width: WidthForm = None,
        preset: PresetForm = None,
    ) -> SearchResponse:
        window = _window_or_none(window_center, window_width)
        data = await _read_upload(file, limits.max_upload_bytes)
        result = await run_in_threadpool(
            lambda: searcher.search(data, filters=filters, window=window, window_preset=preset or None)
        )
        # The query image is kept (memory only, for its owner) so its matches can be explained later.
        query_id = request.app.state.explainer.queries.put(principal.username, data)
        set_audit_object(request, "cases:" + ",".join(str(h.case_id) for h in result.hits))
        return redact(result, principal).model_copy(update={"query_id": query_id})

    @app.post("/search/by-image/{image_id}", response_model=SearchResponse, responses=_ERRORS)
    async def search_by_image(
        request: Request,
        image_id: RowId,
        principal: PrincipalDep,
        searcher: SearcherDep,
        filters: SearchFiltersDep,
        window_center: CenterForm = None,
        window_width: WidthForm = None,
    ) -> SearchResponse:
        """Search with an archived image's stored embedding (no re-encoding); the image itself is left out."""
        window = _window_or_none(window_center, window_width)
        result = await run_in_threadpool(searcher.search_by_image, image_id, filters, window)
        shown = ",".join(str(h.case_id) for h in result.hits)
        set_audit_object(request, f"image:{image_id} cases:{shown}")
        return redact(result, principal)

    @app.post("/render", responses=_PNG, response_class=Response)
    async def render(
        searcher: SearcherDep,
        limits: ApiSettingsDep,
        file: Annotated[UploadFile, File(description="The image to render: DICOM, PNG or JPEG")],
        window_center: CenterForm = None,
        window_width: WidthForm = None,
        preset: PresetForm = None,
        max_side: Annotated[int, Form(ge=16, le=2048)] = 512,
    ) -> Response:
        """The uploaded image as a PNG with the window/level asked for; display only, nothing is stored."""
        data = await _read_upload(file, limits.max_upload_bytes)
        png = await run_in_threadpool(
            searcher.render, data, window_center, window_width, preset or None, max_side
        )
        return Response(content=png, media_type="image/png")

    @app.get("/images/{image_id}/render", responses=_PNG, response_class=Response)
    def render_image(
        image_id: RowId,
        searcher: SearcherDep,
        window_center: Annotated[float | None, Query()] = None,
        window_width: Annotated[float | None, Query(gt=0)] = None,
        preset: Annotated[str | None, Query(max_length=32)] = None,
        max_side: Annotated[int, Query(ge=16, le=2048)] = 512,
    ) -> Response:
        """An archived image re-rendered from its source file with the window/level asked for."""
        png = searcher.render_image(image_id, window_center, window_width, preset or None, max_side)
        return Response(content=png, media_type="image/png")

    _EXPLAIN = {**_PNG, 409: {"model": ErrorOut}}

    @app.get("/queries/{query_id}/similarity/{image_id}", responses=_EXPLAIN, response_class=Response)
    async def explain_query_similarity(
        request: Request,
        query_id: QueryId,
        image_id: RowId,
        principal: PrincipalDep,
        explainer: ExplainerDep,
        max_side: ExplainSide = 384,
    ) -> Response:
        """Why an archived image matched your search: query | image side by side, each with a heat map of
        the regions that drove their cosine similarity (X-Medcbir-Score). Queries are kept 30 minutes."""
        set_audit_object(request, f"query:{query_id} image:{image_id}")

        def explain() -> Explanation:
            query = explainer.query_pixels(query_id, principal.username)
            return explainer.similarity(query, explainer.image_pixels(image_id), max_side)

        return explanation_png(await run_in_threadpool(explain))

    @app.get("/images/{image_id}/similarity/{other_id}", responses=_EXPLAIN, response_class=Response)
    async def explain_image_similarity(
        request: Request,
        image_id: RowId,
        other_id: RowId,
        explainer: ExplainerDep,
        max_side: ExplainSide = 384,
    ) -> Response:
        """The same for two archived images (a search by image and one of its hits)."""
        set_audit_object(request, f"image:{image_id} image:{other_id}")

        def explain() -> Explanation:
            return explainer.similarity(
                explainer.image_pixels(image_id), explainer.image_pixels(other_id), max_side
            )

        return explanation_png(await run_in_threadpool(explain))

    @app.get("/queries/{query_id}/gradcam", responses=_EXPLAIN, response_class=Response)
    async def explain_query_gradcam(
        request: Request,
        query_id: QueryId,
        principal: PrincipalDep,
        explainer: ExplainerDep,
        label: ExplainLabel = None,
        max_side: ExplainSide = 384,
    ) -> Response:
        """Grad-CAM of the trained head's class `label` over your query image: the regions that raise it
        (its probability in X-Medcbir-Score). 404 when no head is trained (medcbir train-head)."""
        set_audit_object(request, f"query:{query_id}")

        def explain() -> Explanation:
            return explainer.grad_cam(explainer.query_pixels(query_id, principal.username), label, max_side)

        return explanation_png(await run_in_threadpool(explain))

    @app.get("/images/{image_id}/gradcam", responses=_EXPLAIN, response_class=Response)
    async def explain_image_gradcam(
        image_id: RowId,
        explainer: ExplainerDep,
        label: ExplainLabel = None,
        max_side: ExplainSide = 384,
    ) -> Response:
        """Grad-CAM of the trained head's class `label` over an archived image."""

        def explain() -> Explanation:
            return explainer.grad_cam(explainer.image_pixels(image_id), label, max_side)

        return explanation_png(await run_in_threadpool(explain))

    @app.get("/cases", response_model=CaseList, responses=_ERRORS)
    def list_cases(
        searcher: SearcherDep,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> CaseList:
        """The archive's cases, a page at a time, to pick a query from."""
        return searcher.cases(limit=limit, offset=offset)

    @app.post(
        "/cases", response_model=CaseOut, status_code=201, responses={**_ERRORS, 409: {"model": ErrorOut}}
    )
    async def add_case(
        request: Request,
        principal: PrincipalDep,
        searcher: SearcherDep,
        manager: CaseManagerDep,
        limits: ApiSettingsDep,
        files: Annotated[list[UploadFile], File(description="The case's images: DICOM, PNG or JPEG")],
        report: Annotated[str | None, Form(max_length=100_000, description="The report text")] = None,
        diagnosis: Annotated[
            str | None, Form(max_length=5000, description="Diagnosis labels, separated by ';' or '|'")
        ] = None,
        predicted_label: Annotated[
            str | None,
            Form(
                max_length=256,
                description="The label the search predicted (recorded as confirmed or corrected)",
            ),
        ] = None,
    ) -> CaseOut:
        """Add a case (images + report + diagnosis); it is searchable when this answers. Saving a search's
        query as a new case is this call with the query image and the confirmed or corrected label."""
        if not files or len(files) > limits.max_case_images:
            raise HTTPException(422, f"send 1 to {limits.max_case_images} images")
        uploads = [await _read_upload(f, limits.max_upload_bytes) for f in files]
        try:
            case_id = await run_in_threadpool(
                manager.add_case,
                uploads,
                report,
                split_label_field(diagnosis),
                principal.username,
                (predicted_label or "").strip() or None,
            )
        except DuplicateImageError as exc:
            raise HTTPException(409, str(exc)) from exc
        except CaseIngestError as exc:
            raise HTTPException(422, str(exc)) from exc
        set_audit_object(request, f"case:{case_id}")
        return redact_case(searcher.case(case_id), principal)

    @app.get("/filters", response_model=FilterOptions, responses=_ERRORS)
    def filters(searcher: SearcherDep) -> FilterOptions:
        """The modalities, body parts and diagnosis labels the archive holds, and the CT window presets."""
        return searcher.filter_options()

    @app.get("/cases/{case_id}", response_model=CaseOut, responses=_ERRORS)
    def get_case(case_id: RowId, searcher: SearcherDep, principal: PrincipalDep) -> CaseOut:
        return redact_case(searcher.case(case_id), principal)

    @app.patch("/cases/{case_id}", response_model=CaseOut, responses=_ERRORS)
    def edit_case(
        case_id: RowId,
        update: Annotated[CaseUpdate, Body()],
        searcher: SearcherDep,
        manager: CaseManagerDep,
        principal: PrincipalDep,
    ) -> CaseOut:
        """Change a case's report and/or diagnosis labels (a corrected diagnosis); kept in its history."""
        manager.edit_case(
            case_id, report=update.report, diagnosis=update.diagnosis, username=principal.username
        )
        return redact_case(searcher.case(case_id), principal)

    @app.get("/cases/{case_id}/history", response_model=list[CaseEditOut], responses=_ERRORS)
    def case_history(case_id: RowId, manager: CaseManagerDep) -> list[CaseEditOut]:
        """Who changed what in a case, and when (UTC)."""
        return [
            CaseEditOut(
                at=(e.at if e.at.tzinfo else e.at.replace(tzinfo=UTC)).isoformat(),
                username=e.username,
                field=e.field,
                old_value=e.old_value,
                new_value=e.new_value,
            )
            for e in manager.history(case_id)
        ]

    @app.delete("/cases/{case_id}", status_code=204, response_class=Response, responses=_ERRORS)
    def delete_case(case_id: RowId, manager: CaseManagerDep, principal: PrincipalDep) -> Response:
        """Delete a case: its rows, its vectors (they leave the index at once), thumbnails and uploads."""
        manager.delete_case(case_id, principal.username)
        return Response(status_code=204)

    @app.get(
        "/images/{image_id}/thumbnail",
        responses=_PNG,
        response_class=Response,
    )
    def thumbnail(image_id: RowId, searcher: SearcherDep) -> Response:
        return Response(content=searcher.thumbnail(image_id), media_type="image/png")

    # -- administration -------------------------------------------------------------------------

    def _catalog(request: Request) -> Any:
        return request.app.state.searcher.archive.catalog

    @app.get("/users", response_model=list[UserOut], responses=_ERRORS)
    def list_users(request: Request) -> list[UserOut]:
        """Every account (admin)."""
        return [
            UserOut(username=a.username, role=a.role, disabled=a.disabled, service=a.service)  # type: ignore[arg-type]
            for a in list_accounts(_catalog(request))
        ]

    @app.post(
        "/users",
        name="create_user",
        response_model=UserOut,
        status_code=201,
        responses={**_ERRORS, 409: {"model": ErrorOut}},
    )
    def create_user_route(request: Request, user: Annotated[UserCreate, Body()]) -> UserOut:
        """Create a person account (admin)."""
        request.state.audit_object = f"user:{user.username}"
        account = create_user(_catalog(request), user.username, user.password, user.role)
        return UserOut(username=account.username, role=account.role, disabled=account.disabled, service=False)  # type: ignore[arg-type]

    @app.patch("/users/{username}", response_model=UserOut, responses={**_ERRORS, 409: {"model": ErrorOut}})
    def update_user(request: Request, username: str, update: Annotated[UserUpdate, Body()]) -> UserOut:
        """Disable, enable or change the role of an account (admin)."""
        catalog = _catalog(request)
        account = None
        if update.role is not None:
            account = set_role(catalog, username, update.role)
        if update.disabled is not None:
            account = set_disabled(catalog, username, update.disabled)
        if account is None:
            raise HTTPException(422, "send role and/or disabled")
        return UserOut(
            username=account.username,
            role=account.role,  # type: ignore[arg-type]
            disabled=account.disabled,
            service=account.service,
        )

    @app.get("/audit", response_model=AuditPage, responses=_ERRORS)
    def read_audit(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        username: Annotated[str | None, Query(max_length=64)] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
    ) -> AuditPage:
        """The audit trail, newest first (admin)."""
        total, rows = audit_records(
            _catalog(request), limit=limit, offset=offset, username=username or None, action=action or None
        )
        return AuditPage(
            total=total,
            offset=offset,
            limit=limit,
            events=[
                AuditEventOut(
                    id=r.id,
                    at=utc_iso(r.at),
                    username=r.username,
                    role=r.role,
                    action=r.action,
                    object=r.object,
                    outcome=r.outcome,
                    status=r.status,
                    client=r.client,
                    request_id=r.request_id,
                )
                for r in rows
            ],
        )

    @app.post(
        "/admin/ingest",
        name="ingest_archive",
        response_model=IngestOut,
        status_code=201,
        responses={**_ERRORS, 413: {"model": ErrorOut}},
    )
    async def ingest_archive(
        request: Request,
        searcher: SearcherDep,
        limits: ApiSettingsDep,
        archive: Annotated[
            UploadFile, File(description="A .zip, .tar or .tar.gz of DICOM, PNG and JPEG images")
        ],
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
                csv_bytes = await _read_upload(manifest, limits.max_upload_bytes)
                csv_path = temporary.with_suffix(".csv")
                csv_path.write_bytes(csv_bytes)
                try:
                    loaded = load_manifest(csv_path, ManifestColumns())
                except ManifestError as exc:
                    raise HTTPException(422, str(exc)) from exc
                finally:
                    csv_path.unlink(missing_ok=True)
            try:
                kept = await run_in_threadpool(keep_upload, opened, temporary)
            except UploadError as exc:
                raise HTTPException(415, str(exc)) from exc
        finally:
            temporary.unlink(missing_ok=True)
        result = await run_in_threadpool(
            lambda: ingest_upload(opened, kept, loaded, searcher.index_lock, max_pixels=limits.max_pixels)
        )
        report = result.report
        set_audit_object(request, f"archive:{kept.stem[:16]} added:{report.indexed} failed:{report.failed}")
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
            index_size=len(opened.index),
            elapsed_s=round(report.elapsed_s, 2),
        )

    @app.post("/admin/rebuild-index", response_model=RebuildOut, responses=_ERRORS)
    async def rebuild_index(
        request: Request,
        searcher: SearcherDep,
        kind: Annotated[
            Literal["auto", "flat", "hnsw", "ivf_flat", "ivf_sq8", "ivf_pq"],
            Query(description="Index kind; auto picks one from the size and memory"),
        ] = "auto",
    ) -> RebuildOut:
        """Rebuild the FAISS index from the embeddings the catalog stores (admin); no image is re-encoded.
        Searches wait while the new index is built and swapped in."""
        started = time.perf_counter()
        index = await run_in_threadpool(rebuild_archive_index, searcher.archive, searcher.index_lock, kind)
        tuning = index.tuning
        set_audit_object(request, f"index:{index.kind} size:{len(index)}")
        return RebuildOut(
            size=len(index),
            kind=index.kind,
            tuning_param=tuning.param or None,
            tuning_value=tuning.value if tuning.param else None,
            recall_at_10=tuning.recall_at_10,
            elapsed_s=round(time.perf_counter() - started, 2),
        )

    return app
