"""The local read-only API on the health address (default ``127.0.0.1:10248``).

``/healthz`` answers 200 ``ok`` only when the runtime answers and the event loop is live;
otherwise 503 with the reasons, one per line. ``/v1/pods`` is a Kubernetes-style PodList,
``/v1/events`` the recent node events, ``/metrics`` Prometheus text.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Protocol

from aiohttp import web

from agent.aio.metrics import CONTENT_TYPE, DEFAULT_RUN_BLOCKING, RunBlocking
from agent.events import EventRecorder
from agent.node.health.metrics import NodeMetrics, render
from agent.node.pods.manager import PodManager
from agent.node.pods.status import PHASES


class HealthSource(Protocol):
    def problems(self) -> list[str]:
        """Why the node is unhealthy; empty when healthy."""
        ...

    @property
    def runtime_up(self) -> bool: ...

    @property
    def runtime_errors(self) -> int: ...


class LocalApi:
    """Started first and stopped last, so ``/healthz`` explains a slow start (the runtime not
    answering, the first reconcile not done) and the end of a stop."""

    name = "local-api"

    def __init__(
        self,
        *,
        pods: PodManager,
        events: EventRecorder,
        metrics: NodeMetrics,
        health: HealthSource,
        node_name: str,
        host: str,
        port: int,
        run_blocking: RunBlocking = DEFAULT_RUN_BLOCKING,
    ) -> None:
        self._run_blocking = run_blocking
        self._host = host
        self._port = port
        self._pods = pods
        self._events = events
        self._metrics = metrics
        self._health = health
        self._node_name = node_name
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/v1/pods", self.pods)
        app.router.add_get("/v1/events", self.events)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def healthz(self, request: web.Request) -> web.Response:
        problems = self._health.problems()
        if problems:
            return web.Response(status=503, text="\n".join(problems) + "\n")
        return web.Response(text="ok")

    async def pods(self, request: web.Request) -> web.Response:
        body = {
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": {"nodeName": self._node_name},
            "items": self._pods.pod_list(),
        }
        return web.json_response(body)

    async def events(self, request: web.Request) -> web.Response:
        body = {"apiVersion": "v1", "kind": "EventList", "items": self._events.list()}
        return web.json_response(body)

    async def metrics(self, request: web.Request) -> web.Response:
        items = self._pods.pod_list()
        phases = Counter({phase: 0 for phase in PHASES})
        restarts = []
        for item in items:
            status = item["status"]
            phases[status.get("phase", "Unknown")] += 1
            meta = item["metadata"]
            for cs in status.get("containerStatuses", []):
                restarts.append((meta["namespace"], meta["name"], cs["name"], cs["restartCount"]))
        body = await self._run_blocking(
            functools.partial(
                render,
                self._metrics,
                pods_by_phase=phases,
                restarts=restarts,
                runtime_errors=self._health.runtime_errors,
                runtime_up=self._health.runtime_up,
            )
        )
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
