"""Logging set-up for the service entry points; library code only calls getLogger(__name__)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
# A key in a URL's query (the page's EventSource carries it so, as it cannot set a header)
# would be in every access line, and so in the hands of anyone who reads the logs.
_TOKEN_IN_QUERY = re.compile(r"(\b(?:access_token|api_key)=)[^&\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with any key in a URL's query written as ***."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


# Fields every line of the current task carries (run_id, step_id, tenant): asyncio copies the
# context into each task, so one run's fields never reach another's lines.
_CONTEXT: ContextVar[dict[str, str]] = ContextVar("nyxflow_log_context", default={})  # noqa: B039


def bind(**fields: str) -> None:
    """Add fields to every later line of this task (and the tasks it starts)."""
    _CONTEXT.set({**_CONTEXT.get(), **fields})


@contextlib.contextmanager
def bound(**fields: str) -> Iterator[None]:
    """Add fields to the lines logged inside the block."""
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with whatever context was passed in `extra`."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        entry.update(_CONTEXT.get())
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
