"""The preStart preconditions of one container, as a state machine the pod worker steps.

The hooks are checked in order; each is checked every ``period_s`` until one check passes, then
the next one starts. A hook has failed after ``failure_threshold`` failed checks in a row (when
set) or once ``deadline_s`` seconds have passed since its first check (a last check is made at
the deadline itself), whichever comes first. Pure: the caller gives the time (monotonic
seconds) and the check; :class:`PreconditionRun` decides and says when to come back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from agent.node.handlers import HandlerResult, bounded_text
from agent.types import (
    ExecAction,
    HTTPGetAction,
    PreStartAction,
    PreStartHook,
    TCPSocketAction,
    WaitForAction,
)

Check = Callable[[int, PreStartHook], Awaitable[HandlerResult]]


class Verdict(StrEnum):
    PENDING = "Pending"
    PASSED = "Passed"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class PreconditionStatus:
    """Where one container's preconditions stand: ``hook`` is the index of the one waited on
    (or that failed); ``next_check_in_s`` is set while pending."""

    verdict: Verdict
    hook: int
    message: str = ""
    next_check_in_s: float | None = None


def describe(action: PreStartAction) -> str:
    """A hook's handler in a few words, for messages: ``tcpSocket 10.0.0.5:5432``."""
    if isinstance(action, TCPSocketAction):
        return f"tcpSocket {action.host or '<pod IP>'}:{action.port}"
    if isinstance(action, HTTPGetAction):
        return f"httpGet {action.scheme.lower()}://{action.host or '<pod IP>'}:{action.port}" + (
            action.path
        )
    if isinstance(action, ExecAction):
        return "exec " + bounded_text(" ".join(action.command), 60)
    assert isinstance(action, WaitForAction)
    where = f"{action.namespace}/{action.pod}" if action.namespace else action.pod
    return f"waitFor pod {where} {action.condition.value}"


def hook_name(index: int, hook: PreStartHook) -> str:
    return f"preStart[{index}] ({describe(hook.action)})"


class PreconditionRun:
    """One pass over a container's preconditions, from the first hook (mutable, owned by one
    pod worker). A failed run is over: a retry after back-off is a new run."""

    def __init__(self, hooks: tuple[PreStartHook, ...], now_s: float) -> None:
        self.hooks = hooks
        self.index = 0
        self.hook_started_s = now_s
        self.failures = 0
        self.checks = 0
        self.next_check_s = now_s
        self.last_error = ""
        self.verdict = Verdict.PENDING if hooks else Verdict.PASSED

    def _deadline_s(self) -> float:
        return self.hook_started_s + self.hooks[self.index].deadline_s

    async def step(self, now: Callable[[], float], check: Check) -> PreconditionStatus:
        """Check what is due (none before ``next_check_s``) and say where the run stands."""
        while self.verdict is Verdict.PENDING:
            hook = self.hooks[self.index]
            at = now()
            if at < self.next_check_s:
                return self._pending(self.next_check_s - at)
            result = await check(self.index, hook)
            self.checks += 1
            at = now()
            if result.ok:
                self.index += 1
                self.failures = 0
                self.last_error = ""
                self.hook_started_s = self.next_check_s = at
                if self.index == len(self.hooks):
                    self.verdict = Verdict.PASSED
                continue
            self.failures += 1
            self.last_error = result.message
            limit = hook.failure_threshold
            if (limit is not None and self.failures >= limit) or at >= self._deadline_s():
                self.verdict = Verdict.FAILED
                why = (
                    f"{self.failures} failed checks in a row"
                    if limit is not None and self.failures >= limit
                    else f"not passed within its deadline of {hook.deadline_s}s"
                )
                return PreconditionStatus(
                    Verdict.FAILED,
                    self.index,
                    bounded_text(f"{hook_name(self.index, hook)} {why}: {self.last_error}"),
                )
            # A last check at the deadline itself, not a period past it.
            self.next_check_s = min(at + hook.period_s, self._deadline_s())
            return self._pending(self.next_check_s - at)
        if self.verdict is Verdict.PASSED:
            return PreconditionStatus(Verdict.PASSED, len(self.hooks))
        return PreconditionStatus(Verdict.FAILED, self.index, self.last_error)

    def _pending(self, wait_s: float) -> PreconditionStatus:
        hook = self.hooks[self.index]
        message = f"waiting for {hook_name(self.index, hook)}"
        if self.last_error:
            message += f": {self.last_error}"
        return PreconditionStatus(
            Verdict.PENDING, self.index, bounded_text(message), next_check_in_s=wait_s
        )
