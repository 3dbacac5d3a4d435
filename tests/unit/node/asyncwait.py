"""Waiting on a condition in async unit tests: poll with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

DEADLINE_S = 30.0  # a bound on a wait that should succeed; generous for a loaded machine


async def until(
    condition: Callable[[], object], what: str, *, deadline_s: float = DEADLINE_S
) -> None:
    """Poll ``condition`` (a cheap, synchronous check) until it is truthy; fail after
    ``deadline_s`` naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    pause_s = 0.002
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.05)
