"""Back-off schedules (pure): crash-loop back-off for container restarts, and the reconnect
back-off to the master.

Crash-loop, kubelet's schedule: the first restart waits ``initial``, each further crash
doubles the wait up to ``max``; a container that ran cleanly for at least ``reset`` seconds
starts over at ``initial``. State is a plain value so it can be checkpointed and restored
across agent restarts.

Reconnect: full jitter over a ceiling that grows with the *age of the outage*, not with the
attempt count: each wait is uniform in ``[0, min(cap, max(initial, time since the link was
lost))]``. Agents that lost the master at the same moment share the same ceiling at every
moment, so when it comes back their reconnects spread evenly over the window. Doubling per
attempt (the textbook scheme, tried first) leaves a fleet at 4, 8 and 16 s ceilings at once
after a 10 s outage, and its reconnect peak was ~6x the average (bench/reconnect.py). The
attempt rate still decays like 1/t, so a long outage costs the master only a few attempts per
agent and cap.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_s: float = 10.0
    max_s: float = 300.0
    reset_s: float = 600.0

    def next_delay(self, previous_delay_s: float | None, ran_for_s: float) -> float:
        """The wait before restarting a container that just exited after ``ran_for_s``."""
        if previous_delay_s is None or ran_for_s >= self.reset_s:
            return min(self.initial_s, self.max_s)
        return min(max(previous_delay_s * 2, self.initial_s), self.max_s)


@dataclass(frozen=True, slots=True)
class RestartState:
    """Back-off bookkeeping for one container of one pod.

    ``handled_attempt`` is the attempt whose exit the delay was computed for, so the same exit
    observed twice (events and relist) is not counted twice.
    """

    delay_s: float
    not_before: float
    handled_attempt: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "delay_s": self.delay_s,
            "not_before": self.not_before,
            "handled_attempt": self.handled_attempt,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> RestartState:
        delay = data.get("delay_s")
        not_before = data.get("not_before")
        handled = data.get("handled_attempt")
        if not isinstance(delay, (int, float)) or not isinstance(not_before, (int, float)):
            raise ValueError("restart state needs numeric delay_s and not_before")
        if not isinstance(handled, int):
            raise ValueError("restart state needs an integer handled_attempt")
        return cls(delay_s=float(delay), not_before=float(not_before), handled_attempt=handled)


@dataclass(slots=True)
class ReconnectBackoff:
    """Full jitter under an outage-age ceiling; ``reset()`` once the link works again."""

    initial_s: float = 0.5
    cap_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    _lost_at: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.cap_s:
            raise ValueError("reconnect back-off needs 0 < initial_s <= cap_s")

    @property
    def ceiling_s(self) -> float:
        """The upper bound of the next wait."""
        if self._lost_at is None:
            return self.initial_s
        return min(self.cap_s, max(self.initial_s, self.clock() - self._lost_at))

    def next_delay(self) -> float:
        """The wait before the next attempt; the first call after a reset starts the outage."""
        if self._lost_at is None:
            self._lost_at = self.clock()
        return self.rng.uniform(0.0, self.ceiling_s)

    def reset(self) -> None:
        self._lost_at = None
