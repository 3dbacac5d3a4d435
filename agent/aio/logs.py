"""Structured logging for the daemons: one line per event, ``key=value`` or JSON.

Owns the root logger's handler set-up and the two line formats. The root logger writes into a
queue and a listener thread does the actual write to stderr, so a slow or blocked stderr (a full
journald pipe) never stalls the event loop.

Call sites pass fields with :func:`kv`: ``log.info("pod started", extra=kv(pod=p, uid=u))``.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.handlers
import queue
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# Re-exported for the daemons' call sites; defined apart so that clients need not import this.
from agent.aio.logfields import kv as kv  # noqa: PLC0414 (explicit re-export)

LOG_FORMATS = ("kv", "json")
_RESERVED = ("ts", "level", "logger", "msg")
# Anything that would end the key=value token or the line, or would reach a terminal as a
# control sequence (ESC, CR), forces quoting; json.dumps then escapes it.
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f]')
_JSON_NATIVE = (int, float, bool, list, tuple, dict)


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
            # A field must never overwrite the line's own ts/level/logger/msg.
            out[key if key not in _RESERVED else f"field_{key}"] = value
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        out["exc"] = record.exc_text
    if record.stack_info:
        out["stack"] = record.stack_info
    return out


class _StructuredQueueHandler(logging.handlers.QueueHandler):
    """Like QueueHandler, but keeps the traceback out of ``msg`` so it becomes a field."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Rendered now, in the caller's thread: a traceback left on the record would pin every
        # frame and its locals until the listener gets to it, and mutable args could change
        # before the listener formats the message.
        prepared = copy.copy(record)
        if record.exc_info:
            prepared.exc_text = logging.Formatter().formatException(record.exc_info)
        prepared.msg = record.getMessage()
        prepared.args = None
        prepared.exc_info = None
        return prepared


def _kv_value(value: object) -> str:
    if value is None or isinstance(value, _JSON_NATIVE):
        text = json.dumps(value, default=str, ensure_ascii=False)
    else:
        text = str(value)
    if text == "" or _NEEDS_QUOTES.search(text):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=info logger=… msg="…" key=value …`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the kv format."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, separators=(",", ":"))


# The one listener of this process, so a second setup_logging() can stop the first.
_active: dict[str, tuple[logging.handlers.QueueListener, logging.Handler]] = {}


QUIET_LOGGERS = ("hpack", "h2", "urllib3.connectionpool", "pyroute2")


def setup_logging(
    fmt: str, level: str, stream: TextIO | None = None
) -> logging.handlers.QueueListener:
    """Route the root logger through a queue to ``stream`` (default stderr) as ``kv`` or ``json``.

    Replaces whatever handlers the root logger had, so calling it again reconfigures. Returns the
    started listener; :func:`shutdown_logging` stops it and flushes.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    shutdown_logging()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    queue_handler = _StructuredQueueHandler(records)
    root.addHandler(queue_handler)
    root.setLevel(level.upper())
    # Per-frame chatter of the HTTP/2 libraries (and of urllib3 for every docker call) drowns
    # our own debug lines and costs CPU on the streaming path; their warnings still show.
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    listener = logging.handlers.QueueListener(records, handler, respect_handler_level=False)
    listener.start()
    _active["root"] = (listener, queue_handler)
    return listener


def shutdown_logging() -> None:
    """Flush and stop the listener thread (at exit); later records go to logging's last resort."""
    active = _active.pop("root", None)
    if active is not None:
        listener, queue_handler = active
        # Detach first: records queued with no listener left would never be written.
        logging.getLogger().removeHandler(queue_handler)
        listener.stop()
