"""Guarded tasks, eternal tasks, task scopes under the supervisor, and the lifecycle's order
and per-step time-outs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.aio.tasks import Lifecycle, Supervisor, guarded, run_all, start_guarded
from agent.errors import TaskEndedError
from tests.unit.node.asyncwait import until


async def test_a_guarded_task_returns_its_result_and_logs_its_death(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fine() -> int:
        return 3

    async def dies() -> None:
        raise ValueError("boom")

    assert await guarded("fine", fine) == 3
    with pytest.raises(ValueError, match="boom"):
        await guarded("dies", dies)
    assert "task died unexpectedly" in caplog.text


async def test_an_eternal_task_that_returns_is_an_error_naming_it() -> None:
    async def loop_that_ends() -> None:
        return None

    with pytest.raises(TaskEndedError, match="'relist'"):
        await guarded("relist", loop_that_ends, eternal=True)
    with pytest.raises(ExceptionGroup) as failed:
        async with asyncio.TaskGroup() as group:
            start_guarded(group, "heartbeat", loop_that_ends, eternal=True)
    assert failed.group_contains(TaskEndedError, match="'heartbeat'")


async def test_a_scope_runs_its_tasks_until_stopped() -> None:
    ran = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever() -> None:
        ran.set()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            cancelled.set()

    async with Supervisor() as supervisor:
        scope = supervisor.scope("pods")
        with pytest.raises(RuntimeError, match="not running"):
            scope.spawn("early", forever)
        await scope.start()
        assert scope.running
        with pytest.raises(RuntimeError, match="started twice"):
            await scope.start()
        scope.spawn("worker", forever, eternal=True)
        await ran.wait()
        await scope.stop()
        assert cancelled.is_set() and not scope.running
        await scope.stop()  # idempotent
    await supervisor.scope("never-started").stop()


async def test_a_failure_in_a_scope_fails_the_supervisor() -> None:
    async def dies() -> None:
        raise ValueError("boom")

    with pytest.raises(ExceptionGroup) as failed:
        async with Supervisor() as supervisor:
            scope = supervisor.scope("x")
            await scope.start()
            scope.spawn("dies", dies)
            await asyncio.get_running_loop().create_future()  # cancelled by the failure
    assert failed.group_contains(ValueError, match="boom")
    with pytest.raises(RuntimeError, match="outside"):
        supervisor.start_guarded("late", dies)


class Step:
    def __init__(self, name: str, log: list[str], *, stop_s: float = 0.0, fail: bool = False):
        self.name = name
        self._log = log
        self._stop_s = stop_s
        self._fail = fail
        self.gate: asyncio.Event | None = None

    async def start(self) -> None:
        self._log.append(f"start {self.name}")
        if self.gate is not None:
            await self.gate.wait()

    async def stop(self) -> None:
        self._log.append(f"stop {self.name}")
        if self._fail:
            raise RuntimeError("stop failed")
        if self._stop_s:
            await asyncio.get_running_loop().create_future()


async def test_lifecycle_stops_in_reverse_and_bounds_each_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    steps = [
        Step("a", log),
        Step("b", log, fail=True),
        Step("c", log, stop_s=1.0),
        Step("d", log),
    ]
    lifecycle = Lifecycle(steps, step_timeout_s=0.05)
    await lifecycle.start()
    assert lifecycle.started == ("a", "b", "c", "d")
    with caplog.at_level(logging.ERROR):
        overran = await lifecycle.stop()
    assert overran == ["c"]
    assert log == [
        "start a",
        "start b",
        "start c",
        "start d",
        "stop d",
        "stop c",
        "stop b",
        "stop a",
    ]
    assert "did not stop in time" in caplog.text and "failed to stop" in caplog.text
    assert lifecycle.started == ()


async def test_a_step_interrupted_while_starting_is_stopped_too() -> None:
    log: list[str] = []
    steps = [Step("a", log), Step("b", log), Step("c", log)]
    steps[1].gate = asyncio.Event()
    lifecycle = Lifecycle(steps, step_timeout_s=1.0)
    starting = asyncio.create_task(lifecycle.start())
    await until(lambda: "start b" in log, "b starting")
    starting.cancel()
    await asyncio.wait({starting})
    await lifecycle.stop()
    assert log == ["start a", "start b", "stop b", "stop a"]


class ScopedStep:
    """A manager with one task in its own scope that logs its cancellation; its scope may also
    hold a task that fails once ``fail`` is set."""

    def __init__(self, name: str, supervisor: Supervisor, log: list[str]) -> None:
        self.name = name
        self._tasks = supervisor.scope(name)
        self._log = log
        self.running = asyncio.Event()
        self.fail = asyncio.Event()

    async def start(self) -> None:
        await self._tasks.start()
        self._tasks.spawn(f"{self.name}-loop", self._loop, eternal=True)
        self._tasks.spawn(f"{self.name}-fragile", self._fragile)

    async def _loop(self) -> None:
        self.running.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self._log.append(f"{self.name} cancelled")
            raise

    async def _fragile(self) -> None:
        await self.fail.wait()
        raise ValueError(f"{self.name} broke")

    async def stop(self) -> None:
        self._log.append(f"stop {self.name}")
        await self._tasks.stop()


async def run_like_a_daemon(
    supervisor: Supervisor, lifecycle: Lifecycle, stop: asyncio.Event
) -> None:
    """What both daemons' ``run()`` do with their supervisor and lifecycle."""
    async with supervisor:
        starting = supervisor.start_guarded("start", lifecycle.start)
        try:
            await stop.wait()
        finally:
            starting.cancel()
            await asyncio.wait({starting})
            await lifecycle.stop()


def _holds(error: BaseException | None, kind: type[Exception], text: str) -> bool:
    """``error`` is an ExceptionGroup holding a ``kind`` whose message has ``text``."""
    return isinstance(error, ExceptionGroup) and (
        error.subgroup(lambda e: isinstance(e, kind) and text in str(e)) is not None
    )


async def _stop_order(*, fail_in: str | None) -> tuple[list[str], BaseException | None]:
    log: list[str] = []
    supervisor = Supervisor()
    steps = [ScopedStep(name, supervisor, log) for name in ("a", "b", "c")]
    lifecycle = Lifecycle(steps, step_timeout_s=5.0)
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_like_a_daemon(supervisor, lifecycle, stop))
    for step in steps:
        await asyncio.wait_for(step.running.wait(), 5.0)
    if fail_in is None:
        stop.set()
    else:
        next(s for s in steps if s.name == fail_in).fail.set()
    await asyncio.wait({daemon})
    return log, daemon.exception()


async def test_a_failure_stops_in_the_same_order_as_a_requested_stop() -> None:
    requested, error = await _stop_order(fail_in=None)
    assert error is None
    assert requested == ["stop c", "c cancelled", "stop b", "b cancelled", "stop a", "a cancelled"]
    failed, error = await _stop_order(fail_in="b")
    assert failed == requested
    assert _holds(error, ValueError, "b broke")


async def test_a_failure_during_the_stop_does_not_cut_it_short() -> None:
    log: list[str] = []
    supervisor = Supervisor()
    a, b = ScopedStep("a", supervisor, log), ScopedStep("b", supervisor, log)

    class BreaksAtStop:
        name = "breaker"

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            b.fail.set()  # b's fragile task fails while the stop is under way
            await until(lambda: supervisor.failures != (), "the failure recorded")
            log.append("stop breaker")

    lifecycle = Lifecycle([a, b, BreaksAtStop()], step_timeout_s=5.0)
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_like_a_daemon(supervisor, lifecycle, stop))
    await asyncio.wait_for(b.running.wait(), 5.0)
    stop.set()
    await asyncio.wait({daemon})
    assert log == ["stop breaker", "stop b", "b cancelled", "stop a", "a cancelled"]
    error = daemon.exception()
    assert _holds(error, ValueError, "b broke")


async def test_a_failing_start_stops_the_started_managers_in_order() -> None:
    log: list[str] = []
    supervisor = Supervisor()
    a = ScopedStep("a", supervisor, log)

    class BrokenStart:
        name = "broken"

        async def start(self) -> None:
            raise ValueError("cannot start")

        async def stop(self) -> None:
            log.append("stop broken")

    lifecycle = Lifecycle([a, BrokenStart()], step_timeout_s=5.0)
    with pytest.raises(ExceptionGroup) as failed:
        await run_like_a_daemon(supervisor, lifecycle, asyncio.Event())
    assert failed.group_contains(ValueError, match="cannot start")
    assert log == ["stop broken", "stop a", "a cancelled"]


async def test_an_outside_cancellation_still_cancels_a_failing_daemon() -> None:
    log: list[str] = []
    supervisor = Supervisor()
    a = ScopedStep("a", supervisor, log)

    class Stuck:
        name = "stuck"

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            log.append("stop stuck")
            await asyncio.get_running_loop().create_future()

    lifecycle = Lifecycle([a, Stuck()], step_timeout_s=60.0)
    daemon = asyncio.create_task(run_like_a_daemon(supervisor, lifecycle, asyncio.Event()))
    await asyncio.wait_for(a.running.wait(), 5.0)
    a.fail.set()
    await until(lambda: "stop stuck" in log, "the orderly stop under way")
    daemon.cancel()
    await asyncio.wait({daemon})
    assert daemon.cancelled()
    assert log == ["stop stuck", "a cancelled"]


async def test_run_all_waits_for_every_task_and_raises_the_first_error_itself() -> None:
    ended: list[str] = []

    async def fails() -> None:
        await asyncio.sleep(0)
        raise OSError("gone")

    async def waits() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await asyncio.sleep(0)  # its own clean-up, awaited before run_all returns
            ended.append("waits")

    with pytest.raises(OSError, match="gone"):
        await run_all(fails(), waits())
    assert ended == ["waits"]

    async def fine() -> None:
        ended.append("fine")

    await run_all(fine(), fine())
    assert ended == ["waits", "fine", "fine"]
