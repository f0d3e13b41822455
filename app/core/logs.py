"""Log lines, and what they say about the work in hand.

Every role logs through :func:`configure` (``fluxgate api`` once more through uvicorn's
configuration, :func:`logging_config`): text for people (``fluxgate dev``), or one JSON object
a line (``LOG_FORMAT=json``, the Docker image's default) with ``time`` (ISO 8601, UTC),
``level``, ``logger``, ``message``, an ``exception`` field holding a traceback, and the context
fields known where the line was logged: ``request_id``, ``job_id``, ``key_id``, ``attempt``,
``delivery_id``.

The edges set the context: the HTTP middleware the request id (app/http/request_ids.py), the
key dependency the key, the worker's tasks the job or delivery they claimed. It is one mapping
in one context variable, changed in place by :func:`bind`: FastAPI runs plain ``def``
dependencies in a thread with a copy of the request's context, and a key authenticated there
must still reach the request's later lines.
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
CONTEXT_FIELDS = ("request_id", "job_id", "key_id", "attempt", "delivery_id")
# One line per upstream call at 64 in flight is noise; our own log says what happened.
QUIET_LOGGERS = ("httpx", "httpcore", "alembic.runtime.plugins", "python_multipart")

_context: ContextVar[dict[str, str | int] | None] = ContextVar("fluxgate_log_context", default=None)


# Paths whose last part is a credential: a shared image link's token works without a key.
CAPABILITY_PATHS = ("/v1/images/shared/",)


def loggable_path(path: str) -> str:
    """A request's path as it may be logged: no query string (it can hold a prompt search) and
    no capability token."""
    path = path.split("?", 1)[0]
    for prefix in CAPABILITY_PATHS:
        if path.startswith(prefix):
            return prefix + "…"
    return path


def start_request(request_id: str) -> None:
    """A new context for one HTTP request.

    Not undone when the request's middleware returns: each request runs in an asyncio task of
    its own whose context ends with it, and the lines logged after the middleware (the handler
    of an unexpected error, uvicorn's own report of it) belong to the request too.
    """
    _context.set({"request_id": request_id})


def bind(**fields: str | int | None) -> None:
    """Add ``fields`` (``None`` ones are left out) to the current context, in place."""
    known = {name: value for name, value in fields.items() if value is not None}
    current = _context.get()
    if current is None:
        _context.set(known)
    else:
        current.update(known)


@contextmanager
def bound(**fields: str | int | None) -> Iterator[None]:
    """The current context and ``fields``, for the lines logged inside the block (a worker's
    thread runs one task after another: each task's context ends with it)."""
    known = {name: value for name, value in fields.items() if value is not None}
    token = _context.set({**(_context.get() or {}), **known})
    try:
        yield
    finally:
        _context.reset(token)


def current_request_id() -> str | None:
    """The id of the HTTP request being served, if any."""
    value = (_context.get() or {}).get("request_id")
    return value if isinstance(value, str) else None


class WithContext(logging.Filter):
    """Puts the context's fields on every record a handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextLines(logging.Formatter):
    """``time LEVEL logger: message [request_id=... job_id=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        known = [
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name)
        ]
        if not known:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [{' '.join(known)}]{newline}{rest}"


def iso_utc(timestamp: float) -> str:
    """``2026-11-30T09:15:02.123Z``."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonLines(JsonFormatter):
    """One JSON object a line: time, level, logger, message, the context, any ``extra``
    fields, and a traceback as ``exception`` (its newlines escaped, so still one line)."""

    def __init__(self) -> None:
        super().__init__(
            "%(message)s",
            rename_fields={"exc_info": "exception", "stack_info": "stack"},
            # uvicorn repeats each message with terminal colours; 3.12 adds the asyncio task.
            reserved_attrs=[*RESERVED_ATTRS, "color_message", "taskName"],
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = iso_utc(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        super().add_fields(log_data, record, message_dict)
        for last in ("exception", "stack"):  # the long ones at the end of the line
            if last in log_data:
                log_data[last] = log_data.pop(last)


def logging_config(*, log_format: LogFormat, level: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of every role: the root logger to stderr in
    ``log_format``, with the context on every line."""
    formatter = "json" if log_format == "json" else "text"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": WithContext}},
        "formatters": {
            "text": {"()": TextLines},
            "json": {"()": JsonLines},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": formatter,
                "filters": ["context"],
            },
        },
        "loggers": {name: {"level": "WARNING"} for name in QUIET_LOGGERS},
        "root": {"level": level, "handlers": ["default"]},
    }


def configure(*, log_format: LogFormat, level: str) -> None:
    """Set up this process's logging; warnings become log lines too."""
    logging.config.dictConfig(logging_config(log_format=log_format, level=level))
    logging.captureWarnings(True)
