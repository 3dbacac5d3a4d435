"""The node daemon's composition root: builds every manager with its collaborators and runs
them under one TaskGroup.

Boot order matters for adoption: the checkpoint (or, when it is lost, the manifests our sandboxes
carry) says which pods are desired *before* anything is reconciled, the static manifest
directory is scanned once, and only then are containers of undesired pods removed. Stopping the
agent (SIGTERM/SIGINT) cancels the managers and leaves every container running, as kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from dataclasses import dataclass

import psutil

from agent import __version__
from agent.aio.bridge import ThreadBridge
from agent.aio.clock import Clock, SystemClock
from agent.aio.logs import kv
from agent.aio.sdnotify import SystemdNotifier
from agent.aio.tasks import start_guarded
from agent.config import AgentConfig
from agent.errors import AgentError
from agent.events import EventRecorder
from agent.node.backoff import BackoffPolicy
from agent.node.health.api import LocalApi
from agent.node.health.metrics import NodeMetrics
from agent.node.masterlink.link import LinkState, MasterLink
from agent.node.pods.checkpoint import CheckpointStore
from agent.node.pods.manager import PodManager
from agent.node.pods.sources import ManifestDirSource
from agent.node.pods.specs import SpecContext
from agent.node.pods.worker import WorkerBook, WorkerDeps
from agent.node.runtime.base import Runtime
from agent.node.runtime.docker import DockerRuntime

log = logging.getLogger(__name__)

RUNTIME_RETRY_INITIAL_S = 0.5
RUNTIME_RETRY_MAX_S = 10.0
LOOP_HEARTBEAT_S = 1.0
LOOP_STALL_S = 10.0
CHECKPOINT_FILE = "checkpoint.json"
_VIRTUAL_IFACE_PREFIXES = ("lo", "docker", "veth", "br-", "virbr", "cni", "flannel", "cali")


class _ShutdownRequested(Exception):
    """Raised inside the TaskGroup to unwind it on SIGTERM/SIGINT."""


def detect_host_ip() -> str:
    """The first global IPv4 address of a physical-looking interface (blocking: psutil)."""
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        if name.startswith(_VIRTUAL_IFACE_PREFIXES):
            continue
        for addr in addrs:
            if addr.family.name != "AF_INET":
                continue
            ip = ipaddress.ip_address(addr.address)
            if not ip.is_loopback and not ip.is_link_local:
                return str(ip)
    return "127.0.0.1"


@dataclass(slots=True)
class HealthState:
    runtime_up: bool = False
    runtime_error: str = "runtime: not contacted yet"
    runtime_errors: int = 0
    ready: bool = False
    last_heartbeat: float = 0.0
    checkpoint_error: str = ""
    link: LinkState | None = None

    def problems(self) -> list[str]:
        found = []
        # An unreachable master is not a problem of the node (it coasts); a refusal is.
        if self.link is not None and self.link.problem.startswith(
            ("registration:", "master: the master's CA")
        ):
            found.append(self.link.problem)
        if not self.runtime_up:
            found.append(self.runtime_error)
        if not self.ready:
            found.append("starting: first reconcile of every pod not finished")
        if self.last_heartbeat and time.monotonic() - self.last_heartbeat > LOOP_STALL_S:
            found.append("event loop: heartbeat stalled")
        if self.checkpoint_error:
            found.append(f"checkpoint: {self.checkpoint_error}")
        return found

    def conditions(self) -> list[dict[str, str]]:
        """Node conditions reported to the master beside its lease-based Ready (kubelet's
        node conditions: one fact each, a reason a machine can match, a message a human reads)."""
        runtime = {"type": "RuntimeReady", "status": "True", "reason": "RuntimeUp", "message": ""}
        if not self.runtime_up:
            runtime.update(status="False", reason="RuntimeUnavailable", message=self.runtime_error)
        checkpoint = {
            "type": "CheckpointWritable",
            "status": "True",
            "reason": "CheckpointSaved",
            "message": "",
        }
        if self.checkpoint_error:
            checkpoint.update(
                status="False", reason="CheckpointWriteFailed", message=self.checkpoint_error
            )
        return [runtime, checkpoint]


class NodeAgent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        runtime: Runtime | None = None,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
        host_ip: str | None = None,
    ) -> None:
        self.config = config
        # Resolved before the loop runs (psutil reads /proc), so never on the loop.
        self._host_ip = host_ip or config.node_ip or detect_host_ip()
        self.bridge = ThreadBridge(config.runtime_threads, name="runtime")
        self._docker: DockerRuntime | None = None
        if runtime is None:
            self._docker = DockerRuntime(
                self.bridge,
                config.node_name,
                docker_host=config.docker_host,
                timeout_s=config.runtime_timeout_s,
                pool_size=config.runtime_threads,
            )
            runtime = self._docker
        self.runtime = runtime
        self.clock = clock or SystemClock()
        self.notifier = notifier or SystemdNotifier.from_env()
        self.health = _Health(self)
        self.state = HealthState()
        self.events = EventRecorder(config.node_name)
        self.metrics = NodeMetrics()
        self.checkpoint = CheckpointStore(config.state_dir / CHECKPOINT_FILE)
        self.pods = PodManager(
            node_name=config.node_name,
            make_deps=self._worker_deps,
            checkpoint=self.checkpoint,
            bridge=self.bridge,
            metrics=self.metrics,
        )
        self.api = LocalApi(
            pods=self.pods,
            events=self.events,
            metrics=self.metrics,
            health=self.health,
            node_name=config.node_name,
        )
        self.source: ManifestDirSource | None = None
        self.link: MasterLink | None = None
        self._stop = asyncio.Event()
        self._relist_now = asyncio.Event()

    def _worker_deps(self, manager: PodManager) -> WorkerDeps:
        cfg = self.config
        return WorkerDeps(
            runtime=self.runtime,
            bridge=self.bridge,
            ctx=SpecContext(
                node_name=cfg.node_name,
                sandbox_image=cfg.sandbox_image,
                state_dir=cfg.state_dir,
                host_ip=self._host_ip,
                log_max_size=cfg.container_log_max_size,
                log_max_files=cfg.container_log_max_files,
            ),
            backoff=BackoffPolicy(cfg.backoff_initial_s, cfg.backoff_max_s, cfg.backoff_reset_s),
            clock=self.clock,
            events=self.events,
            on_book_changed=manager.mark_dirty,
            on_synced=manager.on_synced,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        cfg = self.config
        log.info(
            "node agent starting",
            extra=kv(
                version=__version__,
                node=cfg.node_name,
                state_dir=str(cfg.state_dir),
                host_ip=self._host_ip,
            ),
        )
        await self.api.start(cfg.health_host, cfg.health_port)
        try:
            async with asyncio.TaskGroup() as group:
                self.pods.attach(group)
                start_guarded(group, "heartbeat", self._heartbeat)
                start_guarded(group, "boot", lambda: self._boot(group))
                # Not guarded: its exception is the shutdown mechanism, not a failure.
                group.create_task(self._wait_stop(), name="shutdown-watch")
        except* _ShutdownRequested:
            pass
        finally:
            self.notifier.stopping()
            await self.api.stop()
            if self.link is not None:
                await self.link.node_api.stop()
            with contextlib.suppress(AgentError):
                await self.pods.save_now()
            await self.runtime.close()
            self.bridge.close()
            log.info("node agent stopped; containers left running")

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        log.info("stop requested; leaving pods running")
        raise _ShutdownRequested

    async def _boot(self, group: asyncio.TaskGroup) -> None:
        cfg = self.config
        version = await self._wait_for_runtime()
        log.info("container runtime answers", extra=kv(runtime="docker", version=version))
        await self.runtime.ensure_sandbox_image(cfg.sandbox_image)
        restored = await self.pods.load_checkpoint()
        records = await self.runtime.list_containers()
        books: dict[str, WorkerBook] = {}
        if restored is None:
            pods = self.pods.pods_from_runtime(records)
            log.info("desired state rebuilt from the runtime", extra=kv(pods=len(pods)))
        else:
            pods, books = restored
            log.info("desired state restored from the checkpoint", extra=kv(pods=len(pods)))
        self.pods.restore(pods, books)
        if cfg.manifest_dir is not None:
            self.source = ManifestDirSource(
                cfg.manifest_dir,
                node_name=cfg.node_name,
                interval_s=cfg.manifest_poll_interval_s,
                bridge=self.bridge,
                events=self.events,
                apply=self.pods.apply_source,
            )
            await self.source.scan()
            start_guarded(group, "manifest-dir", self.source.run)
        if cfg.master is not None:
            # Runs beside the pods, never before them: the agent does not wait for the master.
            self.link = MasterLink(
                cfg,
                self.pods,
                self.bridge,
                self.runtime,
                conditions=self.state.conditions,
                streaming_runtime=self.runtime,
            )
            self.state.link = self.link.state
            start_guarded(group, "master-link", self.link.run)
        self.pods.adopt(records)
        start_guarded(group, "checkpoint", self._checkpoint_loop)
        start_guarded(group, "runtime-events", self._events_loop)
        start_guarded(group, "relist", self._relist_loop)
        await self.pods.wait_synced()
        self.state.ready = True
        self.notifier.ready(f"running {len(self.pods.workers)} pods")
        log.info("first reconcile done; agent ready", extra=kv(pods=len(self.pods.workers)))

    async def _wait_for_runtime(self) -> str:
        delay = RUNTIME_RETRY_INITIAL_S
        while True:
            try:
                version = await self.runtime.ping()
            except AgentError as exc:
                self._runtime_down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RUNTIME_RETRY_MAX_S)
                continue
            self._runtime_ok()
            return version

    def _runtime_ok(self) -> None:
        if not self.state.runtime_up:
            self.state.runtime_up = True
            self.state.runtime_error = ""
            self.pods.wake_all()

    def _runtime_down(self, exc: Exception) -> None:
        message = f"runtime: {exc}"
        if self.state.runtime_up or self.state.runtime_error != message:
            log.warning("container runtime unavailable", extra=kv(error=str(exc)))
        self.state.runtime_up = False
        self.state.runtime_error = message

    async def _events_loop(self) -> None:
        delay = RUNTIME_RETRY_INITIAL_S
        while True:
            try:
                async for event in self.runtime.events():
                    delay = RUNTIME_RETRY_INITIAL_S
                    if not self.pods.wake(event.pod_uid):
                        self._relist_now.set()
            except AgentError as exc:
                self._runtime_down(exc)
            # The stream ended: the engine restarted or went away. Resync once it is back.
            self._relist_now.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RUNTIME_RETRY_MAX_S)

    async def _relist_loop(self) -> None:
        seen: dict[str, set[str]] = {}
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._relist_now.wait(), self.config.relist_interval_s)
            self._relist_now.clear()
            try:
                current = await self.runtime.list_pod_uids()
            except AgentError as exc:
                self._runtime_down(exc)
                continue
            self._runtime_ok()
            strays = []
            for uid, signature in current.items():
                if seen.get(uid) == signature:
                    continue
                if not self.pods.wake(uid) and uid:
                    strays.append(uid)
            seen = current
            for uid in strays:
                with contextlib.suppress(AgentError):
                    self.pods.adopt(await self.runtime.list_containers(uid))

    async def _checkpoint_loop(self) -> None:
        task = asyncio.ensure_future(self.pods.checkpoint_loop())
        try:
            while True:
                await asyncio.sleep(LOOP_HEARTBEAT_S)
                self.state.checkpoint_error = self.pods.checkpoint_error
                if task.done():
                    task.result()
        finally:
            task.cancel()

    async def _heartbeat(self) -> None:
        interval = self.notifier.watchdog_interval_s() or self.config.watchdog_interval_s
        last_watchdog = 0.0
        while True:
            now = time.monotonic()
            self.state.last_heartbeat = now
            self.state.runtime_errors = self._docker.call_errors if self._docker else 0
            if now - last_watchdog >= interval:
                self.notifier.watchdog()
                last_watchdog = now
            await asyncio.sleep(LOOP_HEARTBEAT_S)


class _Health:
    """Adapter giving the local API a read-only view of the agent's health."""

    def __init__(self, agent: NodeAgent) -> None:
        self._agent = agent

    def problems(self) -> list[str]:
        return self._agent.state.problems()

    @property
    def runtime_up(self) -> bool:
        return self._agent.state.runtime_up

    @property
    def runtime_errors(self) -> int:
        return self._agent.state.runtime_errors
