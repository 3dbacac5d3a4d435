"""Guarded background tasks: a task that dies unexpectedly is logged and fails the daemon.

Managers start their long-running loops through :func:`guarded`, inside the daemon's one
TaskGroup. An exception escaping a loop is logged with the task's name and then re-raised, so
the TaskGroup cancels its siblings and the daemon exits non-zero (systemd restarts it); nothing
vanishes silently the way a bare ``create_task`` would let it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent.aio.logs import kv

log = logging.getLogger(__name__)
T = TypeVar("T")


async def guarded(name: str, factory: Callable[[], Awaitable[T]]) -> T:
    try:
        return await factory()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("task died unexpectedly", extra=kv(task=name))
        raise


def start_guarded(
    group: asyncio.TaskGroup, name: str, factory: Callable[[], Awaitable[T]]
) -> asyncio.Task[T]:
    return group.create_task(guarded(name, factory), name=name)
