"""The node daemon's composition root: builds every manager with its collaborators, orders
them, and runs them under one supervisor (the daemon's one TaskGroup). No behaviour of its own.

Start order (each step's ``start()`` returns before the next begins):

0. Before any: the state dir and what it holds made owner-only (``agent.aio.private``; each
   path that was looser is logged), pod volumes excepted.
1. ``local-api``: ``/healthz`` answers from the first moment, with the reasons it is not ok;
   the read-only API on ``<state_dir>/api.sock``.
2. ``watchdog``: the event-loop heartbeat and systemd's ``WATCHDOG=1``.
3. ``runtime``: wait until the container runtime answers; make the sandbox image present.
4. ``prober`` (the probe workers' scope: the pod workers start and cancel probes as their
   containers start and stop), ``notify`` (the containers' sd_notify sockets, which the pod
   workers open; its stop closes them), then ``pods``: desired state from the checkpoint
   (or, when it is lost, from the manifests our sandboxes carry); a worker per pod, adopting
   the containers it finds.
5. ``manifest-dir`` (if configured): one full scan, then following the directory.
6. ``runtime-watch``: only now, with every source heard, containers of undesired pods found at
   start are removed; then runtime events and relists. Then ``image-gc``: image GC and the
   node-wide dead-container bound every ``image_gc_period_s`` (first run after one period, or at
   once on disk pressure), and the DiskPressure check every ``disk_check_interval_s``.
7. ``master-link`` (if configured): starts linking in the background — the agent never waits
   for the master; pods it assigned before run from the checkpoint meanwhile.
8. ``readiness``: waits for the first reconcile of every pod, then ``READY=1``.

Stop (SIGTERM/SIGINT, or a failed task) runs the started steps in reverse order, each bounded
by ``STOP_STEP_TIMEOUT_S`` (an overrun is logged and the stop goes on). No step stops a pod:
the workers are cancelled and every container is left running, as kubelet does; the checkpoint
is written a last time. A task that dies, or an eternal loop that returns, fails the daemon
(exit non-zero; systemd restarts it) after the same orderly stop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from agent import __version__
from agent.aio.bridge import ThreadBridge
from agent.aio.clock import Clock, SystemClock
from agent.aio.logs import kv
from agent.aio.private import PRIVATE_DIR_MODE, tighten_tree
from agent.aio.sdnotify import Notifier, SystemdNotifier
from agent.aio.tasks import Lifecycle, Manager, Supervisor
from agent.config import AgentConfig
from agent.events import EventRecorder
from agent.node.backoff import BackoffPolicy
from agent.node.health.api import LocalApi
from agent.node.health.metrics import NodeMetrics
from agent.node.health.state import NodeHealth, RuntimeHealth
from agent.node.health.watchdog import Readiness, Watchdog
from agent.node.hooks.runner import Hooks
from agent.node.imagegc.lastused import USAGE_FILE, LastUsedStore
from agent.node.imagegc.manager import GCSettings, ImageGC
from agent.node.imagegc.metrics import ImageGCMetrics
from agent.node.imagegc.planner import GCPolicy
from agent.node.imagegc.pressure import PressurePolicy
from agent.node.imagegc.reservations import ImageReservations
from agent.node.images.credentials import DockerConfigCredentials
from agent.node.images.puller import PullManager
from agent.node.masterlink.client import MasterClient
from agent.node.masterlink.endpoints import MasterEndpoints
from agent.node.masterlink.facts import NodeFacts
from agent.node.masterlink.identity import CertificateRotation, NodeIdentity
from agent.node.masterlink.lease import LeaseKeeper
from agent.node.masterlink.link import MasterLink, NodeApiServer
from agent.node.masterlink.mirrors import MirrorPods
from agent.node.masterlink.registration import STATE_FILE as REGISTRATION_STATE_FILE
from agent.node.masterlink.registration import Registrar
from agent.node.masterlink.state import LinkStatus
from agent.node.masterlink.status import StatusReporter
from agent.node.masterlink.watch import MasterPodSource
from agent.node.notify.hub import NotifyHub
from agent.node.pods.admission import AdmissionPolicy
from agent.node.pods.checkpoint import CheckpointStore
from agent.node.pods.manager import PodManager
from agent.node.pods.runtime_watch import RuntimeGate, RuntimeWatcher
from agent.node.pods.sources import ManifestDirSource
from agent.node.pods.specs import POD_DIRS, SpecContext
from agent.node.pods.worker import LoopTimers, WorkerDeps
from agent.node.probes.prober import ProberManager
from agent.node.runtime.base import Runtime
from agent.node.runtime.docker import DockerRuntime
from agent.node.streaming.server import NodeApi
from agent.node.usage import UsageSampler

log = logging.getLogger(__name__)

STOP_STEP_TIMEOUT_S = 10.0
# The checkpoint's own bridge: saves are serialised anyway, and one thread of its own keeps the
# last write of a stop from queueing behind abandoned runtime calls (PodManager's docstring).
CHECKPOINT_THREADS = 1
CHECKPOINT_FILE = "checkpoint.json"
PKI_DIR = "pki"
_VIRTUAL_IFACE_PREFIXES = ("lo", "docker", "veth", "br-", "virbr", "cni", "flannel", "cali")

Sleep = Callable[[float], Awaitable[None]]
NodeApiFactory = Callable[[PodManager, ThreadBridge], NodeApiServer]


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


def detect_node_allocatable() -> tuple[int, int]:
    """The node's cpu (millicores) and memory (bytes), what it reports as capacity (blocking:
    psutil reads /proc)."""
    # Whole KiB, as node_capacity reports it to the master.
    return (psutil.cpu_count() or 1) * 1000, psutil.virtual_memory().total // 1024 * 1024


def gc_settings(cfg: AgentConfig) -> GCSettings:
    """Image GC's, the dead-container bound's and disk pressure's settings from the config."""
    return GCSettings(
        policy=GCPolicy(
            high_percent=cfg.image_gc_high_threshold_percent,
            low_percent=cfg.image_gc_low_threshold_percent,
            minimum_age_s=cfg.image_minimum_gc_age_s,
            maximum_age_s=cfg.image_maximum_gc_age_s,
            pinned_images=cfg.pinned_images,
            sandbox_image=cfg.sandbox_image,
        ),
        period_s=cfg.image_gc_period_s,
        disk_check_interval_s=cfg.disk_check_interval_s,
        dead_per_container=cfg.max_dead_containers_per_container,
        dead_total=cfg.max_dead_containers,
        pressure=PressurePolicy(
            imagefs_min_percent=cfg.imagefs_available_min_percent,
            nodefs_min_percent=cfg.nodefs_available_min_percent,
            margin_percent=cfg.disk_pressure_margin_percent,
        ),
    )


def prepare_state_dir(state_dir: Path) -> list[Path]:
    """The state dir, made if missing, and everything in it owner-only (blocking); the pods'
    volumes (``pods/``) keep the modes their pods need. Returns the paths that were looser."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    return tighten_tree(state_dir, skip=(POD_DIRS,))


class NodeAgent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        runtime: Runtime | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        host_ip: str | None = None,
        node_api: NodeApiFactory | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        cfg = self.config = config
        # Resolved before the loop runs (psutil reads /proc), so never on the loop.
        self._host_ip = host_ip or cfg.node_ip or detect_host_ip()
        self._allocatable = detect_node_allocatable()
        self.bridge = ThreadBridge(cfg.runtime_threads, name="runtime")
        self.checkpoint_bridge = ThreadBridge(CHECKPOINT_THREADS, name="checkpoint")
        docker: DockerRuntime | None = None
        if runtime is None:
            docker = DockerRuntime(
                self.bridge,
                cfg.node_name,
                docker_host=cfg.docker_host,
                timeout_s=cfg.runtime_timeout_s,
                pool_size=cfg.runtime_threads,
            )
            runtime = docker
        self.runtime = runtime
        self.clock = clock or SystemClock()
        self.notifier = notifier or SystemdNotifier.from_env()
        self.supervisor = Supervisor()
        tasks = self.supervisor.scope
        self.events = EventRecorder(cfg.node_name)
        self.metrics = NodeMetrics()
        # Admission's image pins and image GC's deletions serialize on these (docs/images.md).
        self.image_reservations = ImageReservations()
        self.image_gc = ImageGC(
            runtime=runtime,
            reservations=self.image_reservations,
            store=LastUsedStore(cfg.state_dir / USAGE_FILE),
            bridge=self.bridge,
            settings=gc_settings(cfg),
            clock=self.clock,
            metrics=ImageGCMetrics(self.metrics.registry),
            tasks=tasks("image-gc"),
            state_dir=cfg.state_dir,
            sleep=sleep,
        )
        # The node's one pull manager: pulls deduplicated, bounded, backed off per image.
        self.images = PullManager(
            runtime,
            clock=self.clock,
            backoff=BackoffPolicy(cfg.backoff_initial_s, cfg.backoff_max_s, cfg.backoff_reset_s),
            credentials=(
                DockerConfigCredentials(cfg.image_credentials_file, self.bridge)
                if cfg.image_credentials_file is not None
                else None
            ),
            max_parallel=cfg.max_parallel_image_pulls,
            registry=self.metrics.registry,
        )
        # Containers' sd_notify sockets (node-agent.io/notify), read on the loop.
        self.notify = NotifyHub(
            cfg.state_dir / POD_DIRS,
            bridge=self.bridge,
            clock=self.clock,
            timers=LoopTimers(),
            registry=self.metrics.registry,
        )
        # Results wake the pod's worker; self.pods is made just below.
        self.prober = ProberManager(
            runtime=runtime,
            events=self.events,
            clock=self.clock,
            tasks=tasks("prober"),
            on_change=self._probe_changed,
        )
        self.pods = PodManager(
            node_name=cfg.node_name,
            make_deps=self._worker_deps,
            runtime=runtime,
            checkpoint=CheckpointStore(cfg.state_dir / CHECKPOINT_FILE),
            bridge=self.checkpoint_bridge,
            metrics=self.metrics,
            tasks=tasks("pods"),
            admission=AdmissionPolicy(
                allowed_host_paths=cfg.allowed_host_paths,
                allow_host_network=cfg.allow_host_network,
                allow_host_ports=cfg.allow_host_ports,
            ),
        )
        runtime_health = RuntimeHealth()
        link_status = LinkStatus() if cfg.master is not None else None
        self.health = NodeHealth(
            runtime=runtime_health,
            checkpoint_error=lambda: self.pods.checkpoint_error,
            runtime_errors=(lambda: docker.call_errors) if docker is not None else (lambda: 0),
            link=link_status,
            extra_conditions=lambda: [self.image_gc.condition()],
        )
        self.source: ManifestDirSource | None = None
        if cfg.manifest_dir is not None:
            self.source = ManifestDirSource(
                cfg.manifest_dir,
                node_name=cfg.node_name,
                interval_s=cfg.manifest_poll_interval_s,
                bridge=self.bridge,
                events=self.events,
                apply=self.pods.apply_source,
                tasks=tasks("manifest-dir"),
            )
        self.link: MasterLink | None = None
        if link_status is not None:
            if node_api is None:
                node_api = self._node_api
            self.link = self._master_link(link_status, node_api(self.pods, self.bridge), sleep)
        managers: list[Manager | None] = [
            LocalApi(
                pods=self.pods,
                events=self.events,
                metrics=self.metrics,
                health=self.health,
                node_name=cfg.node_name,
                host=cfg.health_host,
                port=cfg.health_port,
                socket_path=cfg.api_socket,
                bridge=self.bridge,
                images=self.image_gc,
            ),
            Watchdog(
                self.health,
                self.notifier,
                fallback_interval_s=cfg.watchdog_interval_s,
                tasks=tasks("watchdog"),
                sleep=sleep,
            ),
            RuntimeGate(runtime, runtime_health, sandbox_image=cfg.sandbox_image, sleep=sleep),
            self.prober,
            self.notify,
            self.pods,
            self.source,
            RuntimeWatcher(
                runtime,
                self.pods,
                runtime_health,
                relist_interval_s=cfg.relist_interval_s,
                tasks=tasks("runtime-watch"),
                sleep=sleep,
            ),
            self.image_gc,
            self.link,
            Readiness(self.health, self.notifier, self.pods),
        ]
        self.lifecycle = Lifecycle(
            [m for m in managers if m is not None], step_timeout_s=STOP_STEP_TIMEOUT_S
        )
        self._stop = asyncio.Event()

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
                node_cpu_millis=self._allocatable[0],
                node_memory_bytes=self._allocatable[1],
            ),
            backoff=BackoffPolicy(cfg.backoff_initial_s, cfg.backoff_max_s, cfg.backoff_reset_s),
            clock=self.clock,
            events=self.events,
            on_book_changed=manager.mark_dirty,
            on_synced=manager.on_synced,
            prober=self.prober,
            notify=self.notify,
            image_reservations=self.image_reservations,
            dead_per_container=cfg.max_dead_containers_per_container,
            hooks=Hooks(self.runtime, pod_condition=self._pod_condition),
            images=self.images,
        )

    def _pod_condition(self, namespace: str, name: str, condition: str) -> bool | None:
        """A preStart ``waitFor``: the condition of the pod ``namespace/name`` on this node
        (None: no such pod here)."""
        for worker in self.pods.workers.values():
            meta = worker.pod.metadata
            if worker.terminating or meta.namespace != namespace or meta.name != name:
                continue
            for entry in worker.status.get("conditions", []):
                if entry.get("type") == condition:
                    return bool(entry.get("status") == "True")
            return False
        return None

    def _probe_changed(self, pod_uid: str) -> None:
        self.pods.wake(pod_uid)

    def _node_api(self, pods: PodManager, bridge: ThreadBridge) -> NodeApiServer:
        return NodeApi(
            pods,
            self.config.node_name,
            self.config.api_addr,
            streaming_runtime=self.runtime,
            run_blocking=bridge.run,
        )

    def _master_link(self, status: LinkStatus, node_api: NodeApiServer, sleep: Sleep) -> MasterLink:
        cfg = self.config
        assert cfg.master is not None
        client = MasterClient(
            MasterEndpoints(cfg.master, cfg.node_name), self.bridge, bind_source=cfg.bind_source
        )
        identity = NodeIdentity(
            cfg.state_dir / PKI_DIR,
            self.bridge,
            node_name=cfg.node_name,
            ca_pins=tuple(cfg.ca_cert_hash),
        )
        facts = NodeFacts(
            self.bridge,
            self.runtime,
            state_dir=cfg.state_dir,
            max_pods=cfg.max_pods,
            api_addr=cfg.api_addr,
        )
        return MasterLink(
            client=client,
            identity=identity,
            registrar=Registrar(
                identity,
                facts,
                client,
                self.bridge,
                status,
                labels=dict(item.split("=", 1) for item in cfg.node_labels),
                bootstrap_cert=cfg.bootstrap_cert,
                bootstrap_key=cfg.bootstrap_key,
                token=cfg.token,
                token_file=cfg.token_file,
                state_file=cfg.state_dir / REGISTRATION_STATE_FILE,
            ),
            lease=LeaseKeeper(
                cfg.node_name,
                facts,
                conditions=self.health.conditions,
                sleep=sleep,
                usage=UsageSampler(self.bridge, self.runtime),
            ),
            watch=MasterPodSource(cfg.node_name, self.pods, self.metrics, sleep=sleep),
            reporter=StatusReporter(
                self.pods,
                MirrorPods(cfg.node_name, self.pods),
                sleep=sleep,
                node_name=cfg.node_name,
                events=self.events,
            ),
            rotation=CertificateRotation(identity, sleep=sleep),
            node_api=node_api,
            status=status,
            bridge=self.bridge,
            tasks=self.supervisor.scope("master-link"),
            backoff_max_s=cfg.master_backoff_max_s,
            sleep=sleep,
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
                managers=" -> ".join(m.name for m in self.lifecycle.managers),
            ),
        )
        try:
            await self.bridge.run(prepare_state_dir, cfg.state_dir)
            async with self.supervisor as supervisor:
                starting = supervisor.start_guarded("start", self.lifecycle.start)
                try:
                    await self._stop.wait()
                    log.info("stop requested; leaving pods running")
                finally:
                    # Also when a task failed: the supervisor cancelled this wait, and the
                    # failure is raised once every manager has stopped.
                    starting.cancel()
                    await asyncio.wait({starting})
                    await self.lifecycle.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.runtime.close()
            self.bridge.close()
            self.checkpoint_bridge.close()
            log.info("node agent stopped; containers left running")
