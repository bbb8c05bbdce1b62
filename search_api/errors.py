"""The one table from exception type to HTTP status, and the handlers that answer with it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from imaging import (
    CorruptImageError,
    ImageTooLargeError,
    ImagingError,
    MissingCodecError,
    UnsupportedFormatError,
)
from imaging.region import InvalidBoxError
from indexer.cases import CaseIngestError, DuplicateImageError
from indexer.errors import ManifestError, NotFoundError
from indexer.governance.accounts import (
    AccountConflictError,
    AccountError,
    PasswordHashingBusyError,
    UnknownAccountError,
)
from indexer.ingest.uploads import UploadError
from indexer.storage.dicomweb import PacsError, PacsNotFoundError
from indexer.storage.pacs_writeback import WriteBackDisabledError
from indexer.vectors.kinds import TooFewVectorsError
from search_api.explanations import ExplanationUnavailableError, NoHeadError, UnknownLabelError
from search_api.refine import InvalidFeedbackError
from search_api.schemas import ErrorOut
from search_api.series import InvalidSeriesError, SeriesTooLargeError
from search_api.windows import InvalidWindowError

log = logging.getLogger(__name__)

# Errors whose message is the answer (it says what to do), by the status they map to. The most
# specific class of a raised error wins (its method resolution order is walked), so a subclass may
# map to another status than its base.
ERROR_STATUS: dict[type[Exception], int] = {
    NotFoundError: 404,
    PacsNotFoundError: 404,
    PacsError: 502,  # the PACS behind us failed, not the request
    NoHeadError: 404,
    UnknownAccountError: 404,
    AccountConflictError: 409,
    DuplicateImageError: 409,
    ExplanationUnavailableError: 409,
    WriteBackDisabledError: 409,
    ImageTooLargeError: 413,
    PasswordHashingBusyError: 429,
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
    InvalidFeedbackError: 422,
    InvalidBoxError: 422,
    InvalidSeriesError: 422,
    SeriesTooLargeError: 413,
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


# -- request validation: the same {"detail": text} shape, never the rejected values ----------------


def _problem(error: dict[str, Any]) -> dict[str, Any]:
    """One validation problem as loc, msg and type: pydantic's `input` and `ctx` are dropped, since they
    hold what was sent (a password, report text)."""
    message = str(error.get("msg", "not valid"))
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error")  # the parser's own words, never the body's
        message = f"the body is not valid JSON ({reason}); send UTF-8 JSON" if reason else message
    sent = error.get("input")
    if isinstance(sent, str) and len(sent) >= 4 and sent in message:
        message = "the value is not valid"  # a message quoting the input would echo it
    return {
        "loc": [str(part)[:64] for part in error.get("loc", ())],
        "msg": message,
        "type": error.get("type"),
    }


async def answer_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 `{"detail": "where: what", "errors": [{loc, msg, type}]}`: like every other 4xx, plus where."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = [_problem(dict(error)) for error in errors]
    detail = "; ".join(f"{'.'.join(p['loc']) or 'request'}: {p['msg']}" for p in problems)
    return JSONResponse(
        status_code=422, content={"detail": detail or "the request is not valid", "errors": problems}
    )


async def answer_server_error(request: Request, _exc: Exception) -> JSONResponse:
    """500 in the shape of every other error; the traceback goes to the (redacted) server log."""
    request_id = getattr(request.state, "request_id", None) or "unknown"
    return JSONResponse(
        status_code=500,
        content={"detail": f"internal error; the server log has the details of request {request_id}"},
    )


class LoneSurrogateError(json.JSONDecodeError):
    """A JSON string holds half of a UTF-16 pair (e.g. "\\ud800"): valid JSON, but not text."""


def _refuse_lone_surrogates(value: Any, document: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LoneSurrogateError(
                "a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff); send valid unicode text",
                document,
                0,
            ) from exc
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_lone_surrogates(key, document)
            _refuse_lone_surrogates(item, document)
    elif isinstance(value, list):
        for item in value:
            _refuse_lone_surrogates(item, document)


class StrictJsonRequest(Request):
    """A request whose JSON body must be text: a lone surrogate is a JSON error (422), not a 500 later."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            value = json.loads(await self.body())
            _refuse_lone_surrogates(value, "")
            self._json = value
        return self._json


class StrictJsonRoute(APIRoute):
    """The route class of every router: bodies are read as StrictJsonRequest."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error type of ERROR_STATUS with its status (one handler, one table), validation
    errors without their values, and anything else as a JSON 500; every route must be a StrictJsonRoute."""
    for error in ERROR_STATUS:
        app.add_exception_handler(error, answer_error)
    app.add_exception_handler(RequestValidationError, answer_validation_error)
    app.add_exception_handler(Exception, answer_server_error)
    loose = [r.path for r in app.routes if isinstance(r, APIRoute) and not isinstance(r, StrictJsonRoute)]
    if loose:
        raise RuntimeError(
            f"routes {loose} read JSON without the lone-surrogate check: declare their router as "
            "APIRouter(route_class=StrictJsonRoute)"
        )
