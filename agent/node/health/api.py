"""The local health port and the local read-only API.

The health port (``health_addr``, default ``127.0.0.1:10248``) serves ``/healthz`` and
``/metrics`` only, as kubelet's 10248 does: anything on the host reaches it, a ``hostNetwork``
pod included, so it carries nothing a pod may not know (the metrics name pods and containers,
never a spec or an env value). ``/healthz`` answers 200 ``ok`` only when the runtime answers
and the event loop is live; otherwise 503 with the reasons, one per line.

The local API (``/v1/pods``, a Kubernetes-style PodList with every pod's spec, env values
included; ``/v1/events``, the recent node events; ``/v1/images``, every image with why image
GC would or would not delete it, and ``POST /v1/images/gc[?dryRun=true]``, a GC run now —
``node-agent images``; and the two above) is served on a Unix
socket, ``<state_dir>/api.sock``, mode 0600: only root (the agent's user) reaches it
(``curl --unix-socket <state_dir>/api.sock http://local/v1/pods``). It is bound under umask 077
so it is never reachable by others, not even for the moment between ``bind`` and ``chmod``; a
stale socket of a previous run is removed first, and the socket is removed at stop. Admins and
viewers read the pod list remotely on the authenticated node API.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import stat
from collections import Counter
from pathlib import Path
from typing import Protocol

from aiohttp import web

from agent.aio.bridge import ThreadBridge
from agent.aio.metrics import CONTENT_TYPE
from agent.aio.private import PRIVATE_FILE_MODE, PRIVATE_UMASK
from agent.errors import AgentError, ConfigError, RuntimeUnavailableError
from agent.events import EventRecorder
from agent.node.health.metrics import NodeMetrics, render
from agent.node.imagegc.manager import GCReport
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


class ImageCollector(Protocol):
    async def collect(self, *, dry_run: bool = False, force: bool = False) -> GCReport: ...


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
        socket_path: Path,
        bridge: ThreadBridge,
        images: ImageCollector | None = None,
    ) -> None:
        self._bridge = bridge
        self._images = images
        self._host = host
        self._port = port
        self.socket_path = socket_path
        self._pods = pods
        self._events = events
        self._metrics = metrics
        self._health = health
        self._node_name = node_name
        self._runners: list[web.AppRunner] = []
        self._bound = False  # the socket file is ours to remove

    def port_app(self) -> web.Application:
        """The health port's routes: nothing that names a pod's spec."""
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        return app

    def socket_app(self) -> web.Application:
        app = self.port_app()
        app.router.add_get("/v1/pods", self.pods)
        app.router.add_get("/v1/events", self.events)
        app.router.add_get("/v1/images", self.images)
        app.router.add_post("/v1/images/gc", self.images_gc)
        return app

    async def start(self) -> None:
        port = await self._runner(self.port_app())
        await web.TCPSite(port, self._host, self._port, reuse_address=True).start()
        try:
            sock = await self._bridge.run(bind_private_socket, self.socket_path)
        except OSError as exc:
            raise ConfigError(f"local API socket {self.socket_path}: {exc}") from exc
        self._bound = True
        try:
            local = await self._runner(self.socket_app())
            await web.SockSite(local, sock).start()
        except BaseException:
            sock.close()
            raise

    async def _runner(self, app: web.Application) -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        return runner

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()
        if self._bound:
            self._bound = False
            await self._bridge.run(remove_socket, self.socket_path)

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

    async def images(self, request: web.Request) -> web.Response:
        """Every image and what a GC run now would do with it (a dry run as the period runs)."""
        return await self._collect(dry_run=True, force=False)

    async def images_gc(self, request: web.Request) -> web.Response:
        """A GC run now, as if usage were over the high threshold (``?dryRun=true``: the
        plan only). Waits for a run already in progress."""
        dry = request.query.get("dryRun", "false")
        if dry not in ("true", "false"):
            return _error(400, f"query parameter dryRun: expected true or false, got {dry!r}")
        return await self._collect(dry_run=dry == "true", force=True)

    async def _collect(self, *, dry_run: bool, force: bool) -> web.Response:
        if self._images is None:
            return _error(404, "image GC is not running on this agent")
        try:
            report = await self._images.collect(dry_run=dry_run, force=force)
        except RuntimeUnavailableError as exc:
            return _error(503, str(exc))
        except AgentError as exc:
            return _error(500, str(exc))
        return web.json_response(report.to_json())

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
        body = await self._bridge.run(
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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def remove_socket(path: Path) -> None:
    """Remove a Unix socket left at ``path`` (blocking); anything else there is refused, so a
    mistyped ``state_dir`` never costs a file."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; not removing it")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def bind_private_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from its first moment (blocking): a
    stale one is removed, the directory made if missing, and the bind runs under umask 077
    (the agent's umask already; set again in case this runs elsewhere)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    remove_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(PRIVATE_UMASK)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(previous)
        os.chmod(path, PRIVATE_FILE_MODE)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
