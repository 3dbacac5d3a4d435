"""The structured fields of a log record: ``log.info("pod started", extra=kv(pod=p, uid=u))``.

Apart from :mod:`agent.aio.logs` (the daemons' handler set-up, which re-exports :func:`kv`) so
that a module used by clients too — the HTTP/2 driver under ``nodectl exec`` — can log with
fields without importing the daemons' queue handler and listener (``logging.handlers``,
``queue``, ``pickle``: several milliseconds of a cold ``nodectl exec``).
"""

from __future__ import annotations


def kv(**fields: object) -> dict[str, object]:
    """``log.info("pod started", extra=kv(pod=..., uid=...))``."""
    return {"fields": fields}
