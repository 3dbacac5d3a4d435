"""The pods' view of the container runtime: wait for it at boot, then follow it.

:class:`RuntimeGate` holds the start sequence until the runtime answers (retrying with back-off;
``/healthz`` says why meanwhile) and the sandbox image is present: nothing about pods can be
decided before. :class:`RuntimeWatcher` starts once every source has had its first say: it
removes the containers found at start whose pod nobody wants, then wakes the worker of a pod
on each runtime event that changes a container's state (an exec does not) and, every
``relist_interval_s`` (or at once when the event stream ended or named a pod without a
worker), relists cheaply to catch what events missed: changed pods are woken, containers of
unknown pods are adopted for removal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agent.aio.logs import kv
from agent.aio.tasks import TaskScope
from agent.errors import AgentError
from agent.node.health.state import RuntimeHealth
from agent.node.pods.manager import PodManager
from agent.node.runtime.base import Runtime

log = logging.getLogger(__name__)

RUNTIME_RETRY_INITIAL_S = 0.5
RUNTIME_RETRY_MAX_S = 10.0

Sleep = Callable[[float], Awaitable[None]]


class RuntimeGate:
    name = "runtime"

    def __init__(
        self,
        runtime: Runtime,
        health: RuntimeHealth,
        *,
        sandbox_image: str,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._runtime = runtime
        self._health = health
        self._sandbox_image = sandbox_image
        self._sleep = sleep

    async def start(self) -> None:
        delay = RUNTIME_RETRY_INITIAL_S
        while True:
            try:
                version = await self._runtime.ping()
            except AgentError as exc:
                self._health.down(exc)
                await self._sleep(delay)
                delay = min(delay * 2, RUNTIME_RETRY_MAX_S)
                continue
            self._health.ok()
            break
        log.info("container runtime answers", extra=kv(version=version))
        await self._runtime.ensure_sandbox_image(self._sandbox_image)

    async def stop(self) -> None:
        """Nothing runs here; the runtime client is closed by whoever built it, last."""


class RuntimeWatcher:
    name = "runtime-watch"

    def __init__(
        self,
        runtime: Runtime,
        pods: PodManager,
        health: RuntimeHealth,
        *,
        relist_interval_s: float,
        tasks: TaskScope,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._runtime = runtime
        self._pods = pods
        self._health = health
        self._relist_interval_s = relist_interval_s
        self._tasks = tasks
        self._sleep = sleep
        self._relist_now = asyncio.Event()

    async def start(self) -> None:
        await self._tasks.start()
        self._pods.adopt_found_at_start()
        self._tasks.spawn("runtime-events", self._follow_events, eternal=True)
        self._tasks.spawn("relist", self._relist_loop, eternal=True)

    async def stop(self) -> None:
        await self._tasks.stop()

    def _runtime_ok(self) -> None:
        if self._health.ok():
            self._pods.wake_all()

    async def _follow_events(self) -> None:
        delay = RUNTIME_RETRY_INITIAL_S
        while True:
            try:
                async for event in self._runtime.events():
                    delay = RUNTIME_RETRY_INITIAL_S
                    # Runtimes report LIFECYCLE_ACTIONS only (Docker filters them): an exec
                    # (a probe, a hook, nodectl exec) never makes a pod relist; with exec probes
                    # every 10 s on 100 pods those syncs were 60 % of the agent's CPU
                    # (bench/probes.py).
                    if not self._pods.wake(event.pod_uid):
                        self._relist_now.set()
            except AgentError as exc:
                self._health.down(exc)
            # The stream ended: the engine restarted or went away. Relist now (what changed
            # meanwhile) and again before each retry, so the relist that finds the engine back
            # marks the runtime up and wakes every pod without waiting for the next interval.
            self._relist_now.set()
            await self._sleep(delay)
            self._relist_now.set()
            delay = min(delay * 2, RUNTIME_RETRY_MAX_S)

    async def _relist_loop(self) -> None:
        seen: dict[str, set[str]] = {}
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._relist_now.wait(), self._relist_interval_s)
            self._relist_now.clear()
            seen = await self.relist(seen)

    async def relist(self, seen: dict[str, set[str]]) -> dict[str, set[str]]:
        """One relist against the previous one; returns this one."""
        try:
            current = await self._runtime.list_pod_uids()
        except AgentError as exc:
            self._health.down(exc)
            return seen
        self._runtime_ok()
        strays = []
        for uid, signature in current.items():
            if seen.get(uid) == signature:
                continue
            if not self._pods.wake(uid) and uid:
                strays.append(uid)
        for uid in strays:
            with contextlib.suppress(AgentError):
                self._pods.adopt(await self._runtime.list_containers(uid))
        return current
