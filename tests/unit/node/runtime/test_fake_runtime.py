"""What FakeRuntime adds for tests beyond the Runtime contract: faults, a dead engine, exits
and OOM kills on demand, an injectable clock, a fake registry, scripted processes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from blockbuster import BlockBuster

from agent.errors import (
    ImageUnavailableError,
    NotRunningError,
    RuntimeOperationError,
    RuntimeUnavailableError,
)
from agent.node.runtime.base import ContainerSpec, ContainerState, OutputChannel, PullProgress
from agent.node.runtime.fake import (
    KILL_EXIT_CODE,
    NOT_FOUND_EXIT_CODE,
    SANDBOX_IMAGE_SIZE_BYTES,
    FakeRuntime,
    Script,
)
from agent.types import LABEL_NODE, LABEL_POD_UID

NODE = "n1"
IMAGE = "app:1"
WAIT_S = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock, blockbuster: BlockBuster) -> Iterator[FakeRuntime]:
    runtime = FakeRuntime(NODE, clock=clock, process_pid=4242)
    runtime.add_image(IMAGE)
    yield runtime


def spec(name: str = "c1", *, cmd: tuple[str, ...] = ("serve",)) -> ContainerSpec:
    return ContainerSpec(
        name=name, image=IMAGE, labels={LABEL_NODE: NODE, LABEL_POD_UID: "u1"}, cmd=cmd
    )


async def running(fake: FakeRuntime, name: str = "c1") -> str:
    cid = await fake.create_container(spec(name))
    await fake.start_container(cid)
    return cid


async def test_times_come_from_the_injected_clock(fake: FakeRuntime, clock: Clock) -> None:
    cid = await fake.create_container(spec())
    clock.now += 10
    await fake.start_container(cid)
    clock.now += 5
    fake.exit_container(cid, 1)
    record = await fake.inspect_container(cid)
    assert record.created_at == datetime.fromtimestamp(1_800_000_000.0, UTC)
    assert record.started_at == datetime.fromtimestamp(1_800_000_010.0, UTC)
    assert record.finished_at == datetime.fromtimestamp(1_800_000_015.0, UTC)
    assert (record.exit_code, record.oom_killed) == (1, False)


async def test_oom_kill_is_reported_and_emitted(fake: FakeRuntime) -> None:
    events = fake.events()
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)  # the subscription starts with the first read
    cid = await running(fake)
    fake.exit_container(cid, KILL_EXIT_CODE, oom=True)
    seen = [(await asyncio.wait_for(first, WAIT_S)).action]
    seen += [(await asyncio.wait_for(anext(events), WAIT_S)).action for _ in range(3)]
    assert seen == ["create", "start", "oom", "die"]
    record = await fake.inspect_container(cid)
    assert record.oom_killed
    assert record.exit_code == KILL_EXIT_CODE
    with pytest.raises(NotRunningError):
        fake.exit_container(cid, 0)
    await events.aclose()


async def test_faults_fail_the_next_calls_then_clear(fake: FakeRuntime) -> None:
    fake.fail("create_container", RuntimeOperationError("create fails"))
    with pytest.raises(RuntimeOperationError, match="create fails"):
        await fake.create_container(spec())
    cid = await fake.create_container(spec())  # once only
    fake.fail("start_container", RuntimeOperationError("start fails"), times=None)
    for _ in range(3):
        with pytest.raises(RuntimeOperationError, match="start fails"):
            await fake.start_container(cid)
    assert (await fake.inspect_container(cid)).state is ContainerState.CREATED
    fake.clear_faults()
    await fake.start_container(cid)
    assert fake.calls["start_container"] == 4
    for unknown in ("launch_rocket", "close", "calls"):
        with pytest.raises(ValueError, match="no operation"):
            fake.fail(unknown, RuntimeOperationError("x"))
    fake.fail("ensure_image", ImageUnavailableError("composite operations fail too"))
    with pytest.raises(ImageUnavailableError, match="composite"):
        await fake.ensure_image(IMAGE, "IfNotPresent")


async def test_a_dead_engine_refuses_everything_and_ends_event_streams(
    fake: FakeRuntime,
) -> None:
    cid = await running(fake)
    events = fake.events()
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)
    fake.set_down()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, WAIT_S)
    with pytest.raises(RuntimeUnavailableError):
        await fake.list_containers()
    with pytest.raises(RuntimeUnavailableError):
        await anext(aiter(fake.events()))
    fake.set_down(False)
    assert (await fake.inspect_container(cid)).state is ContainerState.RUNNING


async def test_close_ends_event_streams(fake: FakeRuntime) -> None:
    events = fake.events()
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)
    await fake.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, WAIT_S)


async def test_pull_from_the_fake_registry(fake: FakeRuntime) -> None:
    fake.publish_image("docker.io/library/web", size_bytes=1234)
    reports: list[PullProgress] = []
    pulled = await fake.pull_image("web", progress=reports.append)
    assert pulled.repo_tags == ("web:latest",)
    assert pulled.size_bytes == 1234
    (digest,) = pulled.repo_digests
    assert digest.startswith("web@sha256:")
    assert any(r.layer_id and r.current_bytes == r.total_bytes == 1234 for r in reports)
    resolved = await fake.resolve_image("web:latest")
    assert (resolved.image_id, resolved.repo_digest) == (pulled.id, digest)
    again = await fake.ensure_image("web:latest", "Always")
    assert again.id == pulled.id
    assert fake.calls["pull_image"] == 2
    usage = await fake.image_fs_usage()
    assert usage["usedBytes"] >= 1234


async def test_pull_faults_are_image_unavailable(fake: FakeRuntime) -> None:
    fake.publish_image("web:1")
    fake.fail("pull_image", RuntimeOperationError("registry says no"))
    with pytest.raises(ImageUnavailableError, match="registry says no"):
        await fake.ensure_image("web:1", "IfNotPresent")
    await fake.ensure_image("web:1", "IfNotPresent")


async def test_sandbox_image_is_built_when_it_cannot_be_pulled(fake: FakeRuntime) -> None:
    built = await fake.ensure_sandbox_image("pause:0.1")
    assert built.repo_tags == ("pause:0.1",)
    assert built.size_bytes == SANDBOX_IMAGE_SIZE_BYTES
    assert (await fake.ensure_sandbox_image("pause:0.1")).id == built.id


async def test_an_unscripted_exec_is_not_found(fake: FakeRuntime) -> None:
    cid = await running(fake)
    session = await fake.exec_start(cid, ["nope", "--x"], stdin=False, tty=False)
    channel, data = await session.read()
    assert channel is OutputChannel.STDERR
    assert b"'nope'" in data
    assert await session.exit_code(WAIT_S) == NOT_FOUND_EXIT_CODE


async def test_exec_sessions_record_stdin_and_resizes(fake: FakeRuntime) -> None:
    fake.script_command(["sh"], Script(stdout=b"$ ", echo_stdin=True, exit_code=2))
    cid = await running(fake)
    session = await fake.exec_start(cid, ["sh"], stdin=True, tty=True)
    await session.resize(80, 24)
    await session.write(b"ls\n")
    await session.close_stdin()
    with pytest.raises(RuntimeOperationError, match="stdin is closed"):
        await session.write(b"late")
    assert await session.exit_code(WAIT_S) == 2
    (recorded,) = fake.sessions_of(cid)
    assert recorded.finished
    assert (bytes(recorded.command_stdin), recorded.resizes) == (b"ls\n", [(80, 24)])


async def test_exec_exit_code_waits_at_most_its_time(fake: FakeRuntime) -> None:
    fake.script_command(["cat"], Script(echo_stdin=True))
    cid = await running(fake)
    session = await fake.exec_start(cid, ["cat"], stdin=True, tty=False)
    assert await session.exit_code(0.001) is None


async def test_followed_logs_see_new_output(fake: FakeRuntime, clock: Clock) -> None:
    cid = await running(fake)
    fake.write_log(cid, b"first\n")
    logs = fake.logs(cid, follow=True, tail=None, timestamps=True, since_s=None)
    assert await anext(logs) == b"2027-01-15T08:00:00.000000000Z first\n"
    clock.now += 0.5
    fake.write_log(cid, b"second\nthird\n")
    assert await asyncio.wait_for(anext(logs), WAIT_S) == (
        b"2027-01-15T08:00:00.500000000Z second\n2027-01-15T08:00:00.500000000Z third\n"
    )
    await fake.remove_container(cid)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(logs), WAIT_S)


async def test_what_a_test_can_read_back(fake: FakeRuntime) -> None:
    cid = await running(fake)
    assert fake.spec_of(cid) == spec()
    assert await fake.container_pid(cid) == 4242
    assert (await fake.inspect_container("c1")).id == cid  # by name, as Docker
    assert (await fake.inspect_container(cid[:12])).id == cid  # by short id
    sandbox = await fake.inspect_container(cid)
    assert sandbox.ip_address.startswith("10.88.0.")
