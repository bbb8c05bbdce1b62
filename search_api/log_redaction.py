"""Redaction of secrets (passwords, tokens, API keys, query strings, report text) from every server log record."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

REDACTED = "[redacted]"
# Names whose values are never logged: in a query string or form (name=value), in JSON ("name": "value")
# and in a Python repr ('name': 'value'). "input" is pydantic's copy of what was sent.
SECRET_NAMES = (
    "password|passwd|new_password|token|access_token|api_?key|apikey|key|secret|report|report_text|input"
)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"(?i)\b((?:{SECRET_NAMES})=)(?!\[redacted\])[^&\s\"'\]]*"), r"\1" + REDACTED),
    (re.compile(rf'(?i)("(?:{SECRET_NAMES})"\s*:\s*)"(?:[^"\\]|\\.)*"'), r'\1"' + REDACTED + '"'),
    (
        re.compile(rf"(?i)('(?:{SECRET_NAMES})'\s*:\s*)(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"),
        r"\1'" + REDACTED + "'",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b(x-api-key\s*[:=]\s*)\S+"), r"\1" + REDACTED),
    (re.compile(r"\b(mcb_)[A-Za-z0-9_-]{8,}"), r"\1" + REDACTED),  # an API key anywhere
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), REDACTED),  # a JWT anywhere
    # the bound values of a failed SQL statement (SQLAlchemy prints them: report text, hashes)
    (re.compile(r"(\[parameters: ).*?(\]\n|\]$|\n\(Background)", re.DOTALL), r"\1" + REDACTED + r"\2"),
]
_QUERY = re.compile(r"\?([^\s\"]*)")
_QUERY_PAIR = re.compile(r"([^&=]*)=[^&]*")


def redact(text: str) -> str:
    """The text with every secret-looking value replaced by [redacted]."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_query_values(path: str) -> str:
    """A request target with every query value redacted (the names stay): /cases?k=[redacted]."""
    return _QUERY.sub(lambda m: "?" + _QUERY_PAIR.sub(r"\1=" + REDACTED, m.group(1)), path)


def _redact_arg(value: Any) -> Any:
    if value is None or isinstance(value, int | float):
        return value  # kept for %d and %f
    return redact(value if isinstance(value, str) else str(value))  # an exception's text, a dict...


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record in place: its message, its traceback text; for uvicorn's access log (whose
    formatter reads the arguments) each argument, every query value included: credentials in a URL
    are refused, but the URL is still logged."""
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) >= 3:
        args = [_redact_arg(a) for a in record.args]
        if isinstance(args[2], str):
            args[2] = redact_query_values(args[2])
        record.args = tuple(args)
    elif record.args or isinstance(record.msg, str):
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the record, redact what there is
            message = f"{record.msg} {record.args!r}"
        # The formatted text is redacted, not the format: "token=%s" must still match its argument.
        record.msg, record.args = redact(message), ()
    if record.exc_info and not record.exc_text:
        # Formatters reuse exc_text when it is set, so the traceback they print is the redacted one.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)


class RedactingFilter(logging.Filter):
    """A filter that redacts (never drops) every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


SERVER_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "search_api", "indexer", "fastapi")
_installed = threading.Lock()
_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Redact every log record this process makes from now on (idempotent).

    A filter on a logger misses records that propagate from its children, and one on a handler misses
    handlers added later (uvicorn configures its own), so records are redacted where they are made:
    the log record factory. The filter also goes on the server's loggers and their current handlers,
    for records made by a factory installed after this one.
    """
    with _installed:
        factory = logging.getLogRecordFactory()
        if not getattr(factory, "medcbir_redacting", False):

            def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = factory(*args, **kwargs)
                redact_record(record)
                return record

            redacting_factory.medcbir_redacting = True  # type: ignore[attr-defined]
            logging.setLogRecordFactory(redacting_factory)
        for name in SERVER_LOGGERS:
            logger = logging.getLogger(name)
            for holder in (logger, *logger.handlers):
                if _FILTER not in holder.filters:
                    holder.addFilter(_FILTER)
