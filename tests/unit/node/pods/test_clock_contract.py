"""One contract for the clock and timers the pod worker uses, run against the system clock
with the event loop's timers and against the FakeClock the worker tests drive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import pytest

from agent.aio.clock import Clock, SystemClock
from agent.node.pods.worker import LoopTimers, Timers
from tests.unit.node.pods.fakeclock import FakeClock

DEADLINE_S = 5.0  # real clock: how long a due timer may take to fire before the test fails
SHORT_S = 0.02


class Passing(Protocol):
    async def __call__(self, seconds: float, until: asyncio.Event) -> None: ...


@dataclass
class Harness:
    clock: Clock
    timers: Timers
    let_pass: Passing  # let ``seconds`` pass, returning once ``until`` is set


async def _real_pass(seconds: float, until: asyncio.Event) -> None:
    await asyncio.wait_for(until.wait(), timeout=seconds + DEADLINE_S)


@pytest.fixture(params=["fake", "system"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "fake":
        fake = FakeClock()

        async def fake_pass(seconds: float, until: asyncio.Event) -> None:
            fake.advance(seconds)
            await asyncio.wait_for(until.wait(), timeout=DEADLINE_S)

        yield Harness(fake, fake, fake_pass)
    else:
        yield Harness(SystemClock(), LoopTimers(), _real_pass)


async def test_timer_fires_once_after_its_delay(harness: Harness) -> None:
    fired: list[float] = []
    done = asyncio.Event()
    begin = harness.clock.monotonic()
    wall_begin = harness.clock.time()

    def callback() -> None:
        fired.append(harness.clock.monotonic())
        done.set()

    harness.timers.call_later(SHORT_S, callback)
    assert fired == []  # never synchronously
    await harness.let_pass(SHORT_S, done)
    assert len(fired) == 1
    assert fired[0] - begin >= SHORT_S * 0.9  # the loop may round its timers a little
    assert harness.clock.time() >= wall_begin + SHORT_S * 0.9


async def test_cancelled_timer_never_fires(harness: Harness) -> None:
    calls: list[str] = []
    later = asyncio.Event()
    timer = harness.timers.call_later(SHORT_S, lambda: calls.append("cancelled"))
    harness.timers.call_later(SHORT_S * 2, later.set)
    timer.cancel()
    await harness.let_pass(SHORT_S * 2, later)
    assert calls == []


async def test_timers_fire_in_due_order(harness: Harness) -> None:
    order: list[int] = []
    last = asyncio.Event()
    harness.timers.call_later(SHORT_S * 2, lambda: (order.append(2), last.set()))
    harness.timers.call_later(SHORT_S, lambda: order.append(1))
    await harness.let_pass(SHORT_S * 2, last)
    assert order == [1, 2]


def test_fake_clock_reports_what_is_armed() -> None:
    clock = FakeClock()
    first = clock.call_later(10.0, lambda: None)
    clock.call_later(4.0, lambda: None)
    first.cancel()
    assert clock.pending_s() == [4.0]
    clock.advance(1.5)
    assert clock.pending_s() == [2.5]
    assert clock.monotonic() == 1.5
