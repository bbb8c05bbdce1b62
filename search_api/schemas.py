"""Pydantic wire schemas of the search API, shared with the UI's HTTP client."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

GroupBy = Literal["study", "series"]
WindowUnits = Literal["modality", "display"]


class PacsLink(BaseModel):
    """Where a hit ingested from a PACS lives there: its UIDs, a WADO-RS URL, and a viewer deep link."""

    pacs: str = Field(description="The PACS's name in medcbir (`medcbir pacs list`)")
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    wado_url: str | None = Field(default=None, description="WADO-RS retrieve URL of the instance")
    viewer_url: str | None = Field(
        default=None, description="Deep link into the PACS's viewer, if configured"
    )


class RegionMatch(BaseModel):
    """Where a region query matches best inside a neighbour: a box in that neighbour's pixels."""

    box: list[int] = Field(description="x0, y0, x1, y1 in the neighbour's decoded pixels (end exclusive)")
    rows: int = Field(description="The neighbour's height in pixels, to scale the box onto a thumbnail")
    columns: int
    score: float = Field(description="Cosine of the region's vector and that box's pooled features")


class Hit(BaseModel):
    """One retrieved neighbour: the stored image, its case, and how similar it is to the query."""

    rank: int = Field(description="1-based rank, best first")
    image_id: int
    case_id: int
    case_key: str = Field(description="The case identifier from the manifest or the study UID")
    source_uri: str
    similarity: float = Field(description="Cosine similarity of the L2-normalised embeddings, in [-1, 1]")
    modality: str | None = None
    body_part: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_index: int = 0
    diagnosis: list[str] = Field(default_factory=list)
    report: str | None = None
    patient_ref: str | None = Field(default=None, description="Pseudonymous patient reference")
    thumbnail_url: str
    case_url: str
    region: RegionMatch | None = Field(
        default=None, description="Region queries only: where the region matches best in this neighbour"
    )
    pacs: PacsLink | None = Field(default=None, description="Set when the image was ingested from a PACS")


class LabelScore(BaseModel):
    """One label's share of the neighbour vote, or its probability under a trained head."""

    label: str
    score: float = Field(description="Share of the vote (or probability) in [0, 1]; all labels sum to 1")
    votes: int = Field(default=0, description="How many neighbours carry this label (0 for a trained head)")


class Prediction(BaseModel):
    """A prediction over the neighbours' diagnoses (kNN vote) or from a trained head, and how far to trust it."""

    label: str | None = Field(
        default=None, description="The winning label, or null when no neighbour is labeled"
    )
    confidence: float = 0.0
    scores: list[LabelScore] = Field(default_factory=list)
    labeled_neighbours: int = 0
    method: str = "similarity-weighted kNN vote"
    calibrated: bool = Field(
        default=False, description="Scores are probabilities calibrated on held-out patients (train-head)"
    )
    uncertain: bool = Field(
        default=False,
        description="No reliable match: the confidence is low or the query is far from every stored case",
    )
    uncertain_reason: str | None = Field(
        default=None,
        description='Why: "out_of_distribution: ...", "low_confidence: ..." or "no_labeled_neighbours"',
    )
    top_similarity: float | None = Field(
        default=None,
        description="The query's best similarity to the stored images the filters allow (the OOD check uses it)",
    )


class QueryInfo(BaseModel):
    """What the API understood of the uploaded query image."""

    format: str
    rows: int
    columns: int
    frames: int = 1
    frame_index: int = 0
    modality: str | None = None
    body_part: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    window_center: float | None = Field(default=None, description="The window the image was decoded with")
    window_width: float | None = None
    preview_png_base64: str = Field(description="The query rendered as the engine saw it, PNG, base64")
    display_window: DisplayWindow | None = Field(
        default=None, description="The window applied to the preview only, when one was asked for"
    )
    window_units: WindowUnits = Field(
        default="display",
        description='"modality": window values are modality units (HU for CT); "display": 0-255 grey levels',
    )
    window_min: float = Field(default=0.0, description="Lowest value the preview can show distinctly")
    window_max: float = Field(default=255.0, description="Highest value the preview can show distinctly")
    patient_ref: str | None = Field(
        default=None, description="Pseudonymous reference of the query's patient (keyed hash), if any"
    )
    image_id: int | None = Field(default=None, description="Set when the query is an archived image")
    case_id: int | None = None
    box: list[int] | None = Field(
        default=None, description="The region searched (x0, y0, x1, y1 in the query's pixels), if one was"
    )
    pacs: PacsLink | None = Field(
        default=None,
        description="Set when the query is an instance of a configured PACS (archived from one, or searched "
        "by reference): its UIDs, WADO-RS URL and viewer link",
    )


class DisplayWindow(BaseModel):
    """A window (level) applied to a displayed image: values center +- width/2 span black to white."""

    center: float
    width: float = Field(gt=0)
    preset: str | None = None


class SearchFilters(BaseModel):
    """What a search was restricted to; echoed in every answer."""

    k: int = 10
    modality: str | None = None
    body_part: str | None = None
    label: str | None = Field(default=None, description="Only images whose case carries this diagnosis")
    min_similarity: float | None = Field(default=None, description="Drop neighbours below this similarity")
    group_by: GroupBy | None = Field(default=None, description="Keep only the best hit per study or series")
    exclude_patient: bool = Field(default=False, description="Drop the query patient's own images")


ExclusionSource = Literal["patient_ref", "dicom_patient_id", "content_match", "archived_image"]


class Exclusion(BaseModel):
    """Whether the query's own patient was left out of the hits, how that patient was recognised, or why not."""

    requested: bool = Field(default=False, description="exclude_patient was asked for")
    applied: bool = Field(default=False, description="Images of the query's patient were left out")
    sources: list[ExclusionSource] = Field(
        default_factory=list,
        description='How the patient was recognised: "patient_ref" (sent with the query), '
        '"dicom_patient_id" (the DICOM header), "content_match" (a stored image with the same file or '
        'pixels), "archived_image" (the query is a stored image)',
    )
    excluded_images: int = Field(default=0, description="How many stored images were left out")
    reason: str | None = Field(
        default=None, description="Why the exclusion could not be applied (or was only partly applied)"
    )


class Refinement(BaseModel):
    """What a POST /search/refine answer was refined with (relevance feedback)."""

    round: int = Field(description="The round the client says this is (1 for the first refine)")
    positives: int = Field(description="Images marked relevant so far")
    negatives: int = Field(description="Images marked not relevant so far")
    pinned: list[int] = Field(
        default_factory=list, description="Marked positives shown first (in refined order)"
    )
    alpha: float
    beta: float
    gamma: float


class SearchResponse(BaseModel):
    """The answer to POST /search and POST /search/by-image/{image_id}."""

    query: QueryInfo
    hits: list[Hit]
    prediction: Prediction
    encoder: str
    index_size: int
    took_ms: float
    filters: SearchFilters = Field(default_factory=SearchFilters)
    candidates: int | None = Field(
        default=None, description="How many indexed images passed the filters (null: no filter)"
    )
    query_id: str | None = Field(
        default=None,
        description="POST /search only: names the query image (kept 30 minutes, for you only) in "
        "GET /queries/{query_id}/similarity/{image_id} and /queries/{query_id}/gradcam",
    )
    head_prediction: Prediction | None = Field(
        default=None, description="The trained head's prediction (null until `medcbir train-head` has run)"
    )
    exclusion: Exclusion = Field(
        default_factory=Exclusion, description="What exclude_patient did: applied or not, and why"
    )
    refinement: Refinement | None = Field(
        default=None, description="POST /search/refine only: the marks this list was refined with"
    )


class SeriesPair(BaseModel):
    """A query slice and the stored slice (image) it matches best in a series hit."""

    query_slice: int = Field(description="0-based position among the sent slices (files, then frames)")
    image_id: int
    similarity: float


class SeriesHitOut(BaseModel):
    """A stored series (a SeriesInstanceUID, or the frames of one file) and how well it matches."""

    rank: int
    series_key: str
    case_id: int
    slices: int
    score: float = Field(description="MaxSim: mean over query slices of their best cosine in this series")
    pairs: list[SeriesPair]
    diagnosis: list[str] = Field(default_factory=list, description="The diagnoses of the series' case")


class SlicePreview(BaseModel):
    """A small PNG of one sent slice (those in some hit's pairs), for showing pairs side by side."""

    query_slice: int
    name: str = Field(description="The sent file (or zip member) the slice came from")
    png_base64: str = Field(description="PNG bytes, base64, longest side at most 256 pixels")


class SeriesSearchResponse(BaseModel):
    """The answer to POST /search/series."""

    query_slices: int
    series_indexed: int
    hits: list[SeriesHitOut]
    took_ms: float
    modality: str | None = Field(default=None, description="The sent slices' modality (DICOM only)")
    prediction: Prediction = Field(
        default_factory=Prediction,
        description="The vote of the hit series' diagnoses (MaxSim scores as similarities), flagged "
        "uncertain by the same rules as POST /search",
    )
    query_previews: list[SlicePreview] = Field(default_factory=list)
    filters: SearchFilters = Field(
        default_factory=SearchFilters,
        description="What the search was restricted to (group_by does not apply: every hit is a series)",
    )
    candidates: int | None = Field(
        default=None,
        description="How many stored series passed the filters, every slice of each (null: no filter)",
    )
    exclusion: Exclusion = Field(
        default_factory=Exclusion, description="What exclude_patient did: applied or not, and why"
    )


class CaseImage(BaseModel):
    """An image that belongs to a case."""

    image_id: int
    source_uri: str
    modality: str | None = None
    body_part: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    sop_instance_uid: str | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int = 1
    thumbnail_url: str


class CaseOut(BaseModel):
    """A stored case with its report, diagnosis labels and images."""

    case_id: int
    case_key: str
    patient_ref: str | None = None
    study_instance_uid: str | None = None
    report: str | None = None
    diagnosis: list[str] = Field(default_factory=list)
    images: list[CaseImage] = Field(default_factory=list)


class CaseSummary(BaseModel):
    """A case as listed for picking: its labels, modalities and a representative image."""

    case_id: int
    case_key: str
    diagnosis: list[str] = Field(default_factory=list)
    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    study_description: str | None = None
    image_ids: list[int] = Field(default_factory=list)
    thumbnail_url: str | None = None
    report_excerpt: str | None = None


class CaseList(BaseModel):
    """One page of the archive's cases, in id order."""

    total: int
    offset: int
    limit: int
    cases: list[CaseSummary] = Field(default_factory=list)


class LabelCount(BaseModel):
    """A diagnosis label and how many cases carry it."""

    label: str
    cases: int


class FilterOptions(BaseModel):
    """The values the archive holds for each search filter."""

    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    labels: list[LabelCount] = Field(default_factory=list)
    window_presets: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="The named CT windows (center, width in HU) the server knows: imaging's preset table",
    )


class HealthOut(BaseModel):
    """Liveness and what the server loaded."""

    status: str
    encoder: str
    dim: int
    device: str
    backend: str = Field(default="torch", description="The encoder's forward pass: torch or onnxruntime")
    index_size: int
    catalog_ok: bool
    catalog_images: int
    catalog_size: int = Field(
        default=0, description="Images with a vector from the served encoder: what a complete index holds"
    )
    catalog_generation: int = Field(
        default=0, description="How many vector rows any writer ever added, deleted or changed"
    )
    index_generation: int = Field(
        default=0, description="The catalog generation the served index is in step with"
    )
    index_behind_rows: int = Field(
        default=0, description="Vector row changes in the catalog that the served index has not taken in yet"
    )
    index_behind_seconds: float = Field(
        default=0.0,
        description="0 when in step; else how long since the index was last seen in step (stale beyond "
        "max(60 s, 3 polls): status says so)",
    )
    index_poll_seconds: float = Field(
        default=0.0,
        description="How often the server takes in other writers' rows (MEDCBIR_API_INDEX_POLL_SECONDS)",
    )
    modalities: list[str] = Field(default_factory=list)
    index_postprocess: str = Field(
        default="none",
        description="The label-free post-processing SPEC the index serves (`rebuild-index --postprocess`)",
    )
    index_postprocess_version: str | None = Field(
        default=None, description="The version (fit hash) of that post-processing, null when none"
    )
    head_version: str | None = Field(
        default=None, description="The trained head the API serves (`medcbir train-head`), null when none"
    )
    vote_calibration_version: str | None = Field(
        default=None,
        description="The kNN vote calibration the API serves, null when the vote is uncalibrated",
    )


class ValidationProblem(BaseModel):
    """One rejected part of a request: where (loc), what is wrong (msg), pydantic's error type; never the value."""

    loc: list[str]
    msg: str
    type: str | None = None


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: what went wrong and what to do (422s list each rejected part too)."""

    detail: str
    errors: list[ValidationProblem] | None = None


# -- accounts, case management and audit -----------------------------------------------------------

Role = Literal["radiologist", "admin"]


class TokenOut(BaseModel):
    """An OAuth2 bearer token (a signed JWT) and who it is for."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires")
    username: str
    role: Role


class MeOut(BaseModel):
    """The caller: who they are and what their role lets them do."""

    username: str
    role: Role
    auth: Literal["token", "api_key", "dev"]


class UserOut(BaseModel):
    """A user account (never its password hash)."""

    username: str
    role: Role
    disabled: bool
    service: bool


class UserCreate(BaseModel):
    """A new person account; the admin chooses the first password, the user should change it."""

    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    password: str = Field(min_length=12, max_length=1024)
    role: Role = "radiologist"


class UserUpdate(BaseModel):
    """Change a user's role or status; fields left out stay as they are."""

    role: Role | None = None
    disabled: bool | None = None


class CaseUpdate(BaseModel):
    """New report text and/or diagnosis labels of a case; fields left out stay as they are."""

    report: str | None = Field(default=None, max_length=100_000)
    diagnosis: list[str] | None = Field(default=None, max_length=50)


class CaseEditOut(BaseModel):
    """One recorded change of a case."""

    at: str = Field(description="UTC time, ISO 8601")
    username: str | None
    field: str
    old_value: str | None
    new_value: str | None


class FeedbackMarksIn(BaseModel):
    """The marks of one refined search, to keep with a case (PUT /cases/{case_id}/feedback-marks)."""

    model_config = {"extra": "forbid"}

    origin: str = Field(
        pattern=r"^(query:[0-9a-f]{32}|image:[0-9]{1,19})$",
        description="The refined search: query:<query_id> of a POST /search, or image:<image_id> of a by-image search",
    )
    round: int = Field(default=1, ge=1, le=1000, description="The refine round the marks were sent with")
    positive: list[int] = Field(default_factory=list, description="Image ids marked relevant")
    negative: list[int] = Field(default_factory=list, description="Image ids marked not relevant")


class FeedbackMarkOut(BaseModel):
    """One relevance mark kept with a case."""

    origin: str
    image_id: int
    relevant: bool
    round: int
    username: str | None
    at: str = Field(description="UTC time, ISO 8601")


class AuditEventOut(BaseModel):
    """One audit row."""

    id: int
    at: str = Field(description="UTC time, ISO 8601")
    username: str | None
    role: str | None
    action: str
    object: str | None
    outcome: str
    status: int | None
    client: str | None
    request_id: str | None


class AuditPage(BaseModel):
    """A page of the audit trail, newest first."""

    total: int
    offset: int
    limit: int
    events: list[AuditEventOut] = Field(default_factory=list)


class LogoutOut(BaseModel):
    """What POST /logout did: a bearer token is refused from now on; API keys are revoked by an admin."""

    revoked: bool
    detail: str


# -- administration: ingest and rebuild ------------------------------------------------------------


class IngestFailureOut(BaseModel):
    """A file of an uploaded archive that was not added: its member name and the reason (no patient text)."""

    member: str
    error_type: str
    reason: str


class IngestOut(BaseModel):
    """What POST /admin/ingest did with an uploaded archive (the same ingest as `medcbir index`)."""

    seen: int
    added: int
    skipped: int = Field(
        description="Already in the archive (same bytes, or same SOP Instance UID and pixels)"
    )
    not_images: int
    failed: int
    failures: list[IngestFailureOut] = Field(default_factory=list)
    index_size: int
    elapsed_s: float


class RebuildOut(BaseModel):
    """The FAISS index as POST /admin/rebuild-index rebuilt it from the catalog's stored embeddings."""

    size: int
    kind: str
    tuning_param: str | None
    tuning_value: int | None
    recall_at_10: float = Field(description="Measured recall@10 against exact search (1.0 for exact kinds)")
    elapsed_s: float
