"""Time as a collaborator: the ``Clock`` protocol and the system clock.

State machines that judge time (restart back-off, leases, long-poll deadlines) take a ``Clock``
in their constructor so tests drive time instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch: for deadlines that must survive a restart (the
        pod worker's back-off) and for timestamps shown to people."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back: for durations within one
        process (leases, long-poll deadlines)."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
