"""One table turns errors into HTTP statuses: the most specific listed class wins, anything else is a 500."""

from __future__ import annotations

from imaging import CorruptImageError, ImageTooLargeError, UnsupportedFormatError
from indexer.cases import CaseIngestError, DuplicateImageError
from indexer.errors import NotFoundError
from indexer.governance.accounts import AccountConflictError, AccountError, UnknownAccountError
from search_api.errors import ERROR_STATUS, status_for
from search_api.windows import InvalidWindowError


def test_statuses_come_from_the_table() -> None:
    assert status_for(NotFoundError("x")) == 404
    assert status_for(UnsupportedFormatError("x")) == 415
    assert status_for(ImageTooLargeError("x")) == 413
    assert status_for(CorruptImageError("x")) == 422
    assert status_for(InvalidWindowError("x")) == 422
    assert status_for(DuplicateImageError("x")) == 409
    assert status_for(CaseIngestError("x")) == 422


def test_the_most_specific_class_wins() -> None:
    assert status_for(UnknownAccountError("no user named 'x'")) == 404
    assert status_for(AccountConflictError("a user named 'x' already exists")) == 409
    assert status_for(AccountError("the password must have at least 12 characters")) == 422


def test_an_unlisted_error_is_a_server_error() -> None:
    assert status_for(RuntimeError("bug")) == 500
    # listed errors are the client's to act on, or (502) a PACS behind the API that failed: never a 500
    assert all(400 <= status < 500 or status == 502 for status in ERROR_STATUS.values())
