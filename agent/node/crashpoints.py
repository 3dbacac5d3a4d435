"""Crash points for fault-injection tests: ``NODE_AGENT_CRASH_AT=point[@n]`` makes the agent
``kill -9`` itself the n-th time (default: the first) execution passes the named point.

The points sit between the steps of creating, replacing and deleting a pod's containers and of
writing the checkpoint, where a real crash would leave half-done work behind; the system tests
crash the agent at random points and check that the restarted agent converges on exactly the
desired containers. Unset (production), ``hit()`` is a dictionary lookup that finds nothing.
A name that is not a known point is refused at start, so a typo cannot make a test vacuous.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping

from agent.errors import ConfigError

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
