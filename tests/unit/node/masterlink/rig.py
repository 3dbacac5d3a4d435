"""The master link wired as the composition root wires it, against the fake master, with the
real PodManager on the FakeRuntime, and sleeps the test controls."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.aio.bridge import ThreadBridge
from agent.aio.clock import SystemClock
from agent.aio.tasks import Supervisor
from agent.events import EventRecorder
from agent.node.backoff import BackoffPolicy, ReconnectBackoff
from agent.node.health.metrics import NodeMetrics
from agent.node.masterlink.client import MasterClient, MasterSession
from agent.node.masterlink.endpoints import MasterEndpoints
from agent.node.masterlink.identity import CertificateRotation, NodeIdentity
from agent.node.masterlink.lease import LeaseKeeper
from agent.node.masterlink.link import MasterLink
from agent.node.masterlink.mirrors import MirrorPods
from agent.node.masterlink.registration import Registrar
from agent.node.masterlink.state import LinkStatus
from agent.node.masterlink.status import StatusReporter
from agent.node.masterlink.watch import MasterPodSource
from agent.node.pods.checkpoint import CheckpointStore
from agent.node.pods.manager import PodManager
from agent.node.pods.specs import SpecContext
from agent.node.pods.worker import WorkerDeps
from agent.node.runtime.fake import FakeRuntime
from tests.unit.node.masterlink.fakemaster import NODE, FakeMaster

IMAGE = "busybox:1"


class Sleeps:
    """A sleep per component. ``park`` records the wait and blocks until cancelled (a loop
    that must not spin); ``quick`` records it and yields briefly (a loop the test lets run)."""

    def __init__(self) -> None:
        self.parked: list[float] = []
        self.quick_calls: list[float] = []

    async def park(self, delay_s: float) -> None:
        self.parked.append(delay_s)
        await asyncio.get_running_loop().create_future()

    async def quick(self, delay_s: float) -> None:
        self.quick_calls.append(delay_s)
        await asyncio.sleep(0.005)


class FakeNodeApi:
    """Stands in for the node API server (its own tests are in streaming/): records what the
    link asked of it."""

    def __init__(self) -> None:
        self.running = False
        self.started = 0
        self.reloads = 0
        self.stopped = 0

    def build_tls(self, cert: Path, key: Path, ca_pem: bytes) -> ssl.SSLContext:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    async def start(self, tls: ssl.SSLContext) -> None:
        self.running = True
        self.started += 1

    def reload_cert(self, cert: Path, key: Path) -> None:
        self.reloads += 1

    async def stop(self) -> None:
        self.running = False
        self.stopped += 1


class FixedFacts:
    def __init__(self) -> None:
        self.value = {"addresses": ["10.0.0.7"], "capacity": {"pods": "110"}}

    async def addresses(self) -> list[str]:
        return list(self.value["addresses"])  # type: ignore[call-overload]

    async def capacity(self) -> dict[str, str]:
        return dict(self.value["capacity"])  # type: ignore[call-overload]

    async def status(self) -> dict[str, object]:
        return dict(self.value)


class StepClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    master: FakeMaster
    runtime: FakeRuntime
    pods: PodManager
    metrics: NodeMetrics
    identity: NodeIdentity
    status: LinkStatus
    lease: LeaseKeeper
    watch: MasterPodSource
    reporter: StatusReporter
    link: MasterLink
    node_api: FakeNodeApi
    sleeps: Sleeps
    clock: StepClock
    conditions: list[dict[str, str]]
    client: MasterClient
    registrar: Registrar
    events: EventRecorder

    def api_pods(self) -> set[str]:
        return {p.full_name for p in self.pods.pods_of_source("api").values()}

    async def app_containers(self) -> dict[str, str]:
        """Running app containers: name -> id."""
        return {
            r.name: r.id
            for r in await self.runtime.list_containers()
            if not r.is_sandbox and r.running
        }

    @asynccontextmanager
    async def session(self) -> AsyncIterator[MasterSession]:
        """An mTLS session of a registered node, outside the link (for lease/status tests)."""
        await self.identity.ensure_key()
        ca_pem = await self.identity.pinned_ca(self.client)
        if not await self.identity.has_valid_cert(ca_pem):
            await self.registrar.register(ca_pem)
        async with self.client.session(await self.identity.client_tls(ca_pem)) as session:
            yield session


@asynccontextmanager
async def link_rig(
    tmp_path: Path,
    *,
    master: FakeMaster | None = None,
    pins: tuple[str, ...] | None = None,
    rotation_sleep: str = "park",
    watch_max_bytes: int | None = None,
    start_master: bool = True,
    registrar_options: dict[str, Any] | None = None,
    other_masters: tuple[str, ...] = (),
) -> AsyncIterator[Rig]:
    master = master or FakeMaster(tmp_path / "master")
    if start_master:
        await master.start()
    bridge = ThreadBridge(4, name="test")
    runtime = FakeRuntime(NODE)
    runtime.add_image(IMAGE, size_bytes=1 << 20)
    metrics = NodeMetrics()
    sleeps = Sleeps()
    clock = StepClock()
    supervisor = Supervisor()
    events = EventRecorder(NODE)

    def deps(manager: PodManager) -> WorkerDeps:
        return WorkerDeps(
            runtime=runtime,
            bridge=bridge,
            ctx=SpecContext(
                node_name=NODE,
                sandbox_image="pause:1",
                state_dir=tmp_path / "state",
                host_ip="127.0.0.1",
            ),
            backoff=BackoffPolicy(1.0, 8.0, 60.0),
            clock=SystemClock(),
            events=events,
            on_book_changed=manager.mark_dirty,
            on_synced=manager.on_synced,
        )

    pods = PodManager(
        node_name=NODE,
        make_deps=deps,
        runtime=runtime,
        checkpoint=CheckpointStore(tmp_path / "state" / "checkpoint.json"),
        bridge=bridge,
        metrics=metrics,
        tasks=supervisor.scope("pods"),
    )
    status = LinkStatus()
    # Several masters: the fake master and ``other_masters`` (URLs), in NODE's order.
    client = MasterClient(
        MasterEndpoints((master.url, *other_masters), NODE) if other_masters else master.url,
        bridge,
    )
    identity = NodeIdentity(
        tmp_path / "pki", bridge, node_name=NODE, ca_pins=(master.pin,) if pins is None else pins
    )
    facts = FixedFacts()
    conditions: list[dict[str, str]] = [{"type": "RuntimeReady", "status": "True"}]
    lease = LeaseKeeper(
        NODE, facts, conditions=lambda: list(conditions), sleep=sleeps.park, clock=clock
    )
    watch = MasterPodSource(
        NODE,
        pods,
        metrics,
        sleep=sleeps.quick,
        **({"max_event_bytes": watch_max_bytes} if watch_max_bytes else {}),
    )
    reporter = StatusReporter(
        pods, MirrorPods(NODE, pods), sleep=sleeps.quick, node_name=NODE, events=events
    )
    rotation = CertificateRotation(
        identity, sleep=sleeps.quick if rotation_sleep == "quick" else sleeps.park
    )
    node_api = FakeNodeApi()
    rng = random.Random(5)
    registrar = Registrar(
        identity,
        facts,  # type: ignore[arg-type]
        client,
        bridge,
        status,
        labels={"zone": "a"},
        **(registrar_options or {}),
    )
    link = MasterLink(
        client=client,
        identity=identity,
        registrar=registrar,
        lease=lease,
        watch=watch,
        reporter=reporter,
        rotation=rotation,
        node_api=node_api,
        status=status,
        bridge=bridge,
        tasks=supervisor.scope("master-link"),
        backoff_max_s=4.0,
        sleep=sleeps.park,
        rng=rng,
        backoff=ReconnectBackoff(0.5, 4.0, rng=rng, clock=clock),
    )
    rig = Rig(
        master=master,
        runtime=runtime,
        pods=pods,
        metrics=metrics,
        identity=identity,
        status=status,
        lease=lease,
        watch=watch,
        reporter=reporter,
        link=link,
        node_api=node_api,
        sleeps=sleeps,
        clock=clock,
        conditions=conditions,
        client=client,
        registrar=registrar,
        events=events,
    )
    try:
        async with supervisor:
            await pods.start()
            try:
                yield rig
            finally:
                await link.stop()
                await pods.stop()
    finally:
        await master.stop()
        bridge.close()
