"""The pod worker's lifecycle hooks on the FakeRuntime with a fake clock: preStart
preconditions (pending → passed, deadline → failed with back-off, restartPolicy Never,
checkpointed completion), postStart (a failure kills the container) and preStop (within the
grace period)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockBuster

from agent.node.handlers import PASSED, HandlerResult
from agent.node.hooks.fake import HANG, FakeHooks
from agent.node.hooks.runner import KIND_PRESTART, Hooks
from agent.node.pods.worker import PodWorker, WorkerBook
from agent.node.probes.fake import FakeProber
from agent.node.runtime.base import ContainerSpec
from agent.node.runtime.fake import Script
from agent.types import LABEL_KIND, ProbeKind, SleepAction
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.builders import container, make_pod
from tests.unit.node.pods.fakeclock import FakeClock
from tests.unit.node.pods.rig import Rig
from tests.unit.node.probes.proberrig import FirstTick

APP = "c_web_shop_abcdef12_0"
TCP_HOOK = {"tcpSocket": {"host": "10.9.9.9", "port": 5432}, "periodSeconds": 2}


REFUSED = HandlerResult.failed("dial tcp 10.9.9.9:5432: connection refused")


def clock_sleep(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    """A sleep that ends when the fake clock has moved ``seconds``."""

    async def sleep(seconds: float) -> None:
        done = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        clock.call_later(seconds, wake)
        await done

    return sleep


@pytest.fixture
async def rig(tmp_path: Path, blockbuster: BlockBuster) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "state")
    rig.runtime.add_image("img:1")
    yield rig
    await rig.close()


@pytest.fixture
def hooks(rig: Rig) -> FakeHooks:
    """Preconditions refused until a test makes them pass; handlers pass."""
    hooks = FakeHooks(sleep=clock_sleep(rig.clock))
    hooks.answer_check(0, REFUSED)
    return hooks


def spawn(rig: Rig, pod: Any, hooks: Any, book: WorkerBook | None = None) -> PodWorker:
    return rig.spawn(pod, book, deps=dataclasses.replace(rig.deps, hooks=hooks))


async def started(rig: Rig, pod: Any, hooks: Any, book: WorkerBook | None = None) -> PodWorker:
    worker = spawn(rig, pod, hooks, book)
    await rig.wait_syncs(worker, 1)
    return worker


def waiting(worker: PodWorker, name: str = "c") -> dict[str, Any]:
    status = next(s for s in worker.status["containerStatuses"] if s["name"] == name)
    state: dict[str, Any] = status["state"].get("waiting", {})
    return state


def events(rig: Rig) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in rig.events.list()]


def apps(rig: Rig, worker: PodWorker) -> list[str]:
    return [r.name for r in rig.runtime.now(worker.uid) if not r.is_sandbox]


def hooked(*pre_start: dict[str, Any], **lifecycle: Any) -> dict[str, Any]:
    spec: dict[str, Any] = dict(lifecycle)
    if pre_start:
        spec["preStart"] = list(pre_start)
    return container(lifecycle=spec)


# -- preStart preconditions ---------------------------------------------------------------------


async def test_the_container_waits_pending_and_starts_once_the_precondition_passes(
    rig: Rig, hooks: FakeHooks
) -> None:
    worker = await started(rig, make_pod(hooked(TCP_HOOK)), hooks)
    assert apps(rig, worker) == []
    state = waiting(worker)
    assert state["reason"] == "PreStartHookPending"
    assert state["message"] == (
        "waiting for preStart[0] (tcpSocket 10.9.9.9:5432): "
        "dial tcp 10.9.9.9:5432: connection refused"
    )
    assert worker.status["phase"] == "Pending"
    await rig.advance(worker, 2)  # the next check, still failing: no new event
    assert hooks.checks == [("c", 0), ("c", 0)]
    assert [r for r, _ in events(rig)].count("PreStartHookPending") == 1
    hooks.answer_check(0, PASSED)
    await rig.advance(worker, 2)  # within one period of the service appearing
    assert apps(rig, worker) == [APP]
    assert rig.runtime.one(worker.uid, "c").running
    assert "running" in next(iter(worker.status["containerStatuses"]))["state"]
    reasons = [r for r, _ in events(rig)]
    assert reasons.index("PreStartHookSucceeded") < reasons.index("Started")
    assert worker.book.prestart_done == {"c": 0}


async def test_the_deadline_fails_the_hook_and_the_pod_backs_off(
    rig: Rig, hooks: FakeHooks
) -> None:
    hook = {**TCP_HOOK, "deadlineSeconds": 5}
    worker = await started(rig, make_pod(hooked(hook)), hooks)
    for step in (2, 2, 1):  # checks at 2 and 4, the last one at the deadline (5)
        await rig.advance(worker, step)
    state = waiting(worker)
    assert state["reason"] == "PreStartHookFailed"
    assert state["message"] == (
        "preStart[0] (tcpSocket 10.9.9.9:5432) not passed within its deadline of 5s: "
        "dial tcp 10.9.9.9:5432: connection refused (back-off 10s)"
    )
    failed = [(r, m) for r, m in events(rig) if r == "PreStartHookFailed"]
    assert len(failed) == 1 and failed[0][1].startswith("container c: preStart[0]")
    assert next(e for e in rig.events.list() if e["reason"] == "PreStartHookFailed")["type"] == (
        "Warning"
    )
    assert len(hooks.checks) == 4 and apps(rig, worker) == []
    assert rig.clock.pending_s() == [10]  # the back-off (the rig's initial 10 s)
    await rig.advance(worker, 10)  # a new run: checked again from the start, pending
    assert waiting(worker)["reason"] == "PreStartHookPending"
    assert len(hooks.checks) == 5
    for step in (2, 2, 1):
        await rig.advance(worker, step)
    assert waiting(worker)["message"].endswith("(back-off 20s)")  # doubled
    await rig.advance(worker, 20)
    hooks.answer_check(0, PASSED)
    await rig.advance(worker, 2)
    assert apps(rig, worker) == [APP]


async def test_the_failure_threshold_ends_a_run_before_its_deadline(
    rig: Rig, hooks: FakeHooks
) -> None:
    hook = {**TCP_HOOK, "failureThreshold": 2}
    worker = await started(rig, make_pod(hooked(hook)), hooks)
    await rig.advance(worker, 2)
    assert waiting(worker)["reason"] == "PreStartHookFailed"
    assert "2 failed checks in a row" in waiting(worker)["message"]


async def test_restart_policy_never_gives_up_and_the_pod_fails(rig: Rig, hooks: FakeHooks) -> None:
    hook = {**TCP_HOOK, "deadlineSeconds": 2}
    worker = await started(rig, make_pod(hooked(hook), restart_policy="Never"), hooks)
    await rig.advance(worker, 2)
    assert waiting(worker)["reason"] == "PreStartHookFailed"
    assert "back-off" not in waiting(worker)["message"]
    assert worker.status["phase"] == "Failed"
    assert rig.clock.pending_s() == []  # nothing more to do
    await rig.step(worker)
    assert len(hooks.checks) == 2 and apps(rig, worker) == []


async def test_a_container_without_preconditions_is_not_held_by_one_with(
    rig: Rig, hooks: FakeHooks
) -> None:
    pod = make_pod(hooked(TCP_HOOK), container("plain"))
    worker = await started(rig, pod, hooks)
    assert apps(rig, worker) == ["plain_web_shop_abcdef12_0"]
    assert worker.status["phase"] == "Running"


async def test_completion_is_checkpointed_a_restarted_agent_checks_nothing(
    rig: Rig, hooks: FakeHooks
) -> None:
    hooks.answer_check(0, PASSED)
    worker = await started(rig, make_pod(hooked(TCP_HOOK)), hooks)
    assert apps(rig, worker) == [APP]
    book = WorkerBook.from_json(worker.book.to_json())  # the checkpoint's round trip
    assert book.prestart_done == {"c": 0}
    await rig.stop(worker)
    again = FakeHooks()
    again.answer_check(0, REFUSED)  # the precondition would fail now
    revived = await started(rig, make_pod(hooked(TCP_HOOK)), again, book)
    assert again.checks == []
    assert rig.runtime.one(revived.uid, "c").running
    # The container crashes: it restarts after its back-off, the preconditions not checked
    # again (they passed in this sandbox).
    rig.runtime.exit_container(rig.runtime.one(revived.uid, "c").id, 1)
    await rig.step(revived)
    await rig.advance(revived, 10)
    assert again.checks == []
    assert rig.runtime.one(revived.uid, "c").attempt == 1


async def test_a_new_sandbox_checks_the_preconditions_again(rig: Rig, hooks: FakeHooks) -> None:
    hooks.answer_check(0, PASSED)
    worker = await started(rig, make_pod(hooked(TCP_HOOK)), hooks)
    rig.runtime.exit_container(rig.runtime.one(worker.uid, "POD").id, 137)
    hooks.answer_check(0, REFUSED)
    await rig.step(worker)
    assert len(hooks.checks) == 2
    assert waiting(worker)["reason"] == "PreStartHookPending"
    assert not any(r.running for r in rig.runtime.now(worker.uid) if not r.is_sandbox)


def test_an_old_book_without_prestart_reads_as_none_done() -> None:
    assert WorkerBook.from_json({"attempts": {"c": 1}}).prestart_done == {}
    with pytest.raises(ValueError, match="prestart_done"):
        WorkerBook.from_json({"prestart_done": {"c": "x"}})


async def test_an_exec_precondition_runs_in_a_helper_in_the_pod_network(
    rig: Rig, tmp_path: Path
) -> None:
    command = ["nc", "-z", "127.0.0.1", "5432"]
    hook = {"exec": {"command": command}, "periodSeconds": 2}
    pod = make_pod(
        container(
            env=[{"name": "DB", "value": "db:5432"}],
            volumeMounts=[{"name": "data", "mountPath": "/data"}],
            lifecycle={"preStart": [hook]},
        ),
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    rig.runtime.script_command(command, Script(stdout=b"refused\n", exit_code=1))
    created: list[ContainerSpec] = []
    create = rig.runtime.create_container

    async def capture(spec: ContainerSpec) -> str:
        created.append(spec)
        return await create(spec)

    rig.runtime.create_container = capture  # type: ignore[method-assign]
    worker = await started(rig, pod, Hooks(rig.runtime, sleep=clock_sleep(rig.clock)))
    helpers = [op for op in rig.runtime.trace if op[1].startswith("c.prestart-0_")]
    assert [op[0] for op in helpers] == ["create", "start", "remove"]
    assert waiting(worker)["message"].endswith(
        "command 'nc -z 127.0.0.1 5432' exited with 1: refused"
    )
    spec = next(s for s in created if s.labels.get(LABEL_KIND) == KIND_PRESTART)
    sandbox = rig.runtime.one(worker.uid, "POD")
    assert spec.network_of == sandbox.id
    assert spec.entrypoint == tuple(command) and spec.cmd is None
    assert spec.env["DB"] == "db:5432"
    assert [m.target for m in spec.mounts] == ["/data"]
    rig.runtime.script_command(command, Script(exit_code=0))
    await rig.advance(worker, 2)
    assert apps(rig, worker) == [APP]
    assert all(not r.name.startswith("c.prestart") for r in rig.runtime.now(worker.uid))


async def test_wait_for_another_pod_ready(rig: Rig) -> None:
    ready: dict[tuple[str, str], bool] = {}

    def lookup(namespace: str, name: str, condition: str) -> bool | None:
        assert condition == "Ready"
        return ready.get((namespace, name))

    hook = {"waitFor": {"pod": "db"}, "periodSeconds": 2}
    worker = await started(rig, make_pod(hooked(hook)), Hooks(rig.runtime, pod_condition=lookup))
    assert waiting(worker)["message"].endswith("no pod shop/db on this node")
    ready[("shop", "db")] = False
    await rig.advance(worker, 2)
    assert waiting(worker)["message"].endswith("pod shop/db is not Ready")
    ready[("shop", "db")] = True
    await rig.advance(worker, 2)
    assert apps(rig, worker) == [APP]


async def test_deleting_the_pod_does_not_wait_for_a_check_in_flight(
    rig: Rig, hooks: FakeHooks
) -> None:
    hooks.answer_check(0, HANG)  # a check that does not answer (an exec helper that hangs)
    worker = spawn(rig, make_pod(hooked(TCP_HOOK)), hooks)
    await until(lambda: hooks.checks, "the check in flight")
    worker.terminate()
    await rig.finished(worker)
    assert rig.runtime.now(worker.uid) == []
    assert "PreStartHookFailed" not in [r for r, _ in events(rig)]


# -- postStart and preStop ----------------------------------------------------------------------


async def test_a_failed_post_start_kills_the_container_which_restarts_per_policy(
    rig: Rig, hooks: FakeHooks
) -> None:
    hooks.answer_handler(HandlerResult.failed("command 'setup' exited with 2"))
    pod = make_pod(hooked(postStart={"exec": {"command": ["setup"]}}))
    worker = await started(rig, pod, hooks)
    first = rig.runtime.one(worker.uid, "c")
    assert hooks.runs[0][0] == first.id
    assert not first.running
    assert ("stop", APP, "30") in rig.runtime.trace
    failed = [m for r, m in events(rig) if r == "FailedPostStartHook"]
    assert failed == ["container c: postStart hook failed: command 'setup' exited with 2"]
    await rig.step(worker)
    assert waiting(worker)["reason"] == "CrashLoopBackOff"
    hooks.answer_handler(PASSED)
    await rig.advance(worker, 10)
    assert rig.runtime.one(worker.uid, "c").running
    assert rig.runtime.one(worker.uid, "c").attempt == 1


async def test_a_post_start_that_passes_leaves_the_container_running(
    rig: Rig, hooks: FakeHooks
) -> None:
    worker = spawn(rig, make_pod(hooked(postStart={"sleep": {"seconds": 1}})), hooks)
    await until(lambda: 1 in rig.clock.pending_s(), "the postStart sleep")
    rig.clock.advance(1)
    await rig.wait_syncs(worker, 1)
    assert rig.runtime.one(worker.uid, "c").running
    assert [run[1] for run in hooks.runs] == [SleepAction(1)]


@pytest.mark.parametrize(
    ("sleep_s", "advance_s", "sigterm_grace", "failed"),
    [(5, 5, "25", False), (100, 30, "2", True)],
)
async def test_pre_stop_runs_before_sigterm_within_the_grace_period(
    rig: Rig, sleep_s: int, advance_s: int, sigterm_grace: str, failed: bool
) -> None:
    pod = make_pod(hooked(preStop={"sleep": {"seconds": sleep_s}}))
    worker = await started(rig, pod, Hooks(rig.runtime, sleep=clock_sleep(rig.clock)))
    worker.terminate()
    await until(lambda: advance_s in rig.clock.pending_s(), "the preStop sleep")
    assert not any(op[0] == "stop" for op in rig.runtime.trace)  # SIGTERM waits for the hook
    rig.clock.advance(advance_s)
    await rig.finished(worker)
    assert ("stop", APP, sigterm_grace) in rig.runtime.trace
    assert ("FailedPreStopHook" in [r for r, _ in events(rig)]) is failed


async def test_pre_stop_of_the_replaced_spec_runs_when_the_spec_changes(
    rig: Rig, hooks: FakeHooks
) -> None:
    pod = make_pod(hooked(preStop={"exec": {"command": ["drain"]}}))
    worker = await started(rig, pod, hooks)
    first = rig.runtime.one(worker.uid, "c")
    await rig.step(worker, lambda: worker.update(make_pod(container(args=["x"]))))
    assert [(cid, action, limit) for cid, action, limit in hooks.runs] == [
        (first.id, pod.spec.containers[0].lifecycle.pre_stop, 30.0)
    ]
    assert rig.runtime.one(worker.uid, "c").running  # the new one, without a preStop
    await rig.step(worker, worker.terminate)
    assert len(hooks.runs) == 1


async def test_a_liveness_kill_runs_pre_stop_first(rig: Rig, hooks: FakeHooks) -> None:
    workers: dict[str, PodWorker] = {}
    prober = FakeProber(
        clock=rig.clock,
        timers=rig.clock,
        on_change=lambda uid: workers[uid].wake(),
        rng=FirstTick(),
    )
    probe = {"exec": {"command": ["alive?"]}, "terminationGracePeriodSeconds": 7}
    pod = make_pod(
        container(
            livenessProbe={**probe, "failureThreshold": 1},
            lifecycle={"preStop": {"exec": {"command": ["drain"]}}},
        )
    )
    deps = dataclasses.replace(rig.deps, hooks=hooks, prober=prober)
    worker = workers[pod.uid] = rig.spawn(pod, deps=deps)
    await rig.wait_syncs(worker, 1)
    first = rig.runtime.one(worker.uid, "c")
    prober.answer("c", ProbeKind.LIVENESS, HandlerResult.failed("probe failed"))
    await rig.step(worker, lambda: rig.clock.advance(0))  # the probe's first run fails it
    # The hook gets the probe's grace period, SIGTERM what is left of it.
    assert hooks.runs == [(first.id, pod.spec.containers[0].lifecycle.pre_stop, 7.0)]
    assert ("stop", APP, "7") in rig.runtime.trace


async def test_an_exec_precondition_s_helper_runs_the_pinned_image_as_the_container_does(
    rig: Rig,
) -> None:
    """Issue 16 item 2: every container of an admitted pod runs the image its reference named
    at admission, the preStart helper too; a tag moved while a check still fails changes
    neither the next helper nor the container made once the check passes."""
    first = await rig.runtime.inspect_image("img:1")
    assert first is not None
    command = ["ready?"]
    pod = make_pod(hooked({"exec": {"command": command}, "periodSeconds": 2}))
    rig.runtime.script_command(command, Script(exit_code=1))
    created: list[ContainerSpec] = []
    create = rig.runtime.create_container

    async def capture(spec: ContainerSpec) -> str:
        created.append(spec)
        return await create(spec)

    rig.runtime.create_container = capture  # type: ignore[method-assign]
    worker = await started(rig, pod, Hooks(rig.runtime, sleep=clock_sleep(rig.clock)))
    moved = rig.runtime.add_image("img:1")  # docker tag: img:1 names another image now
    assert moved.id != first.id
    rig.runtime.script_command(command, Script(exit_code=0))
    await rig.advance(worker, 2)
    assert apps(rig, worker) == [APP]
    helpers = [s.image for s in created if s.labels.get(LABEL_KIND) == KIND_PRESTART]
    assert helpers == [first.id, first.id]
    assert rig.runtime.one(worker.uid, "c").image_id == first.id
    assert worker.book.images["c"].image_id == first.id
