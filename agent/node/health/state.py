"""The node's health as typed state: the runtime's, the checkpoint's, the master link's, the
event loop's heartbeat and the first reconcile. ``/healthz`` and the node conditions sent to
the master are computed from it; the link counts only by its condition (a refusal is the node's
problem, an unreachable master is not: the node coasts)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.aio.logs import kv

log = logging.getLogger(__name__)

LOOP_STALL_S = 10.0  # a heartbeat older than this means the event loop is stuck
STARTING_PROBLEM = "starting: first reconcile of every pod not finished"


class LinkView(Protocol):
    """What health needs of the master link's state (``masterlink.state.LinkStatus``): whether
    the master refused this node (a problem of the node's) and the message saying why. A
    protocol, so health stays below the master link in the layers."""

    @property
    def refused(self) -> bool: ...

    @property
    def message(self) -> str: ...


@dataclass(slots=True)
class RuntimeHealth:
    """Whether the container runtime answered the last call that needed it, and why not."""

    up: bool = False
    error: str = "runtime: not contacted yet"

    def ok(self) -> bool:
        """The runtime answered; True when it was down until now (pods need a wake-up)."""
        if self.up:
            return False
        self.up = True
        self.error = ""
        return True

    def down(self, exc: Exception) -> None:
        message = f"runtime: {exc}"
        if self.up or self.error != message:
            log.warning("container runtime unavailable", extra=kv(error=str(exc)))
        self.up = False
        self.error = message


class NodeHealth:
    def __init__(
        self,
        *,
        runtime: RuntimeHealth,
        checkpoint_error: Callable[[], str],
        runtime_errors: Callable[[], int] = lambda: 0,
        link: LinkView | None = None,
        clock: Callable[[], float] = time.monotonic,
        extra_conditions: Callable[[], list[dict[str, str]]] = list,
    ) -> None:
        self.runtime = runtime
        self.link = link
        self.ready = False
        self.last_heartbeat = 0.0
        self._checkpoint_error = checkpoint_error
        self._runtime_errors = runtime_errors
        self._clock = clock
        self._extra_conditions = extra_conditions  # DiskPressure (image GC's)

    @property
    def runtime_up(self) -> bool:
        return self.runtime.up

    @property
    def runtime_errors(self) -> int:
        return self._runtime_errors()

    def beat(self) -> None:
        self.last_heartbeat = self._clock()

    def problems(self) -> list[str]:
        """Why the node is unhealthy, one line each; empty when healthy."""
        found = []
        if self.link is not None and self.link.refused:
            found.append(self.link.message)
        if not self.runtime.up:
            found.append(self.runtime.error)
        if not self.ready:
            found.append(STARTING_PROBLEM)
        if self.last_heartbeat and self._clock() - self.last_heartbeat > LOOP_STALL_S:
            found.append("event loop: heartbeat stalled")
        if checkpoint := self._checkpoint_error():
            found.append(f"checkpoint: {checkpoint}")
        return found

    def conditions(self) -> list[dict[str, str]]:
        """Node conditions reported to the master beside its lease-based Ready (kubelet's
        node conditions: one fact each, a reason a machine can match, a message a human reads)."""
        runtime = {"type": "RuntimeReady", "status": "True", "reason": "RuntimeUp", "message": ""}
        if not self.runtime.up:
            runtime.update(status="False", reason="RuntimeUnavailable", message=self.runtime.error)
        checkpoint = {
            "type": "CheckpointWritable",
            "status": "True",
            "reason": "CheckpointSaved",
            "message": "",
        }
        if error := self._checkpoint_error():
            checkpoint.update(status="False", reason="CheckpointWriteFailed", message=error)
        return [runtime, checkpoint, *self._extra_conditions()]
