"""The Prober contract suite (tests/contracts/prober.py) against ``FakeProber`` and against the
real ``ProberManager``: with exec probes on the FakeRuntime, and with an httpGet readiness and a
tcpSocket startup probe to real loopback servers (liveness by exec). One fake clock drives
time in all of them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from blockbuster import BlockBuster

from agent.aio.tasks import Supervisor
from agent.errors import RuntimeUnavailableError
from agent.events import EventRecorder
from agent.node.handlers import PASSED, HandlerResult
from agent.node.probes.fake import FakeProber
from agent.node.probes.prober import ProberManager
from agent.node.runtime.base import ContainerRecord, ContainerSpec
from agent.node.runtime.fake import Script
from agent.types import KIND_APP, LABEL_CONTAINER, LABEL_KIND, LABEL_POD_UID, Pod, ProbeKind
from tests.contracts.loopback import HTTP_FAILING, HTTP_OK, HttpServer, TcpListener
from tests.contracts.prober import POD_IP, ProberContract
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.fakeclock import FakeClock
from tests.unit.node.probes.proberrig import IMAGE, FirstTick, LoggingRuntime, clock_sleep

SETTLE_ROUNDS = 20  # loop turns for tasks just woken or spawned to reach their next sleep


def command(kind: ProbeKind) -> str:
    return f"{kind.value}?"


class Containers:
    """Running containers in a FakeRuntime on the harness's clock: the records the prober gets."""

    def __init__(self, runtime: LoggingRuntime) -> None:
        self.runtime = runtime
        self.serial = itertools.count()

    async def start(self, pod: Pod) -> dict[str, ContainerRecord]:
        running = {}
        for spec in pod.spec.containers:
            cid = await self.runtime.create_container(
                ContainerSpec(
                    name=f"{pod.uid}-{spec.name}-{next(self.serial)}",
                    image=IMAGE,
                    labels={
                        LABEL_POD_UID: pod.uid,
                        LABEL_CONTAINER: spec.name,
                        LABEL_KIND: KIND_APP,
                    },
                )
            )
            await self.runtime.start_container(cid)
            running[spec.name] = await self.runtime.inspect_container(cid)
        return running


class FakeHarness:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.events = EventRecorder("n1")
        self.changes: list[str] = []
        self.fake = FakeProber(
            clock=self.clock,
            timers=self.clock,
            on_change=self.changes.append,
            events=self.events,
            rng=FirstTick(),
        )
        self.prober = self.fake
        runtime = LoggingRuntime(self.clock)
        runtime.add_image(IMAGE)
        self.containers = Containers(runtime)

    def probe(self, kind: ProbeKind, **timing: int) -> dict[str, Any]:
        return {"exec": {"command": ["anything"]}, **timing}

    async def answer(self, kind: ProbeKind, ok: bool | None) -> None:
        result = None if ok is None else PASSED if ok else HandlerResult.failed(f"{kind} no")
        self.fake.answer("c", kind, result)

    async def run(self, pod: Pod) -> dict[str, ContainerRecord]:
        running = await self.containers.start(pod)
        self.prober.sync_pod(pod, running, POD_IP)
        return running

    async def stopped(self, pod: Pod) -> None:
        self.prober.sync_pod(pod, {}, POD_IP)

    async def forget(self, pod_uid: str) -> None:
        self.prober.forget_pod(pod_uid)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def runs(self, kind: ProbeKind) -> int:
        return self.fake.runs[("c", kind)]

    @property
    def workers(self) -> int:
        return self.fake.workers


class ManagerHarness:
    """The real prober on the FakeRuntime (exec) and, with ``network``, loopback servers:
    readiness by httpGet, startup by tcpSocket."""

    def __init__(self, prober: ProberManager, clock: FakeClock, runtime: LoggingRuntime) -> None:
        self.prober = prober
        self.manager = prober
        self.clock = clock
        self.runtime = runtime
        self.events = EventRecorder("n1")
        self.changes: list[str] = []
        self.containers = Containers(runtime)
        self.network = False
        self.http = HttpServer()
        self.tcp = TcpListener()

    def probe(self, kind: ProbeKind, **timing: int) -> dict[str, Any]:
        if self.network and kind is ProbeKind.READINESS:
            return {"httpGet": {"path": "/ready", "port": self.http.port}, **timing}
        if self.network and kind is ProbeKind.STARTUP:
            return {"tcpSocket": {"port": self.tcp.port}, **timing}
        return {"exec": {"command": [command(kind)]}, **timing}

    async def answer(self, kind: ProbeKind, ok: bool | None) -> None:
        if self.network and kind is ProbeKind.READINESS:
            self.http.status = HTTP_OK if ok else HTTP_FAILING
        elif self.network and kind is ProbeKind.STARTUP:
            await (self.tcp.open() if ok else self.tcp.close())
        elif ok is None:
            assert kind is ProbeKind.LIVENESS
            self.runtime.fail("exec_start", RuntimeUnavailableError("docker is down"), times=None)
        else:
            self.runtime.clear_faults()
            self.runtime.script_command([command(kind)], Script(exit_code=0 if ok else 1))

    async def settle(self) -> None:
        for _ in range(SETTLE_ROUNDS):
            await asyncio.sleep(0)

    async def run(self, pod: Pod) -> dict[str, ContainerRecord]:
        running = await self.containers.start(pod)
        self.prober.sync_pod(pod, running, POD_IP)
        await self.settle()
        return running

    async def stopped(self, pod: Pod) -> None:
        self.prober.sync_pod(pod, {}, POD_IP)
        await self.settle()

    async def forget(self, pod_uid: str) -> None:
        self.prober.forget_pod(pod_uid)
        await self.settle()  # the cancelled workers drop their timers

    async def advance(self, seconds: float) -> None:
        before = self.manager.probes_run
        due = sum(1 for s in self.clock.pending_s() if s <= seconds)
        self.clock.advance(seconds)
        await until(lambda: self.manager.probes_run >= before + due, f"{due} probes to run")
        await self.settle()

    def runs(self, kind: ProbeKind) -> int:
        if self.network and kind is ProbeKind.READINESS:
            return self.http.requests
        if self.network and kind is ProbeKind.STARTUP:  # every probe that was not another kind
            others = self.http.requests + self.runtime.ran(command(ProbeKind.LIVENESS))
            return self.manager.probes_run - others
        return self.runtime.ran(command(kind))

    @property
    def workers(self) -> int:
        return self.manager.workers


class TestFakeProber(ProberContract):
    @pytest.fixture
    def harness(self, blockbuster: BlockBuster) -> FakeHarness:
        return FakeHarness()


class TestProberManager(ProberContract):
    @pytest.fixture(params=["exec", "network"])
    async def harness(
        self, request: pytest.FixtureRequest, blockbuster: BlockBuster
    ) -> AsyncIterator[ManagerHarness]:
        clock = FakeClock()
        runtime = LoggingRuntime(clock)
        runtime.add_image(IMAGE)
        changes: list[str] = []
        events = EventRecorder("n1")
        async with Supervisor() as supervisor:
            prober = ProberManager(
                runtime=runtime,
                events=events,
                clock=clock,
                tasks=supervisor.scope("prober"),
                on_change=changes.append,
                sleep=clock_sleep(clock),
                rng=FirstTick(),
            )
            await prober.start()
            harness = ManagerHarness(prober, clock, runtime)
            harness.events, harness.changes = events, changes
            harness.network = request.param == "network"
            await harness.http.start()
            await harness.tcp.reserve()
            try:
                yield harness
            finally:
                await prober.stop()
                await harness.http.close()
                await harness.tcp.close()
