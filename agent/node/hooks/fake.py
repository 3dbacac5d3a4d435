"""``FakeHooks``: the :class:`~agent.node.hooks.runner.LifecycleHooks` protocol with scripted
answers, for unit tests of the pod worker.

It keeps the real runner's (:class:`~agent.node.hooks.runner.Hooks`) semantics — the same
contract suite (``tests/contracts/hooks.py``) runs against both — without a runtime or a
network: what a precondition check or a postStart/preStop handler answers is set by the test.

* ``answer_check(index, result)``: what ``lifecycle.preStart[index]`` answers from now on (of
  every container, or of the one named); a check nobody scripted fails. :data:`HANG`: the check
  does not answer, and ends failed ("timed out") after the hook's ``timeoutSeconds``;
* ``answer_handler(result)``: what an exec, httpGet or tcpSocket handler answers (default:
  passes); :data:`HANG`: it ends failed after the handler's bound (never, without one);
* a ``sleep`` handler sleeps, cut short (failed) at the bound, as the real one;
* time is the ``sleep`` given (a test's fake clock: tests/unit/node/pods/fakeclock.py);
* what happened: ``checks`` (container name, hook index) and ``runs`` (container id, action,
  bound) in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from agent.node.handlers import PASSED, HandlerResult, Sleep
from agent.node.hooks.preconditions import describe
from agent.node.hooks.runner import HookTarget
from agent.types import LifecycleAction, PreStartHook, SleepAction


@dataclass(frozen=True, slots=True)
class Hang:
    """An answer that never comes: the caller's bound ends the wait."""


HANG: Final = Hang()
Answer = HandlerResult | Hang
NOT_SCRIPTED = "precondition not scripted"


class FakeHooks:
    """See the module docstring."""

    def __init__(self, *, sleep: Sleep = asyncio.sleep) -> None:
        self._sleep = sleep
        self._checks: dict[tuple[str | None, int], Answer] = {}
        self._handlers: dict[str | None, Answer] = {}
        self.checks: list[tuple[str, int]] = []
        self.runs: list[tuple[str, LifecycleAction, float | None]] = []

    # -- test controls -----------------------------------------------------------------------

    def answer_check(self, index: int, answer: Answer, *, container: str | None = None) -> None:
        """``lifecycle.preStart[index]`` answers ``answer`` from now on (``container`` None:
        in every container without an answer of its own)."""
        self._checks[(container, index)] = answer

    def answer_handler(self, answer: Answer, *, container: str | None = None) -> None:
        """Exec, httpGet and tcpSocket postStart/preStop handlers answer ``answer``."""
        self._handlers[container] = answer

    # -- LifecycleHooks ----------------------------------------------------------------------

    async def check(self, target: HookTarget, index: int, hook: PreStartHook) -> HandlerResult:
        name = target.container.name
        self.checks.append((name, index))
        answer = self._checks.get((name, index), self._checks.get((None, index)))
        if answer is None:
            return HandlerResult.failed(NOT_SCRIPTED)
        if isinstance(answer, Hang):
            await self._sleep(hook.timeout_s)
            return HandlerResult.failed(
                f"{describe(hook.action)} timed out after {hook.timeout_s:g}s"
            )
        return answer

    async def run(
        self, target: HookTarget, action: LifecycleAction, timeout_s: float | None
    ) -> HandlerResult:
        self.runs.append((target.container_id, action, timeout_s))
        if isinstance(action, SleepAction):
            if timeout_s is not None and timeout_s < action.seconds:
                await self._sleep(timeout_s)
                return HandlerResult.failed(
                    f"sleep {action.seconds}s cut short after {timeout_s:g}s"
                )
            await self._sleep(action.seconds)
            return PASSED
        name = target.container.name
        answer = self._handlers.get(name, self._handlers.get(None, PASSED))
        if not isinstance(answer, Hang):
            return answer
        if timeout_s is None:
            await asyncio.Event().wait()  # without a bound, a handler that never ends
        else:
            await self._sleep(timeout_s)
        return HandlerResult.failed(f"handler timed out after {timeout_s}s")
