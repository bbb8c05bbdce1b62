"""Pydantic wire schemas of the search API, shared with the UI's HTTP client."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
    frame_index: int = 0
    diagnosis: list[str] = Field(default_factory=list)
    report: str | None = None
    patient_ref: str | None = Field(default=None, description="Pseudonymous patient reference")
    thumbnail_url: str
    case_url: str


class LabelScore(BaseModel):
    """One label's share of the similarity-weighted neighbour vote."""

    label: str
    score: float = Field(description="Share of the vote in [0, 1]; the scores of all labels sum to 1")
    votes: int = Field(description="How many neighbours carry this label")


class Prediction(BaseModel):
    """A similarity-weighted vote over the neighbours' diagnoses."""

    label: str | None = Field(
        default=None, description="The winning label, or null when no neighbour is labeled"
    )
    confidence: float = 0.0
    scores: list[LabelScore] = Field(default_factory=list)
    labeled_neighbours: int = 0
    method: str = "similarity-weighted kNN vote"


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
    window_center: float | None = None
    window_width: float | None = None
    preview_png_base64: str = Field(description="The query rendered as the engine saw it, PNG, base64")


class SearchResponse(BaseModel):
    """The answer to POST /search."""

    query: QueryInfo
    hits: list[Hit]
    prediction: Prediction
    encoder: str
    index_size: int
    took_ms: float


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


class HealthOut(BaseModel):
    """Liveness and what the server loaded."""

    status: str
    encoder: str
    dim: int
    device: str
    index_size: int
    catalog_ok: bool
    catalog_images: int
    modalities: list[str] = Field(default_factory=list)


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: what went wrong and what to do."""

    detail: str
