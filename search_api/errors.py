"""The one table from exception type to HTTP status, and the handlers that answer with it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from imaging import (
    CorruptImageError,
    ImageTooLargeError,
    ImagingError,
    MissingCodecError,
    UnsupportedFormatError,
)
from indexer.cases import CaseIngestError, DuplicateImageError
from indexer.errors import ManifestError, NotFoundError
from indexer.governance.accounts import AccountConflictError, AccountError, UnknownAccountError
from indexer.ingest.uploads import UploadError
from indexer.vectors.kinds import TooFewVectorsError
from search_api.explanations import ExplanationUnavailableError, NoHeadError, UnknownLabelError
from search_api.schemas import ErrorOut
from search_api.windows import InvalidWindowError

# Errors whose message is the answer (it says what to do), by the status they map to. The most
# specific class of a raised error wins (its method resolution order is walked), so a subclass may
# map to another status than its base.
ERROR_STATUS: dict[type[Exception], int] = {
    NotFoundError: 404,
    NoHeadError: 404,
    UnknownAccountError: 404,
    AccountConflictError: 409,
    DuplicateImageError: 409,
    ExplanationUnavailableError: 409,
    ImageTooLargeError: 413,
    UnsupportedFormatError: 415,
    UploadError: 415,
    ImagingError: 422,
    CorruptImageError: 422,
    MissingCodecError: 422,
    AccountError: 422,
    CaseIngestError: 422,
    ManifestError: 422,
    InvalidWindowError: 422,
    UnknownLabelError: 422,
    TooFewVectorsError: 422,
}

# The error answers every route may give, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (401, 403, 404, 413, 415, 422)
}
CONFLICT_RESPONSES: dict[int | str, dict[str, Any]] = {**ERROR_RESPONSES, 409: {"model": ErrorOut}}
PNG_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}, **ERROR_RESPONSES}


def status_for(exc: BaseException) -> int:
    """The status of an error in ERROR_STATUS (its most specific listed class); 500 when none is listed."""
    for cls in type(exc).__mro__:
        status = ERROR_STATUS.get(cls)
        if status is not None:
            return status
    return 500


async def answer_error(_request: Request, exc: Exception) -> JSONResponse:
    """An error of ERROR_STATUS as `{"detail": message}` with its status."""
    return JSONResponse(status_code=status_for(exc), content={"detail": str(exc)})


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error type of ERROR_STATUS with its status (one handler, one table)."""
    for error in ERROR_STATUS:
        app.add_exception_handler(error, answer_error)
