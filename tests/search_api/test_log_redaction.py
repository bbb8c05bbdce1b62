"""The log redaction catches secrets that leak into a log line, whatever logger or handler writes it."""

from __future__ import annotations

import io
import logging

from search_api.log_redaction import install_log_redaction, redact, redact_query_values

PASSWORD = "hunter2-canary-password"
REPORT = "Canary report: left lower lobe nodule"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"
API_KEY = "mcb_" + "k" * 43


def test_secrets_in_text_are_redacted_and_redaction_is_idempotent() -> None:
    leaked = (
        f'GET /cases?api_key={API_KEY}&k=3 body={{"password": "{PASSWORD}", "report": "{REPORT}"}} '
        f"Authorization: Bearer {JWT} token={JWT}"
    )
    once = redact(leaked)
    for secret in (PASSWORD, REPORT, JWT, API_KEY):
        assert secret not in once
    assert "k=3" in once  # other values stay
    assert redact(once) == once


def test_query_values_of_access_log_paths_are_redacted() -> None:
    assert redact_query_values("/cases?limit=5&offset=10") == "/cases?limit=[redacted]&offset=[redacted]"
    assert redact_query_values("/health") == "/health"


def test_records_of_any_logger_and_their_tracebacks_are_redacted() -> None:
    install_log_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # added after the install: still sees redacted records
    logger = logging.getLogger("some.library.nobody.configured")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("request body %s", {"password": PASSWORD, "username": "alice"})
        try:
            raise ValueError(
                f"(sqlite3.IntegrityError)\n[SQL: UPDATE cases SET report=?]\n[parameters: ('{REPORT}', 3)]"
            )
        except ValueError:
            logger.exception("could not save, token=%s", JWT)
        access = logging.getLogger("uvicorn.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", f"/cases?api_key={API_KEY}", "1.1", 401)
        access.removeHandler(handler)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    for secret in (PASSWORD, REPORT, JWT, API_KEY):
        assert secret not in text, text
    assert "alice" in text and "[parameters: [redacted]]" in text and "/cases?api_key=[redacted]" in text
