"""The catalog, the source of truth: tables (models) and the Catalog repository that queries them."""

from indexer.catalog.generation import CatalogGeneration
from indexer.catalog.models import (
    ApiKey,
    AuditEvent,
    Base,
    Case,
    CaseEdit,
    Diagnosis,
    Image,
    ImageEmbedding,
    IngestFailure,
    RevokedToken,
    User,
    has_vector_from,
)
from indexer.catalog.repository import Catalog, CatalogStats, postgres_driver_url

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Base",
    "Case",
    "CaseEdit",
    "Catalog",
    "CatalogGeneration",
    "CatalogStats",
    "Diagnosis",
    "Image",
    "ImageEmbedding",
    "IngestFailure",
    "RevokedToken",
    "User",
    "has_vector_from",
    "postgres_driver_url",
]
