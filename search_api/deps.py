"""Every dependency a route may ask for (`XDep = Annotated[X, Depends(...)]`); routes never read app.state."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer

from indexer.archive import Archive
from indexer.cases import CaseManager
from indexer.catalog import Catalog
from search_api.access import Principal
from search_api.explanations import Explainer, QueryStore
from search_api.refine import Refiner
from search_api.schemas import DisplayWindow, GroupBy, SearchFilters
from search_api.searcher import Searcher
from search_api.security import LoginLimiter
from search_api.series import SeriesSearcher
from search_api.settings import ApiSettings
from search_api.windows import PRESET_NAMES

_GROUPINGS: dict[str, GroupBy] = {"study": "study", "series": "series"}


def get_searcher(request: Request) -> Searcher:
    """The searcher the lifespan built."""
    searcher: Searcher = request.app.state.searcher
    return searcher


def get_archive(searcher: Annotated[Searcher, Depends(get_searcher)]) -> Archive:
    """The open archive (catalog, encoder, index) the searcher serves."""
    return searcher.archive


def get_catalog(archive: Annotated[Archive, Depends(get_archive)]) -> Catalog:
    """The archive's catalog."""
    return archive.catalog


def get_api_settings(request: Request) -> ApiSettings:
    """The settings the app was created with."""
    settings: ApiSettings = request.app.state.api_settings
    return settings


def get_case_manager(request: Request) -> CaseManager:
    """The case manager the lifespan built."""
    manager: CaseManager = request.app.state.case_manager
    return manager


def get_explainer(request: Request) -> Explainer:
    """The explainer the lifespan built (similarity maps, Grad-CAM, the kept query images)."""
    explainer: Explainer = request.app.state.explainer
    return explainer


def get_query_store(explainer: Annotated[Explainer, Depends(get_explainer)]) -> QueryStore:
    """Where query images are kept (memory only, for their owner) so their matches can be explained."""
    return explainer.queries


def get_refiner(
    searcher: Annotated[Searcher, Depends(get_searcher)],
    queries: Annotated[QueryStore, Depends(get_query_store)],
) -> Refiner:
    """Relevance feedback over the searcher and the kept query images (no state of its own)."""
    return Refiner(searcher, queries)


def get_series_searcher(request: Request) -> SeriesSearcher:
    """The series searcher (its grouping of stored slices is cached, rebuilt when the index changes)."""
    state = request.app.state
    found: SeriesSearcher | None = getattr(state, "series_searcher", None)
    if found is None:
        found = state.series_searcher = SeriesSearcher(state.searcher)
    return found


def get_login_limiter(request: Request) -> LoginLimiter:
    """The sign-in rate limiter."""
    limiter: LoginLimiter = request.app.state.login_limiter
    return limiter


def get_jwt_secret(request: Request) -> bytes:
    """The key tokens are signed with."""
    secret: bytes = request.app.state.jwt_secret
    return secret


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


class AuditNote:
    """Names what a request touched (e.g. the cases a search showed) in its audit row."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def __call__(self, value: str) -> None:
        self._request.state.audit_object = value[:4000]

    def user(self, username: str) -> None:
        """The username a sign-in attempt named (there is no principal yet)."""
        self._request.state.audit_username = username[:64]

    def role(self, role: str) -> None:
        """The role of the account that signed in."""
        self._request.state.audit_role = role


def get_search_filters(
    limits: Annotated[ApiSettings, Depends(get_api_settings)],
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
        bool,
        Form(
            description="Drop images of the query's own patient (from patient_ref, the DICOM PatientID or "
            "stored images with the same file or pixels); the answer's `exclusion` says whether it applied"
        ),
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


CenterForm = Annotated[
    float | None, Form(description="Window center (level) for the displayed image, in window_units")
]
WidthForm = Annotated[float | None, Form(gt=0, description="Window width for the displayed image")]
PresetForm = Annotated[
    str | None, Form(max_length=32, description="A named CT window: " + ", ".join(PRESET_NAMES))
]
BoxForm = Annotated[
    str | None,
    Form(
        max_length=64,
        description="A region of the query to search with: x0,y0,x1,y1 in the query's pixels (left, top, "
        "right, bottom; at least 8 x 8); the answer's hits then carry where it matches in each neighbour",
    ),
]
PatientRefForm = Annotated[
    str | None,
    Form(
        max_length=128,
        description="The query's patient for exclude_patient when the upload does not say it (PNG/JPEG): "
        "the patient's ID (pseudonymised on arrival, never stored) or its P-... reference",
    ),
]


def form_window(window_center: float | None, window_width: float | None) -> DisplayWindow | None:
    """The window/level of a form: both center and width, or neither."""
    if window_center is None and window_width is None:
        return None
    if window_center is None or window_width is None:
        raise HTTPException(422, "send both window_center and window_width, or a preset")
    return DisplayWindow(center=window_center, width=window_width)


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """An uploaded file's bytes: 413 above `limit`, 422 when empty."""
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


SearcherDep = Annotated[Searcher, Depends(get_searcher)]
ArchiveDep = Annotated[Archive, Depends(get_archive)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
ApiSettingsDep = Annotated[ApiSettings, Depends(get_api_settings)]
CaseManagerDep = Annotated[CaseManager, Depends(get_case_manager)]
ExplainerDep = Annotated[Explainer, Depends(get_explainer)]
QueryStoreDep = Annotated[QueryStore, Depends(get_query_store)]
RefinerDep = Annotated[Refiner, Depends(get_refiner)]
SeriesSearcherDep = Annotated[SeriesSearcher, Depends(get_series_searcher)]
LoginLimiterDep = Annotated[LoginLimiter, Depends(get_login_limiter)]
JwtSecretDep = Annotated[bytes, Depends(get_jwt_secret)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AuditDep = Annotated[AuditNote, Depends(AuditNote)]
SearchFiltersDep = Annotated[SearchFilters, Depends(get_search_filters)]

# Catalog ids are 64-bit integers: larger numbers are a 422, never a database overflow.
RowId = Annotated[int, Path(ge=0, le=2**63 - 1)]
QueryId = Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="query_id of a POST /search answer")]
ExplainSide = Annotated[int, Query(ge=64, le=1024, description="Longest side of each panel")]
ExplainLabel = Annotated[
    str | None, Query(max_length=256, description="The head's class to explain; default: its top class")
]
