"""The LifecycleHooks contract suite (tests/contracts/hooks.py) against ``FakeHooks`` and against
the real ``Hooks``: with exec on the FakeRuntime (a helper container per precondition check,
an exec in the container per handler) and with httpGet to real loopback servers. One fake clock
drives time in all of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from blockbuster import BlockBuster

from agent.node.handlers import PASSED, HandlerResult
from agent.node.hooks.fake import HANG, FakeHooks
from agent.node.hooks.runner import Hooks, HookTarget
from agent.node.runtime.base import ContainerSpec
from agent.node.runtime.fake import FakeExecSession, FakeRuntime, Script
from agent.types import KIND_APP, LABEL_CONTAINER, LABEL_KIND, LABEL_NODE, LABEL_POD_UID, Pod
from tests.contracts.hooks import HooksContract
from tests.contracts.loopback import HTTP_FAILING, HTTP_OK, HttpServer
from tests.unit.node.pods.fakeclock import FakeClock
from tests.unit.node.probes.proberrig import clock_sleep

IMAGE = "img:1"
POD_IP = "127.0.0.1"
CHECK = ("check-db",)  # the exec precondition's command (its helper's entrypoint)
HANDLER = ("drain",)  # the exec handler's command
SETTLE_ROUNDS = 20  # loop turns for what the clock woke to reach its next wait


class HangingRuntime(FakeRuntime):
    """The FakeRuntime, where an exec of a command in ``hanging`` never ends on its own (what
    the fake's Scripts cannot say of an exec without stdin)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__("n1", clock=clock)
        self.hanging: set[tuple[str, ...]] = set()

    async def exec_start(
        self, container_id: str, command: Sequence[str], *, stdin: bool, tty: bool
    ) -> FakeExecSession:
        if tuple(command) in self.hanging:
            stdin = True  # with an echo_stdin Script: runs until its stdin closes, never here
        return await super().exec_start(container_id, command, stdin=stdin, tty=tty)


class Clocked:
    """A fake clock and a FakeRuntime with the pod's sandbox and container ``c``."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.runtime = HangingRuntime(self.clock)
        self.runtime.add_image(IMAGE)

    def now(self) -> float:
        return self.clock.monotonic()

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for _ in range(SETTLE_ROUNDS):
            await asyncio.sleep(0)

    async def target(self, pod: Pod) -> HookTarget:
        labels = {LABEL_NODE: "n1", LABEL_POD_UID: pod.uid}
        sandbox = await self.runtime.create_container(
            ContainerSpec(name=f"POD_{pod.uid}", image=IMAGE, labels=labels)
        )
        await self.runtime.start_container(sandbox)
        spec = ContainerSpec(
            name=f"c_web_shop_{pod.uid}_0",
            image=IMAGE,
            labels={**labels, LABEL_CONTAINER: "c", LABEL_KIND: KIND_APP},
            cmd=("serve",),
            network_of=sandbox,
        )
        container_id = await self.runtime.create_container(spec)
        await self.runtime.start_container(container_id)
        return HookTarget(pod, pod.spec.containers[0], POD_IP, container_id, spec)


class FakeHarness(Clocked):
    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeHooks(sleep=clock_sleep(self.clock))
        self.hooks = self.fake

    def precondition(self, **fields: int) -> dict[str, Any]:
        return {"tcpSocket": {"port": 5432}, **fields}

    def handler(self) -> dict[str, Any]:
        return {"exec": {"command": list(HANDLER)}}

    async def answer_check(self, ok: bool | None) -> None:
        failed = HandlerResult.failed("dial tcp 127.0.0.1:5432: connection refused")
        self.fake.answer_check(0, HANG if ok is None else PASSED if ok else failed)

    async def answer_handler(self, ok: bool | None) -> None:
        failed = HandlerResult.failed("command 'drain' exited with 1")
        self.fake.answer_handler(HANG if ok is None else PASSED if ok else failed)


class ExecHarness(Clocked):
    """The real hooks on the FakeRuntime: exec precondition (helper) and exec handler."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks = Hooks(self.runtime, sleep=clock_sleep(self.clock))

    def precondition(self, **fields: int) -> dict[str, Any]:
        return {"exec": {"command": list(CHECK)}, **fields}

    def handler(self) -> dict[str, Any]:
        return {"exec": {"command": list(HANDLER)}}

    async def answer_check(self, ok: bool | None) -> None:
        script = (
            Script(exit_code=None)  # the helper runs on
            if ok is None
            else Script(exit_code=0)
            if ok
            else Script(stdout=b"refused\n", exit_code=1)
        )
        self.runtime.script_command(CHECK, script)

    async def answer_handler(self, ok: bool | None) -> None:
        if ok is None:
            self.runtime.hanging.add(HANDLER)
            self.runtime.script_command(HANDLER, Script(echo_stdin=True))
            return
        self.runtime.hanging.discard(HANDLER)
        self.runtime.script_command(HANDLER, Script(exit_code=0 if ok else 1))


class NetworkHarness(Clocked):
    """The real hooks with httpGet precondition and handler to loopback servers."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks = Hooks(self.runtime, sleep=clock_sleep(self.clock))
        self.check_server = HttpServer()
        self.handler_server = HttpServer()

    def precondition(self, **fields: int) -> dict[str, Any]:
        return {"httpGet": {"path": "/db", "port": self.check_server.port}, **fields}

    def handler(self) -> dict[str, Any]:
        return {"httpGet": {"path": "/drain", "port": self.handler_server.port}}

    @staticmethod
    def _status(ok: bool | None) -> int | None:
        return None if ok is None else HTTP_OK if ok else HTTP_FAILING

    async def answer_check(self, ok: bool | None) -> None:
        self.check_server.status = self._status(ok)

    async def answer_handler(self, ok: bool | None) -> None:
        self.handler_server.status = self._status(ok)


class TestFakeHooks(HooksContract):
    @pytest.fixture
    def harness(self, blockbuster: BlockBuster) -> FakeHarness:
        return FakeHarness()


class TestHooks(HooksContract):
    @pytest.fixture(params=["exec", "network"])
    async def harness(
        self, request: pytest.FixtureRequest, blockbuster: BlockBuster
    ) -> AsyncIterator[ExecHarness | NetworkHarness]:
        if request.param == "exec":
            yield ExecHarness()
            return
        harness = NetworkHarness()
        await harness.check_server.start()
        await harness.handler_server.start()
        try:
            yield harness
        finally:
            await harness.check_server.close()
            await harness.handler_server.close()
