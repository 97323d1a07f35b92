"""Structured (JSON) logs carrying the request ID of the request being served.

The ID lives in a context variable set by the request middleware, so any log line emitted while
serving a request (ours, uvicorn's, a library's) gets it through `RequestIdFilter`.
"""

from __future__ import annotations

import logging
import os
import re
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS

REQUEST_ID_HEADER = "x-request-id"
#: What a request ID may look like (echoed, logged, and the key /feedback labels predictions by).
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:/+=@-]{1,128}$"
_VALID_ID = re.compile(REQUEST_ID_PATTERN)

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def accept_or_make_request_id(incoming: str | None) -> str:
    """Echo a caller's well-formed ID; otherwise (absent, too long, odd characters) make one."""
    if incoming and _VALID_ID.fullmatch(incoming):
        return incoming
    return os.urandom(16).hex()


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """dictConfig for the service process(es): every logger, uvicorn's included, as JSON lines."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "tabml.serving.logs.RequestIdFilter"}},
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": JSON_FORMAT,
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
                # uvicorn's coloured duplicate of the message
                "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
            },
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "json",
                "filters": ["request_id"],
            },
        },
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level.upper()}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "tabml")
        },
    }
