"""Crash points for fault-injection tests: ``NODE_AGENT_CRASH_AT=point[@n]`` makes the agent
``kill -9`` itself the n-th time (default: the first) execution passes the named point.

The points sit between the steps of creating, replacing and deleting a pod's containers and of
writing the checkpoint, where a real crash would leave half-done work behind; the system tests
crash the agent at random points and check that the restarted agent converges on exactly the
desired containers. Unset (production), ``hit()`` is a dictionary lookup that finds nothing.
A name that is not a known point is refused at start, so a typo cannot make a test vacuous.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Mapping

from agent.aio.logs import kv
from agent.errors import ConfigError

log = logging.getLogger(__name__)

ENV_VAR = "NODE_AGENT_CRASH_AT"

POINTS = frozenset(
    {
        "sandbox-created",  # sandbox container created, not started
        "container-create",  # attempt number booked, container not created yet
        "container-created",  # app container created, not started
        "container-started",  # app container started, nothing recorded yet
        "containers-stopped",  # replace/delete: containers stopped, not removed
        "containers-removed",  # replace/delete: app containers removed, sandbox not yet
        "pod-torn-down",  # every container of a deleted pod removed, volumes not yet
        "source-applied",  # a source's new pod set accepted, checkpoint not written
        "checkpoint-tmp-written",  # new checkpoint in its temporary file, not renamed
        "checkpoint-saved",  # checkpoint renamed into place
    }
)


class CrashPoints:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._point = ""
        self._remaining = 0
        self._lock = threading.Lock()  # the checkpoint points are passed in worker threads
        spec = environ.get(ENV_VAR, "").strip()
        if not spec:
            return
        point, _, count = spec.partition("@")
        if point not in POINTS:
            known = ", ".join(sorted(POINTS))
            raise ConfigError(f"${ENV_VAR}: unknown crash point {point!r} (known: {known})")
        try:
            self._remaining = int(count) if count else 1
        except ValueError:
            raise ConfigError(f"${ENV_VAR}: {count!r} after '@' is not a count") from None
        if self._remaining < 1:
            raise ConfigError(f"${ENV_VAR}: the count after '@' must be >= 1")
        self._point = point

    @property
    def armed(self) -> str:
        return self._point

    def hit(self, point: str) -> None:
        if point != self._point:
            return
        with self._lock:
            self._remaining -= 1
            if self._remaining > 0:
                return
        # Nothing is written first: the log pipeline is a queue SIGKILL cuts anyway, and the
        # test that armed the point knows which one it was.
        os.kill(os.getpid(), signal.SIGKILL)


_crash_points = CrashPoints({})


def arm_from_env(environ: Mapping[str, str] | None = None) -> str:
    """Read ``$NODE_AGENT_CRASH_AT`` once at start; returns the armed point ('' when none)."""
    global _crash_points  # noqa: PLW0603 - one process-wide switch, set once before the loop
    _crash_points = CrashPoints(os.environ if environ is None else environ)
    return _crash_points.armed


def hit(point: str) -> None:
    _crash_points.hit(point)


# -- hold points ---------------------------------------------------------------------------------
# The same idea for races: ``NODE_AGENT_HOLD_AT=point`` makes the agent stop (asynchronously: the
# rest of the agent goes on) the first time it reaches the named point, log ``held at hold
# point``, and go on when it receives SIGUSR2. A test holds image GC between its plan and its
# deletions this way and admits a pod meanwhile.

HOLD_ENV_VAR = "NODE_AGENT_HOLD_AT"
HOLD_POINTS = frozenset(
    {
        "imagegc-before-delete",  # image GC planned its deletions, none made yet
    }
)
_hold_point = ""


def arm_hold_from_env(environ: Mapping[str, str] | None = None) -> str:
    """Read ``$NODE_AGENT_HOLD_AT`` once at start; returns the armed point ('' when none)."""
    global _hold_point  # noqa: PLW0603 - one process-wide switch, set once before the loop
    spec = (os.environ if environ is None else environ).get(HOLD_ENV_VAR, "").strip()
    if spec and spec not in HOLD_POINTS:
        known = ", ".join(sorted(HOLD_POINTS))
        raise ConfigError(f"${HOLD_ENV_VAR}: unknown hold point {spec!r} (known: {known})")
    _hold_point = spec
    return spec


async def hold(point: str) -> None:
    """Wait at ``point`` for SIGUSR2 if it is the armed hold point (once); else return."""
    global _hold_point  # noqa: PLW0603 - disarmed after its one hold
    if point != _hold_point:
        return
    _hold_point = ""
    loop = asyncio.get_running_loop()
    released = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR2, released.set)
    log.warning("held at hold point; SIGUSR2 releases it", extra=kv(point=point))
    try:
        await released.wait()
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
    log.warning("released from hold point", extra=kv(point=point))
