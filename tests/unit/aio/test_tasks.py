"""Guarded tasks, eternal tasks, task scopes under the supervisor, and the lifecycle's order
and per-step time-outs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.aio.tasks import Lifecycle, Supervisor, guarded, start_guarded
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
