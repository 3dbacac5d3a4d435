"""The prober manager on the FakeRuntime with a fake clock.

Probe workers sleep on the fake clock (``clock_sleep``): a period passes only when a test calls
``rig.advance()``, which then waits until every worker the step woke has run its probe. Execs
are logged with the (fake) time they ran at; the first probe's jitter comes from ``rng``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from agent.aio.tasks import Supervisor
from agent.events import EventRecorder
from agent.node.probes.base import ProbeState
from agent.node.probes.prober import ProberManager
from agent.node.runtime.base import ContainerRecord, ContainerSpec
from agent.node.runtime.fake import FakeExecSession, FakeRuntime, Script
from agent.types import KIND_APP, LABEL_CONTAINER, LABEL_KIND, LABEL_POD_UID, Pod
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.builders import container, make_pod
from tests.unit.node.pods.fakeclock import FakeClock

IMAGE = "img:1"
DEADLINE_S = 5.0


def clock_sleep(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    """``asyncio.sleep`` on the fake clock: returns once a test advanced it far enough."""

    async def sleep(delay_s: float) -> None:
        done = asyncio.get_running_loop().create_future()

        def fire() -> None:
            if not done.done():
                done.set_result(None)

        timer = clock.call_later(delay_s, fire)
        try:
            await done
        finally:
            timer.cancel()

    return sleep


class FirstTick(random.Random):
    """No jitter: every first probe at the start of its window."""

    def uniform(self, a: float, b: float) -> float:
        return a


class LoggingRuntime(FakeRuntime):
    """The FakeRuntime, logging each exec's command with the fake time it ran at."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__("n1", clock=clock)
        self.fake_clock = clock
        self.execs: list[tuple[float, tuple[str, ...]]] = []

    async def exec_start(
        self, container_id: str, command: Sequence[str], *, stdin: bool, tty: bool
    ) -> FakeExecSession:
        self.execs.append((self.fake_clock.monotonic(), tuple(command)))
        return await super().exec_start(container_id, command, stdin=stdin, tty=tty)

    def ran(self, command: str) -> int:
        return sum(1 for _, argv in self.execs if argv == (command,))

    def answer(self, command: str, code: int) -> None:
        """``command`` (exec'd alone) exits with ``code`` from now on."""
        self.script_command([command], Script(exit_code=code, stdout=b"said %d" % code))


@dataclass
class ProberRig:
    clock: FakeClock
    runtime: LoggingRuntime
    events: EventRecorder
    prober: ProberManager
    changes: list[str] = field(default_factory=list)
    serial: itertools.count[int] = field(default_factory=itertools.count)

    async def run(self, pod: Pod, pod_ip: str = "127.0.0.1") -> dict[str, ContainerRecord]:
        """Start the pod's containers in the fake and tell the prober they run."""
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
        self.prober.sync_pod(pod, running, pod_ip)
        await self.settle()
        return running

    @staticmethod
    async def settle() -> None:
        """Let the workers just spawned or woken run up to their next sleep."""
        for _ in range(10):
            await asyncio.sleep(0)

    def state(self, pod: Pod, record: ContainerRecord) -> ProbeState:
        return self.prober.state(pod.uid, record.id)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass; returns once the probes that fell due have all run."""
        before = self.prober.probes_run
        due = sum(1 for s in self.clock.pending_s() if s <= seconds)
        self.clock.advance(seconds)
        await until(
            lambda: self.prober.probes_run >= before + due,
            f"{due} probes to run",
            deadline_s=DEADLINE_S,
        )
        await self.settle()

    def unhealthy(self) -> list[str]:
        return [e["message"] for e in self.events.list() if e["reason"] == "Unhealthy"]


@asynccontextmanager
async def prober_rig(rng: random.Random | None = None) -> AsyncIterator[ProberRig]:
    clock = FakeClock()
    runtime = LoggingRuntime(clock)
    runtime.add_image(IMAGE)
    events = EventRecorder("n1")
    changes: list[str] = []
    async with Supervisor() as supervisor:
        prober = ProberManager(
            runtime=runtime,
            events=events,
            clock=clock,
            tasks=supervisor.scope("prober"),
            on_change=changes.append,
            sleep=clock_sleep(clock),
            rng=rng or FirstTick(),
        )
        await prober.start()
        try:
            yield ProberRig(clock, runtime, events, prober, changes)
        finally:
            await prober.stop()


def probed_pod(uid: str = "u1", name: str = "web", port: int = 8080, **probes: Any) -> Pod:
    """A pod of one container ``c`` (port ``http``: ``port``) with ``probes`` (manifest
    fields)."""
    return make_pod(
        container(ports=[{"name": "http", "containerPort": port}], **probes), uid=uid, name=name
    )


def exec_probe(command: str, **timing: Any) -> dict[str, Any]:
    return {"exec": {"command": [command]}, **timing}
