"""The precondition state machine (agent.node.hooks.preconditions): every transition, with the
time and the checks' answers given by the test."""

from __future__ import annotations

from agent.node.handlers import PASSED, HandlerResult
from agent.node.hooks.preconditions import PreconditionRun, Verdict, describe, hook_name
from agent.types import (
    ExecAction,
    HTTPGetAction,
    PreStartHook,
    TCPSocketAction,
    WaitForAction,
)

TCP = TCPSocketAction(5432, "10.0.0.5")


class Checks:
    """The checks' answers: the hooks whose index is in ``passing`` pass."""

    def __init__(self) -> None:
        self.passing: set[int] = set()
        self.made: list[tuple[int, float]] = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def __call__(self, index: int, hook: PreStartHook) -> HandlerResult:
        self.made.append((index, self.now))
        if index in self.passing:
            return PASSED
        return HandlerResult.failed("connection refused")


async def test_no_hooks_is_passed_at_once() -> None:
    run = PreconditionRun((), 0.0)
    checks = Checks()
    status = await run.step(checks.clock, checks)
    assert status.verdict is Verdict.PASSED and checks.made == []


async def test_pending_until_the_check_passes_then_the_next_hook() -> None:
    hooks = (PreStartHook(TCP, period_s=2), PreStartHook(WaitForAction("db"), period_s=3))
    checks = Checks()
    run = PreconditionRun(hooks, 0.0)
    status = await run.step(checks.clock, checks)
    assert status.verdict is Verdict.PENDING and status.hook == 0
    assert status.next_check_in_s == 2
    assert status.message == (
        "waiting for preStart[0] (tcpSocket 10.0.0.5:5432): connection refused"
    )
    checks.now = 1.0  # not due: no check
    status = await run.step(checks.clock, checks)
    assert status.next_check_in_s == 1 and len(checks.made) == 1
    checks.now = 2.0
    checks.passing = {0}
    status = await run.step(checks.clock, checks)
    # The first passed and the second was checked at once.
    assert status.verdict is Verdict.PENDING and status.hook == 1
    assert status.next_check_in_s == 3
    assert checks.made == [(0, 0.0), (0, 2.0), (1, 2.0)]
    checks.now = 5.0
    checks.passing = {0, 1}
    status = await run.step(checks.clock, checks)
    assert status.verdict is Verdict.PASSED
    assert (await run.step(checks.clock, checks)).verdict is Verdict.PASSED
    assert len(checks.made) == 4


async def test_the_deadline_fails_the_hook_after_a_last_check_at_the_deadline() -> None:
    checks = Checks()
    run = PreconditionRun((PreStartHook(TCP, period_s=2, deadline_s=5),), 0.0)
    waits = []
    for _ in range(3):
        status = await run.step(checks.clock, checks)
        assert status.verdict is Verdict.PENDING
        assert status.next_check_in_s is not None
        waits.append(status.next_check_in_s)
        checks.now += status.next_check_in_s
    assert waits == [2, 2, 1]  # checks at 0, 2, 4, then at the deadline, 5
    status = await run.step(checks.clock, checks)
    assert status.verdict is Verdict.FAILED
    assert status.message == (
        "preStart[0] (tcpSocket 10.0.0.5:5432) not passed within its deadline of 5s: "
        "connection refused"
    )
    assert [at for _, at in checks.made] == [0, 2, 4, 5]
    # A failed run stays failed.
    again = await run.step(checks.clock, checks)
    assert again.verdict is Verdict.FAILED and len(checks.made) == 4


async def test_the_failure_threshold_fails_before_the_deadline() -> None:
    checks = Checks()
    run = PreconditionRun((PreStartHook(TCP, period_s=1, failure_threshold=2),), 0.0)
    assert (await run.step(checks.clock, checks)).verdict is Verdict.PENDING
    checks.now = 1.0
    status = await run.step(checks.clock, checks)
    assert status.verdict is Verdict.FAILED
    assert "2 failed checks in a row" in status.message


async def test_a_pass_resets_the_count_and_the_deadline_for_the_next_hook() -> None:
    checks = Checks()
    hooks = (PreStartHook(TCP, deadline_s=10), PreStartHook(TCP, deadline_s=10))
    run = PreconditionRun(hooks, 0.0)
    await run.step(checks.clock, checks)
    checks.now = 8.0
    checks.passing = {0}
    status = await run.step(checks.clock, checks)
    assert status.hook == 1
    checks.passing = set()
    checks.now = 17.0  # 9 s into the second hook: still within its own deadline
    assert (await run.step(checks.clock, checks)).verdict is Verdict.PENDING


def test_descriptions_name_the_hook() -> None:
    assert describe(TCPSocketAction(80)) == "tcpSocket <pod IP>:80"
    assert describe(HTTPGetAction("web", "/ready", "svc")) == "httpGet http://svc:web/ready"
    assert describe(ExecAction(("nc", "-z", "db", "5432"))) == "exec nc -z db 5432"
    assert describe(WaitForAction("db", "data")) == "waitFor pod data/db Ready"
    assert hook_name(2, PreStartHook(WaitForAction("db"))) == ("preStart[2] (waitFor pod db Ready)")
