"""The LifecycleHooks contract (agent/node/hooks/runner.py): what the pod worker relies on, the
same tests for every implementation.

A test module runs the suite by subclassing :class:`HooksContract` in a ``Test*`` class with a
``harness`` fixture yielding a :class:`HooksHarness` (tests/unit/node/hooks/
test_hooks_contract.py: ``FakeHooks``, and ``Hooks`` with exec on the FakeRuntime — a helper
container for a precondition, an exec in the container for a handler — and with httpGet to
real loopback servers). Time is a fake clock; the hooks sleep on it.

The contract:

* a precondition check passes when its condition holds and fails with a message otherwise; a
  check that gets no answer fails after the hook's ``timeoutSeconds``, not before;
* stepped by the worker's precondition run (:class:`~agent.node.hooks.preconditions.
  PreconditionRun`), the container's preconditions are pending (a check every period) while the
  check fails, pass within one period of the condition holding, and fail at their deadline (a
  last check at the deadline itself);
* a postStart/preStop handler passes, or fails with a message (a failed postStart is what the
  worker kills the container for); one that gets no answer fails at its bound, not before;
* ``sleep`` sleeps its seconds; with a bound below them (preStop: the grace period) it is cut
  short at the bound and fails — a preStop never takes more than the grace period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from agent.manifest import parse_pod
from agent.node.handlers import HandlerResult
from agent.node.hooks.preconditions import PreconditionRun, Verdict
from agent.node.hooks.runner import HookTarget, LifecycleHooks
from agent.types import LifecycleAction, Pod, PreStartHook, SleepAction

WAIT_S = 10.0  # for a hook the clock has released to return (real I/O on loopback)


class HooksHarness(Protocol):
    """What differs between implementations, for one test. Hooks are of container ``c``."""

    hooks: LifecycleHooks

    def precondition(self, **fields: int) -> dict[str, Any]:
        """The manifest of a preStart hook whose checks the harness controls."""
        ...

    def handler(self) -> dict[str, Any]:
        """The manifest of a postStart/preStop handler (not ``sleep``) the harness controls."""
        ...

    async def answer_check(self, ok: bool | None) -> None:
        """From now on a check passes (True), fails (False) or gets no answer (None)."""
        ...

    async def answer_handler(self, ok: bool | None) -> None:
        """From now on the handler passes, fails, or gets no answer."""
        ...

    async def target(self, pod: Pod) -> HookTarget:
        """The pod's sandbox and container ``c`` running (its spec given, for a helper)."""
        ...

    def now(self) -> float:
        """The fake clock's monotonic seconds."""
        ...

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass and what they woke run up to its next wait."""
        ...


def hooked_pod(pre_start: list[dict[str, Any]] | None = None, **lifecycle: Any) -> Pod:
    spec: dict[str, Any] = dict(lifecycle)
    if pre_start:
        spec["preStart"] = pre_start
    return parse_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "img:1", "lifecycle": spec}]},
        },
        source="api",
        node_name="n1",
    )


def the_hook(pod: Pod) -> PreStartHook:
    return pod.spec.containers[0].lifecycle.pre_start[0]


def post_start(pod: Pod) -> LifecycleAction:
    action = pod.spec.containers[0].lifecycle.post_start
    assert action is not None
    return action


async def timed(
    harness: HooksHarness, work: Awaitable[HandlerResult], bound_s: float
) -> HandlerResult:
    """Run ``work`` with the clock moving in steps: not done a moment before ``bound_s``, done
    at it. Returns its result."""
    task = asyncio.ensure_future(work)
    try:
        await harness.advance(0)
        await harness.advance(bound_s - 0.5)
        assert not task.done(), "returned before its bound"
        await harness.advance(0.5)
        async with asyncio.timeout(WAIT_S):
            return await task
    finally:
        task.cancel()


class HooksContract:
    """The tests; a subclass provides the ``harness`` fixture."""

    async def test_a_check_passes_when_its_condition_holds_and_fails_with_a_message(
        self, harness: HooksHarness
    ) -> None:
        pod = hooked_pod([harness.precondition()])
        target = await harness.target(pod)
        await harness.answer_check(False)
        failed = await harness.hooks.check(target, 0, the_hook(pod))
        assert failed.ok is False and failed.message
        await harness.answer_check(True)
        assert (await harness.hooks.check(target, 0, the_hook(pod))).ok is True

    async def test_a_check_without_an_answer_fails_after_its_timeout(
        self, harness: HooksHarness
    ) -> None:
        pod = hooked_pod([harness.precondition(timeoutSeconds=3)])
        target = await harness.target(pod)
        await harness.answer_check(None)
        result = await timed(harness, harness.hooks.check(target, 0, the_hook(pod)), 3)
        assert result.ok is False and result.message
        await harness.answer_check(True)  # and nothing of it is left to hold the next one
        assert (await harness.hooks.check(target, 0, the_hook(pod))).ok is True

    async def test_preconditions_pend_then_pass_within_one_period(
        self, harness: HooksHarness
    ) -> None:
        pod = hooked_pod([harness.precondition(periodSeconds=2)])
        target = await harness.target(pod)
        hooks = pod.spec.containers[0].lifecycle.pre_start
        await harness.answer_check(False)
        run = PreconditionRun(hooks, harness.now())

        def check(index: int, hook: PreStartHook) -> Awaitable[HandlerResult]:
            return harness.hooks.check(target, index, hook)

        status = await run.step(harness.now, check)
        assert (status.verdict, status.next_check_in_s) == (Verdict.PENDING, 2)
        assert status.message.startswith("waiting for preStart[0] (")
        await harness.advance(1)
        status = await run.step(harness.now, check)  # not due: no check
        assert (status.verdict, run.checks) == (Verdict.PENDING, 1)
        await harness.answer_check(True)  # the service appears
        await harness.advance(1)
        status = await run.step(harness.now, check)
        assert (status.verdict, run.checks) == (Verdict.PASSED, 2)

    async def test_preconditions_fail_at_their_deadline(self, harness: HooksHarness) -> None:
        pod = hooked_pod([harness.precondition(periodSeconds=2, deadlineSeconds=5)])
        target = await harness.target(pod)
        await harness.answer_check(False)
        run = PreconditionRun(pod.spec.containers[0].lifecycle.pre_start, harness.now())

        def check(index: int, hook: PreStartHook) -> Awaitable[HandlerResult]:
            return harness.hooks.check(target, index, hook)

        waits = []
        status = await run.step(harness.now, check)
        while status.verdict is Verdict.PENDING:
            assert status.next_check_in_s is not None
            waits.append(status.next_check_in_s)
            await harness.advance(status.next_check_in_s)
            status = await run.step(harness.now, check)
        assert waits == [2, 2, 1]  # checks at 0, 2, 4 and the last at the deadline, 5
        assert status.verdict is Verdict.FAILED and run.checks == 4
        assert "not passed within its deadline of 5s" in status.message

    async def test_a_handler_passes_or_fails_with_a_message(self, harness: HooksHarness) -> None:
        pod = hooked_pod(postStart=harness.handler())
        target = await harness.target(pod)
        await harness.answer_handler(True)
        assert (await harness.hooks.run(target, post_start(pod), 30.0)).ok is True
        await harness.answer_handler(False)
        failed = await harness.hooks.run(target, post_start(pod), 30.0)
        assert failed.ok is False and failed.message

    async def test_a_handler_without_an_answer_fails_at_its_bound(
        self, harness: HooksHarness
    ) -> None:
        pod = hooked_pod(preStop=harness.handler())
        target = await harness.target(pod)
        await harness.answer_handler(None)
        action = pod.spec.containers[0].lifecycle.pre_stop
        assert action is not None
        result = await timed(harness, harness.hooks.run(target, action, 4.0), 4)
        assert result.ok is False and result.message

    async def test_sleep_sleeps_its_seconds_within_its_bound(self, harness: HooksHarness) -> None:
        target = await harness.target(hooked_pod())
        result = await timed(harness, harness.hooks.run(target, SleepAction(5), 30.0), 5)
        assert result.ok is True
        result = await timed(harness, harness.hooks.run(target, SleepAction(3), None), 3)
        assert result.ok is True

    async def test_a_sleep_longer_than_its_bound_is_cut_short_and_fails(
        self, harness: HooksHarness
    ) -> None:
        """preStop's bound is what is left of the grace period: it never takes more."""
        target = await harness.target(hooked_pod())
        result = await timed(harness, harness.hooks.run(target, SleepAction(100), 2.0), 2)
        assert result.ok is False
        assert result.message == "sleep 100s cut short after 2s"
