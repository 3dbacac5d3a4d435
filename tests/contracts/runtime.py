"""The Runtime contract (agent/node/runtime/base.py): every implementation passes the same tests.

A test module runs the suite by subclassing :class:`RuntimeContract` in a ``Test*`` class and
providing a ``harness`` fixture that yields a :class:`RuntimeHarness` (see
tests/unit/node/runtime/test_fake_runtime_contract.py for ``FakeRuntime`` and
tests/integration/test_runtime_contract.py for ``DockerRuntime`` on the real dockerd).

The processes the tests run are real shell commands (``COMMANDS``): the Docker engine runs them
in the busybox test image, the fake plays the :class:`~agent.node.runtime.fake.Script` written
beside each. What cannot be done the same way in both (make a running container's process exit
with a code, make a fresh image, an engine that does not answer) is a harness method.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pytest

from agent.errors import (
    ContainerConflictError,
    ImageConflictError,
    ImageUnavailableError,
    NotFoundError,
    NotRunningError,
    RuntimeUnavailableError,
)
from agent.node.runtime.base import (
    ANONYMOUS,
    LIFECYCLE_ACTIONS,
    ContainerSpec,
    ContainerState,
    ExecSession,
    OutputChannel,
    PullProgress,
    RegistryAuth,
    Runtime,
    RuntimeEvent,
)
from agent.node.runtime.fake import Script
from agent.quantity import INT64_MAX
from agent.types import LABEL_CONTAINER, LABEL_NODE, LABEL_POD_UID

WAIT_S = 20.0  # a deadline for conditions that hold at once (fake) or within moments (dockerd)
EXIT_CODE_WAIT_S = 5.0
CONTRACT_LABEL = "io.node-agent.contract"  # on every container the suite makes: sure clean-up

# A container that runs until told to exit with a code (the file /tmp/exit), and exits 143 on
# SIGTERM as a process without a handler would: what a pod's long-running container does.
RUNS = (
    "sh",
    "-c",
    "trap 'exit 143' TERM; while [ ! -f /tmp/exit ]; do sleep 0.05; done; exit $(cat /tmp/exit)",
)
# One that traps SIGTERM and exits cleanly: a stop ends it with 0, not 143. TRAPPED answers 0
# once the trap is set, so the stop cannot race the shell's start.
RUNS_EXITS_0_ON_TERM = (
    "sh",
    "-c",
    "trap 'exit 0' TERM; touch /tmp/trapped; while true; do sleep 0.05; done",
)
TRAPPED = ("test", "-f", "/tmp/trapped")
EXITS_3 = ("sh", "-c", "echo out; echo err >&2; exit 3")
PRINTS_LINES = ("sh", "-c", "echo one; echo two; echo three")
EXEC_SPLIT = ("sh", "-c", "printf exec-out; printf exec-err >&2; exit 7")
EXEC_TTY = ("sh", "-c", "printf tty-out; printf tty-err >&2")
EXEC_CAT = ("cat",)

COMMANDS: dict[tuple[str, ...], Script] = {
    RUNS: Script(exit_code=None),
    RUNS_EXITS_0_ON_TERM: Script(exit_code=None, stop_exit_code=0),
    TRAPPED: Script(exit_code=0),
    EXITS_3: Script(stdout=b"out\n", stderr=b"err\n", exit_code=3),
    PRINTS_LINES: Script(stdout=b"one\ntwo\nthree\n", exit_code=0),
    EXEC_SPLIT: Script(stdout=b"exec-out", stderr=b"exec-err", exit_code=7),
    EXEC_TTY: Script(stdout=b"tty-out", stderr=b"tty-err", exit_code=0),
    EXEC_CAT: Script(echo_stdin=True, exit_code=0),
}


class RuntimeHarness(Protocol):
    """What differs between implementations, for one test."""

    runtime: Runtime
    node_name: str
    image: str
    """A local image with ``sh`` that containers are created from."""
    unpullable: str
    """A reference no registry can serve."""

    async def make_exit(self, container_id: str, code: int) -> None:
        """Make the running container ``RUNS`` started exit with ``code`` on its own."""
        ...

    async def new_image(self, ref: str) -> str:
        """Make a fresh local image (used by nothing) named ``ref``; return its id."""
        ...

    async def tag(self, image: str, ref: str) -> None:
        """Give an existing local image one more reference."""
        ...

    def unreachable(self) -> Runtime:
        """A runtime of the same kind whose engine does not answer."""
        ...


@dataclass
class Names:
    """Unique names and labels for one test's containers."""

    node_name: str
    image: str
    prefix: str = field(default_factory=lambda: f"rtc-{uuid.uuid4().hex[:8]}")
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def spec(
        self,
        command: Sequence[str] = RUNS,
        *,
        pod_uid: str = "pod-a",
        name: str | None = None,
        labels: dict[str, str] | None = None,
        image: str | None = None,
    ) -> ContainerSpec:
        container = name or f"{self.prefix}-{next(self._serial)}"
        return ContainerSpec(
            name=container,
            image=image or self.image,
            labels={
                LABEL_NODE: self.node_name,
                LABEL_POD_UID: f"{self.prefix}-{pod_uid}",
                LABEL_CONTAINER: container,
                CONTRACT_LABEL: "1",
                **(labels or {}),
            },
            cmd=tuple(command),
        )

    def uid(self, pod_uid: str = "pod-a") -> str:
        return f"{self.prefix}-{pod_uid}"


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds, within WAIT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    pause_s = 0.005
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}")
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.2)


async def wait_state(runtime: Runtime, container_id: str, state: ContainerState) -> None:
    async def reached() -> bool:
        return (await runtime.inspect_container(container_id)).state is state

    await eventually(reached, f"container {container_id[:12]} {state.value}")


async def read_all(session: ExecSession) -> dict[OutputChannel, bytes]:
    """Everything the exec writes, per channel, until EOF (within WAIT_S)."""
    out = {OutputChannel.STDOUT: b"", OutputChannel.STDERR: b""}

    async def drain() -> None:
        while True:
            channel, data = await session.read()
            if not data:
                return
            out[channel] += data

    await asyncio.wait_for(drain(), WAIT_S)
    return out


@dataclass
class OutputSink:
    """An ``ExecOutputSink`` that keeps what it is given; asks for a pause after each piece
    while ``pausing`` is set."""

    pausing: bool = False
    out: dict[OutputChannel, bytes] = field(
        default_factory=lambda: {OutputChannel.STDOUT: b"", OutputChannel.STDERR: b""}
    )
    pieces: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    error: Exception | None = None

    def exec_output(self, channel: OutputChannel, data: bytes) -> bool:
        self.out[channel] += data
        self.pieces += 1
        return not self.pausing

    def exec_output_ended(self, error: Exception | None) -> None:
        self.error = error
        self.ended.set()


async def read_logs(runtime: Runtime, container_id: str, **options: object) -> bytes:
    settings: dict[str, object] = {
        "follow": False,
        "tail": None,
        "timestamps": False,
        "since_s": None,
    }
    settings.update(options)

    async def collect() -> bytes:
        chunks = [
            chunk
            async for chunk in runtime.logs(
                container_id,
                follow=bool(settings["follow"]),
                tail=settings["tail"],  # type: ignore[arg-type]
                timestamps=bool(settings["timestamps"]),
                since_s=settings["since_s"],  # type: ignore[arg-type]
            )
        ]
        return b"".join(chunks)

    return await asyncio.wait_for(collect(), WAIT_S)


class EventLog:
    """Collects a runtime's events in a task; ``live()`` returns once the subscription is known
    to deliver (a container started for the purpose was seen), so no later event is missed."""

    def __init__(self, runtime: Runtime, names: Names) -> None:
        self.runtime = runtime
        self.names = names
        self.seen: list[RuntimeEvent] = []
        self.ended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        try:
            async for event in self.runtime.events():
                self.seen.append(event)
        finally:
            self.ended.set()

    async def live(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._pump())
        probe = await self.runtime.create_container(self.names.spec(pod_uid="events-probe"))
        await self.runtime.start_container(probe)

        async def probe_seen() -> bool:
            if not self.seen:
                # dockerd may not have subscribed us yet: the first start can pass unseen.
                await self.runtime.stop_container(probe, 0)
                await self.runtime.start_container(probe)
            return any(e.container_id == probe for e in self.seen)

        await eventually(probe_seen, "the events stream to deliver")
        await self.runtime.remove_container(probe)

    def actions(self, container_id: str) -> list[str]:
        return [e.action for e in self.seen if e.container_id == container_id]

    async def wait_for(self, container_id: str, *actions: str) -> None:
        async def all_seen() -> bool:
            return all(a in self.actions(container_id) for a in actions)

        await eventually(all_seen, f"events {actions} of {container_id[:12]}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class RuntimeExecContract:
    """The exec tests alone, for an implementation whose exec path is an alternative of one
    that passes the whole suite (DockerRuntime through the SDK rather than on the loop); a
    subclass provides the ``harness`` fixture."""

    @pytest.fixture
    def names(self, harness: RuntimeHarness) -> Names:
        return Names(node_name=harness.node_name, image=harness.image)

    # -- exec --------------------------------------------------------------------------------

    async def _running(self, harness: RuntimeHarness, names: Names) -> str:
        cid = await harness.runtime.create_container(names.spec())
        await harness.runtime.start_container(cid)
        return cid

    async def test_exec_separates_stdout_and_stderr(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        cid = await self._running(harness, names)
        session = await harness.runtime.exec_start(cid, EXEC_SPLIT, stdin=False, tty=False)
        try:
            out = await read_all(session)
            assert out == {OutputChannel.STDOUT: b"exec-out", OutputChannel.STDERR: b"exec-err"}
            assert await session.exit_code(EXIT_CODE_WAIT_S) == 7
            assert await session.read() == (OutputChannel.STDOUT, b"")  # EOF stays EOF
        finally:
            await session.close()
        await session.close()  # idempotent

    async def test_exec_stdin_until_eof(self, harness: RuntimeHarness, names: Names) -> None:
        cid = await self._running(harness, names)
        session = await harness.runtime.exec_start(cid, EXEC_CAT, stdin=True, tty=False)
        try:
            await session.write(b"hello ")
            channel, first = await asyncio.wait_for(session.read(), WAIT_S)
            assert channel is OutputChannel.STDOUT
            assert first == b"hello "  # echoed before stdin ends: it is a live stream
            await session.write(b"world\n")
            await session.close_stdin()
            out = await read_all(session)
            assert out[OutputChannel.STDOUT] == b"world\n"
            assert await session.exit_code(EXIT_CODE_WAIT_S) == 0
        finally:
            await session.close()

    async def test_exec_output_in_callbacks(self, harness: RuntimeHarness, names: Names) -> None:
        cid = await self._running(harness, names)
        session = await harness.runtime.exec_start(cid, EXEC_SPLIT, stdin=False, tty=False)
        sink = OutputSink()
        try:
            session.attach_output(sink)
            await asyncio.wait_for(sink.ended.wait(), WAIT_S)
            assert sink.error is None
            assert sink.out == {
                OutputChannel.STDOUT: b"exec-out",
                OutputChannel.STDERR: b"exec-err",
            }
            assert await session.exit_code(EXIT_CODE_WAIT_S) == 7
        finally:
            await session.close()

    async def test_exec_output_in_callbacks_pauses_until_resumed(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        cid = await self._running(harness, names)
        session = await harness.runtime.exec_start(cid, EXEC_CAT, stdin=True, tty=False)
        sink = OutputSink(pausing=True)
        try:
            session.attach_output(sink)
            await session.write(b"one ")

            async def first() -> bool:
                return sink.pieces == 1

            await eventually(first, "the first piece")
            await session.write(b"two\n")
            await session.close_stdin()
            sink.pausing = False
            session.resume_output()  # what came meanwhile, then the end
            await asyncio.wait_for(sink.ended.wait(), WAIT_S)
            assert sink.error is None
            assert sink.out[OutputChannel.STDOUT] == b"one two\n"
            assert await session.exit_code(EXIT_CODE_WAIT_S) == 0
        finally:
            await session.close()

    async def test_exec_with_a_tty_has_one_output_and_resizes(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        cid = await self._running(harness, names)
        session = await harness.runtime.exec_start(cid, EXEC_TTY, stdin=False, tty=True)
        try:
            await session.resize(100, 40)
            out = await read_all(session)
            assert out[OutputChannel.STDERR] == b""
            assert b"tty-out" in out[OutputChannel.STDOUT]
            assert b"tty-err" in out[OutputChannel.STDOUT]
            assert await session.exit_code(EXIT_CODE_WAIT_S) == 0
        finally:
            await session.close()

    async def test_a_resize_after_the_process_ended_does_nothing(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        cid = await self._running(harness, names)
        session = await harness.runtime.exec_start(cid, EXEC_TTY, stdin=False, tty=True)
        try:
            await read_all(session)
            assert await session.exit_code(EXIT_CODE_WAIT_S) == 0
            await session.resize(80, 24)
        finally:
            await session.close()

    async def test_exec_in_a_container_that_is_not_running(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        created = await runtime.create_container(names.spec())
        with pytest.raises(NotRunningError):
            await runtime.exec_start(created, EXEC_SPLIT, stdin=False, tty=False)
        exited = await runtime.create_container(names.spec(EXITS_3))
        await runtime.start_container(exited)
        await wait_state(runtime, exited, ContainerState.EXITED)
        with pytest.raises(NotRunningError):
            await runtime.exec_start(exited, EXEC_SPLIT, stdin=False, tty=False)

    async def test_exec_ends_when_its_container_stops(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        cid = await self._running(harness, names)
        session = await harness.runtime.exec_start(cid, EXEC_CAT, stdin=True, tty=False)
        try:
            await harness.runtime.stop_container(cid, 5)
            out = await read_all(session)
            assert out[OutputChannel.STDERR] == b""
            code = await session.exit_code(EXIT_CODE_WAIT_S)
            assert code is None or code != 0
        finally:
            await session.close()


class RuntimeContract(RuntimeExecContract):
    """The tests; a subclass provides the ``harness`` fixture."""

    @pytest.fixture
    async def events(self, harness: RuntimeHarness, names: Names) -> AsyncIterator[EventLog]:
        log = EventLog(harness.runtime, names)
        await log.live()
        yield log
        await log.close()

    # -- engine ------------------------------------------------------------------------------

    async def test_ping_answers_a_version(self, harness: RuntimeHarness) -> None:
        assert await harness.runtime.ping()

    async def test_an_engine_that_does_not_answer_is_unavailable(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        dead = harness.unreachable()
        try:
            calls: list[Callable[[], Awaitable[object]]] = [
                dead.ping,
                dead.list_containers,
                dead.list_pod_uids,
                lambda: dead.list_container_summaries("x"),
                lambda: dead.create_container(names.spec()),
                lambda: dead.start_container("x"),
                lambda: dead.inspect_container("x"),
                lambda: dead.exec_start("x", ["true"], stdin=False, tty=False),
                dead.list_images,
                lambda: dead.inspect_image(names.image),
                lambda: dead.pull_image(names.image),
                lambda: dead.ensure_image(names.image, "IfNotPresent"),
                lambda: dead.remove_image("nothing:1"),
                dead.image_fs_usage,
                dead.image_ids_in_use,
            ]
            for call in calls:
                with pytest.raises(RuntimeUnavailableError):
                    await call()
            with pytest.raises(RuntimeUnavailableError):
                await anext(aiter(dead.events()))
        finally:
            await dead.close()

    # -- containers --------------------------------------------------------------------------

    async def test_create_start_inspect_stop_remove(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        spec = names.spec(labels={"io.node-agent.test.extra": "a=b,c"})
        cid = await runtime.create_container(spec)
        created = await runtime.inspect_container(cid)
        assert created.state is ContainerState.CREATED
        assert created.name == spec.name
        assert dict(created.labels).items() >= dict(spec.labels).items()
        assert created.created_at is not None
        assert created.started_at is None
        assert created.exit_code is None
        assert created.image == spec.image
        assert created.image_id.startswith("sha256:")

        await runtime.start_container(cid)
        running = await runtime.inspect_container(cid)
        assert running.state is ContainerState.RUNNING
        assert running.running
        assert running.started_at is not None
        assert running.ip_address
        assert await runtime.container_pid(cid) > 0

        await runtime.stop_container(cid, 5)
        stopped = await runtime.inspect_container(cid)
        assert stopped.state is ContainerState.EXITED
        assert stopped.exit_code == 143
        assert stopped.finished_at is not None
        assert not stopped.ip_address
        with pytest.raises(NotRunningError):
            await runtime.container_pid(cid)
        await runtime.stop_container(cid, 5)  # stopping a stopped container: nothing to do

        await runtime.remove_container(cid)
        with pytest.raises(NotFoundError):
            await runtime.inspect_container(cid)
        assert cid not in {r.id for r in await runtime.list_containers()}

    async def test_a_stop_with_the_longest_grace_period_stops(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        """A grace period is any int64 (a manifest's terminationGracePeriodSeconds, delete and
        drain --grace-period): the Docker SDK raised OverflowError for 2**63 - 1 (its HTTP
        timeout is the grace period plus its own), so the pod could never be stopped."""
        runtime = harness.runtime
        cid = await runtime.create_container(names.spec())
        await runtime.start_container(cid)
        await runtime.stop_container(cid, INT64_MAX)  # the process dies of SIGTERM at once
        stopped = await runtime.inspect_container(cid)
        assert stopped.state is ContainerState.EXITED and stopped.exit_code == 143

    async def test_start_of_a_running_container_is_a_no_op(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        cid = await harness.runtime.create_container(names.spec())
        await harness.runtime.start_container(cid)
        before = await harness.runtime.inspect_container(cid)
        await harness.runtime.start_container(cid)
        after = await harness.runtime.inspect_container(cid)
        assert after.state is ContainerState.RUNNING
        assert after.started_at == before.started_at

    async def test_exit_code_of_a_process_that_ends(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        cid = await runtime.create_container(names.spec(EXITS_3))
        await runtime.start_container(cid)
        await wait_state(runtime, cid, ContainerState.EXITED)
        record = await runtime.inspect_container(cid)
        assert record.exit_code == 3
        assert not record.oom_killed
        assert not record.running
        assert record.ever_started

    async def test_a_running_container_exits_with_its_code(
        self, harness: RuntimeHarness, names: Names, events: EventLog
    ) -> None:
        runtime = harness.runtime
        cid = await runtime.create_container(names.spec())
        await runtime.start_container(cid)
        await harness.make_exit(cid, 42)
        await wait_state(runtime, cid, ContainerState.EXITED)
        assert (await runtime.inspect_container(cid)).exit_code == 42
        await events.wait_for(cid, "create", "start", "die")

    async def test_a_process_that_traps_sigterm_stops_with_its_own_exit_code(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        cid = await runtime.create_container(names.spec(RUNS_EXITS_0_ON_TERM))
        await runtime.start_container(cid)

        async def trapped() -> bool:
            session = await runtime.exec_start(cid, TRAPPED, stdin=False, tty=False)
            try:
                await read_all(session)
                return await session.exit_code(EXIT_CODE_WAIT_S) == 0
            finally:
                await session.close()

        await eventually(trapped, "the shell to set its SIGTERM trap")
        await runtime.stop_container(cid, 5)
        stopped = await runtime.inspect_container(cid)
        assert stopped.state is ContainerState.EXITED
        assert stopped.exit_code == 0

    async def test_a_stopped_container_starts_again(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        cid = await runtime.create_container(names.spec(EXITS_3))
        await runtime.start_container(cid)
        await wait_state(runtime, cid, ContainerState.EXITED)
        await runtime.start_container(cid)
        await wait_state(runtime, cid, ContainerState.EXITED)
        assert (await runtime.inspect_container(cid)).exit_code == 3

    async def test_duplicate_name_is_a_conflict(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        spec = names.spec()
        first = await harness.runtime.create_container(spec)
        with pytest.raises(ContainerConflictError):
            await harness.runtime.create_container(spec)
        ours = [r for r in await harness.runtime.list_containers() if r.name == spec.name]
        assert [r.id for r in ours] == [first]

    async def test_create_from_an_absent_image_is_not_found(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        spec = names.spec(image="node-agent-contract/absent:never")
        with pytest.raises(NotFoundError):
            await harness.runtime.create_container(spec)

    async def test_missing_containers(self, harness: RuntimeHarness) -> None:
        runtime = harness.runtime
        missing = "0" * 64
        await runtime.remove_container(missing)  # gone is what was asked: not an error
        await runtime.stop_container(missing, 1)
        for call in (
            lambda: runtime.inspect_container(missing),
            lambda: runtime.start_container(missing),
            lambda: runtime.container_pid(missing),
            lambda: runtime.exec_start(missing, ["true"], stdin=False, tty=False),
        ):
            with pytest.raises(NotFoundError):
                await call()

    async def test_remove_of_a_running_container_forces_it(
        self, harness: RuntimeHarness, names: Names, events: EventLog
    ) -> None:
        runtime = harness.runtime
        cid = await runtime.create_container(names.spec())
        await runtime.start_container(cid)
        await runtime.remove_container(cid)
        with pytest.raises(NotFoundError):
            await runtime.inspect_container(cid)
        await events.wait_for(cid, "start", "die", "destroy")
        assert events.actions(cid).index("die") < events.actions(cid).index("destroy")

    async def test_lists_by_pod_and_only_our_node(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        a1 = await runtime.create_container(names.spec(pod_uid="pod-a"))
        a2 = await runtime.create_container(names.spec(pod_uid="pod-a"))
        b1 = await runtime.create_container(names.spec(pod_uid="pod-b"))
        await runtime.start_container(a1)
        other = await runtime.create_container(
            names.spec(pod_uid="pod-a", labels={LABEL_NODE: f"{names.node_name}-other"})
        )
        try:
            assert {r.id for r in await runtime.list_containers(names.uid("pod-a"))} == {a1, a2}
            everything = {r.id for r in await runtime.list_containers()}
            assert {a1, a2, b1} <= everything
            assert other not in everything
            summaries = await runtime.list_container_summaries(names.uid("pod-a"))
            assert {r.id for r in summaries} == {a1, a2}
            by_id = {r.id: r for r in summaries}
            assert by_id[a1].state is ContainerState.RUNNING
            assert by_id[a2].state is ContainerState.CREATED
            assert by_id[a1].pod_uid == names.uid("pod-a")
            assert by_id[a1].container_name == by_id[a1].name
            pods = await runtime.list_pod_uids()
            assert pods[names.uid("pod-a")] == {f"{a1}:running", f"{a2}:created"}
            assert pods[names.uid("pod-b")] == {f"{b1}:created"}
        finally:
            await runtime.remove_container(other)

    async def test_labels_round_trip(self, harness: RuntimeHarness, names: Names) -> None:
        labels = {
            "io.node-agent.pod.manifest": '{"spec": {"containers": [{"name": "x"}]}}',
            "io.node-agent.empty": "",
            "io.node-agent.unicode": "grüße ✓",
        }
        cid = await harness.runtime.create_container(names.spec(labels=labels))
        record = await harness.runtime.inspect_container(cid)
        assert {k: record.labels[k] for k in labels} == labels
        (listed,) = [r for r in await harness.runtime.list_containers() if r.id == cid]
        assert {k: listed.labels[k] for k in labels} == labels

    async def test_events_of_a_lifecycle(
        self, harness: RuntimeHarness, names: Names, events: EventLog
    ) -> None:
        runtime = harness.runtime
        spec = names.spec(EXITS_3)
        cid = await runtime.create_container(spec)
        await runtime.start_container(cid)
        await events.wait_for(cid, "create", "start", "die")
        await runtime.remove_container(cid)
        await events.wait_for(cid, "destroy")
        mine = [e for e in events.seen if e.container_id == cid]
        assert all(e.pod_uid == spec.labels[LABEL_POD_UID] for e in mine)
        actions = events.actions(cid)
        assert actions.index("create") < actions.index("start") < actions.index("die")

    async def test_events_are_lifecycle_actions_only_not_execs(
        self, harness: RuntimeHarness, names: Names, events: EventLog
    ) -> None:
        runtime = harness.runtime
        cid = await runtime.create_container(names.spec())
        await runtime.start_container(cid)
        session = await runtime.exec_start(cid, EXEC_SPLIT, stdin=False, tty=False)
        try:
            await read_all(session)
            assert await session.exit_code(EXIT_CODE_WAIT_S) == 7
        finally:
            await session.close()
        await harness.make_exit(cid, 0)  # itself an exec; then a die, after all of them
        await events.wait_for(cid, "die")
        actions = events.actions(cid)
        assert set(actions) <= LIFECYCLE_ACTIONS, actions
        assert not [a for a in actions if a.startswith("exec")]

    # -- logs --------------------------------------------------------------------------------

    async def test_logs_merge_stdout_and_stderr(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        cid = await runtime.create_container(names.spec(EXITS_3))
        await runtime.start_container(cid)
        await wait_state(runtime, cid, ContainerState.EXITED)
        assert sorted((await read_logs(runtime, cid)).splitlines()) == [b"err", b"out"]

    async def test_logs_tail_and_timestamps(self, harness: RuntimeHarness, names: Names) -> None:
        runtime = harness.runtime
        cid = await runtime.create_container(names.spec(PRINTS_LINES))
        await runtime.start_container(cid)
        await wait_state(runtime, cid, ContainerState.EXITED)
        assert await read_logs(runtime, cid) == b"one\ntwo\nthree\n"
        assert await read_logs(runtime, cid, tail=2) == b"two\nthree\n"
        assert await read_logs(runtime, cid, tail=0) == b""
        assert await read_logs(runtime, cid, since_s=3600.0) == b"one\ntwo\nthree\n"
        stamped = (await read_logs(runtime, cid, timestamps=True)).splitlines()
        assert [line.split(b" ", 1)[1] for line in stamped] == [b"one", b"two", b"three"]
        assert all(line[:2] == b"20" and line.split(b" ", 1)[0][-1:] == b"Z" for line in stamped)

    async def test_following_logs_ends_when_the_container_stops(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        cid = await runtime.create_container(names.spec())
        await runtime.start_container(cid)
        follower = asyncio.get_running_loop().create_task(read_logs(runtime, cid, follow=True))
        await harness.make_exit(cid, 0)
        assert await asyncio.wait_for(follower, WAIT_S) == b""

    async def test_logs_of_a_missing_container(self, harness: RuntimeHarness) -> None:
        with pytest.raises(NotFoundError):
            await read_logs(harness.runtime, "0" * 64)

    # -- images ------------------------------------------------------------------------------

    async def test_images_list_inspect_resolve(self, harness: RuntimeHarness, names: Names) -> None:
        runtime = harness.runtime
        ref = f"node-agent-contract/{names.prefix}:v1"
        image_id = await harness.new_image(ref)
        listed = [i for i in await runtime.list_images() if i.id == image_id]
        assert len(listed) == 1
        assert listed[0].repo_tags == (ref,)
        assert listed[0].repo_digests == ()  # made locally: no registry knows it
        assert listed[0].size_bytes >= 0
        assert listed[0].created_at is not None
        inspected = await runtime.inspect_image(ref)
        assert inspected is not None
        assert inspected.id == image_id
        assert inspected.repo_tags == (ref,)
        assert (await runtime.inspect_image(image_id)) == inspected
        assert (await runtime.inspect_image(f"node-agent-contract/{names.prefix}:v2")) is None
        resolved = await runtime.resolve_image(ref)
        assert (resolved.reference, resolved.image_id, resolved.repo_digest) == (
            ref,
            image_id,
            "",
        )
        with pytest.raises(NotFoundError):
            await runtime.resolve_image(f"node-agent-contract/{names.prefix}:v2")

    async def test_a_reference_without_a_tag_is_latest(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        repo = f"node-agent-contract/{names.prefix}"
        image_id = await harness.new_image(f"{repo}:latest")
        found = await harness.runtime.inspect_image(repo)
        assert found is not None
        assert found.id == image_id

    async def test_remove_image_untags_then_removes(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        first = f"node-agent-contract/{names.prefix}:one"
        second = f"node-agent-contract/{names.prefix}:two"
        image_id = await harness.new_image(first)
        await harness.tag(first, second)
        with pytest.raises(ImageConflictError):
            await runtime.remove_image(image_id)  # by id while two references name it
        await runtime.remove_image(first)  # one of two references: untag only
        left = await runtime.inspect_image(image_id)
        assert left is not None
        assert left.repo_tags == (second,)
        await runtime.remove_image(second)  # the last one: the image goes
        assert await runtime.inspect_image(image_id) is None
        assert image_id not in {i.id for i in await runtime.list_images()}
        await runtime.remove_image(second)  # absent: not an error
        await runtime.remove_image(image_id)

    async def test_an_image_in_use_is_not_removed(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        ref = f"node-agent-contract/{names.prefix}:used"
        image_id = await harness.new_image(ref)
        cid = await runtime.create_container(names.spec(image=ref))  # created, never started
        with pytest.raises(ImageConflictError):
            await runtime.remove_image(ref)
        with pytest.raises(ImageConflictError):
            await runtime.remove_image(image_id)
        assert (await runtime.inspect_image(ref)) is not None
        await runtime.remove_container(cid)
        await runtime.remove_image(ref)
        assert await runtime.inspect_image(image_id) is None

    async def test_pull_of_an_unpullable_reference(self, harness: RuntimeHarness) -> None:
        reports: list[PullProgress] = []
        with pytest.raises(ImageUnavailableError):
            await harness.runtime.pull_image(harness.unpullable, progress=reports.append)
        with pytest.raises(ImageUnavailableError):  # explicitly anonymous: the same
            await harness.runtime.pull_image(harness.unpullable, auth=ANONYMOUS)
        with pytest.raises(ImageUnavailableError):  # credentials a registry never sees
            await harness.runtime.pull_image(
                harness.unpullable, auth=RegistryAuth("127.0.0.1:1", "user", "secret")
            )
        assert await harness.runtime.inspect_image(harness.unpullable) is None

    async def test_ensure_image_follows_the_pull_policy(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        runtime = harness.runtime
        present = await runtime.ensure_image(harness.image, "Never")
        assert present == await runtime.ensure_image(harness.image, "IfNotPresent")
        with pytest.raises(ImageUnavailableError):
            await runtime.ensure_image(harness.unpullable, "Never")
        with pytest.raises(ImageUnavailableError):
            await runtime.ensure_image(harness.unpullable, "IfNotPresent")
        with pytest.raises(ImageUnavailableError):
            await runtime.ensure_image(harness.unpullable, "Always")

    async def test_image_ids_in_use_covers_every_container_on_the_engine(
        self, harness: RuntimeHarness, names: Names
    ) -> None:
        """Image GC's source of truth: a container of another node (or not ours at all) in any
        state holds its image as much as ours do."""
        runtime = harness.runtime
        ours_ref = f"node-agent-contract/{names.prefix}:ours"
        theirs_ref = f"node-agent-contract/{names.prefix}:theirs"
        idle_ref = f"node-agent-contract/{names.prefix}:idle"
        ours_id = await harness.new_image(ours_ref)
        theirs_id = await harness.new_image(theirs_ref)
        idle_id = await harness.new_image(idle_ref)
        ours = await runtime.create_container(names.spec(image=ours_ref))
        theirs = await runtime.create_container(
            names.spec(image=theirs_ref, labels={LABEL_NODE: f"{names.prefix}-elsewhere"})
        )
        try:
            assert theirs not in {c.id for c in await runtime.list_containers()}
            in_use = await runtime.image_ids_in_use()
            assert ours_id in in_use
            assert theirs_id in in_use
            assert idle_id not in in_use
        finally:
            await runtime.remove_container(ours)
            await runtime.remove_container(theirs)
        for ref in (ours_ref, theirs_ref, idle_ref):
            await runtime.remove_image(ref)

    async def test_image_fs_usage(self, harness: RuntimeHarness) -> None:
        usage = await harness.runtime.image_fs_usage()
        assert usage["capacityBytes"] > 0
        assert 0 <= usage["usedBytes"] <= usage["capacityBytes"]
        assert 0 <= usage["availableBytes"] <= usage["capacityBytes"]
