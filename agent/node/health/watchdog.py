"""The agent toward systemd: the event-loop heartbeat with ``WATCHDOG=1``, and readiness
(``READY=1`` once every pod had its first reconcile, ``STOPPING=1`` when shutdown begins)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from agent.aio.logs import kv
from agent.aio.sdnotify import Notifier
from agent.aio.tasks import TaskScope
from agent.node.health.state import NodeHealth

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0

Sleep = Callable[[float], Awaitable[None]]


class SyncedPods(Protocol):
    async def wait_synced(self) -> None: ...

    @property
    def count(self) -> int: ...


class Watchdog:
    """Beats every ``HEARTBEAT_S`` (health notices a stalled loop by a stale beat) and pets
    systemd's watchdog at its interval (or ``fallback_interval_s`` outside systemd)."""

    name = "watchdog"

    def __init__(
        self,
        health: NodeHealth,
        notifier: Notifier,
        *,
        fallback_interval_s: float,
        tasks: TaskScope,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._health = health
        self._notifier = notifier
        self._interval_s = notifier.watchdog_interval_s() or fallback_interval_s
        self._tasks = tasks
        self._sleep = sleep

    async def start(self) -> None:
        await self._tasks.start()
        self._tasks.spawn("heartbeat", self._beat, eternal=True)

    async def stop(self) -> None:
        await self._tasks.stop()

    async def _beat(self) -> None:
        last_watchdog: float | None = None
        while True:
            self._health.beat()
            now = self._health.last_heartbeat
            if last_watchdog is None or now - last_watchdog >= self._interval_s:
                self._notifier.watchdog()
                last_watchdog = now
            await self._sleep(HEARTBEAT_S)


class Readiness:
    """The last step of the start: waits for the first reconcile of every pod, then says the
    agent is ready; the first step of the stop: says it is stopping."""

    name = "readiness"

    def __init__(self, health: NodeHealth, notifier: Notifier, pods: SyncedPods) -> None:
        self._health = health
        self._notifier = notifier
        self._pods = pods

    async def start(self) -> None:
        await self._pods.wait_synced()
        self._health.ready = True
        self._notifier.ready(f"running {self._pods.count} pods")
        log.info("first reconcile done; agent ready", extra=kv(pods=self._pods.count))

    async def stop(self) -> None:
        self._notifier.stopping()
