"""Structured logging for the daemons: one line per event, ``key=value`` or JSON.

The root logger writes into a queue and a listener thread does the actual write to stderr, so a
slow or blocked stderr (a full journald pipe) never stalls the event loop.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

_RESERVED = ("ts", "level", "logger", "msg")


def kv(**fields: object) -> dict[str, object]:
    """``log.info("pod started", extra=kv(pod=..., uid=...))``."""
    return {"fields": fields}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            out[key if key not in _RESERVED else f"field_{key}"] = value
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        out["exc"] = record.exc_text
    return out


class _StructuredQueueHandler(logging.handlers.QueueHandler):
    """Like QueueHandler, but keeps the traceback out of ``msg`` so it becomes a field."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        prepared = copy.copy(record)
        if record.exc_info:
            prepared.exc_text = logging.Formatter().formatException(record.exc_info)
        prepared.msg = record.getMessage()
        prepared.args = None
        prepared.exc_info = None
        return prepared


def _kv_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(ch in text for ch in ' "=\n\t\\'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, separators=(",", ":"))


_active: dict[str, logging.handlers.QueueListener] = {}


def setup_logging(
    fmt: str, level: str, stream: TextIO | None = None
) -> logging.handlers.QueueListener:
    """Route the root logger through a queue to ``stream`` in format ``kv`` or ``json``."""
    previous = _active.pop("root", None)
    if previous is not None:
        previous.stop()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_StructuredQueueHandler(records))
    root.setLevel(level.upper())
    listener = logging.handlers.QueueListener(records, handler, respect_handler_level=False)
    listener.start()
    _active["root"] = listener
    return listener


def shutdown_logging() -> None:
    """Flush and stop the listener thread (at exit)."""
    listener = _active.pop("root", None)
    if listener is not None:
        listener.stop()
