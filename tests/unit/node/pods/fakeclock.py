"""A clock the test drives: wall time, monotonic time and the worker's timers.

It implements ``agent.aio.clock.Clock`` and the worker's ``Timers``; ``advance()`` moves both
times and fires the timers that fell due, in order, so a test decides when a back-off ends.
tests/unit/node/pods/test_clock_contract.py runs the same tests against it and the real ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

WALL_START_S = 1_800_000_000.0  # 2027-01-15, far from the epoch so timestamps read as dates


@dataclass(slots=True)
class FakeTimer:
    due_s: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(slots=True)
class FakeClock:
    wall_s: float = WALL_START_S
    mono_s: float = 0.0
    _queue: list[tuple[float, int, FakeTimer]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def time(self) -> float:
        return self.wall_s

    def monotonic(self) -> float:
        return self.mono_s

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.mono_s + delay_s, callback)
        heapq.heappush(self._queue, (timer.due_s, next(self._order), timer))
        return timer

    def pending_s(self) -> list[float]:
        """Seconds until each timer that is still armed, soonest first."""
        return sorted(t.due_s - self.mono_s for _, _, t in self._queue if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: both clocks move, due timers fire in order."""
        target = self.mono_s + seconds
        while self._queue and self._queue[0][0] <= target:
            due, _, timer = heapq.heappop(self._queue)
            self.wall_s += due - self.mono_s
            self.mono_s = due
            if not timer.cancelled:
                timer.callback()
        self.wall_s += target - self.mono_s
        self.mono_s = target
