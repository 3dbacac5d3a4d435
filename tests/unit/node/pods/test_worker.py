"""The pod worker's state machine on the FakeRuntime, time driven by a fake clock: creation,
restarts and back-off, replacement, deletion, adoption, runtime and image faults, status."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockBuster

from agent.errors import (
    ContainerConflictError,
    RuntimeOperationError,
    RuntimeUnavailableError,
)
from agent.node.hooks.runner import Hooks
from agent.node.pods.specs import app_spec, sandbox_spec
from agent.node.pods.worker import PodWorker, WorkerBook
from agent.node.runtime.base import ContainerState
from agent.node.runtime.fake import Script
from agent.types import LABEL_IMAGE, Container, ObjectMeta, Pod, PodSpec
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.builders import UID, container, make_pod
from tests.unit.node.pods.rig import DEADLINE_S, HOST_IP, SANDBOX_IMAGE, Rig
from tests.unit.node.probes.proberrig import clock_sleep

SANDBOX = "POD_web_shop_abcdef12"


def name(container_name: str, attempt: int) -> str:
    return f"{container_name}_web_shop_abcdef12_{attempt}"


@pytest.fixture
async def rig(tmp_path: Path, blockbuster: BlockBuster) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "state")
    for image in ("img:1", "img:2"):
        rig.runtime.add_image(image)
    yield rig
    await rig.close()


def statuses(worker: PodWorker) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in worker.status["containerStatuses"]}


def conditions(worker: PodWorker) -> dict[str, str]:
    return {c["type"]: c["status"] for c in worker.status["conditions"]}


def reasons(rig: Rig) -> list[str]:
    return [e["reason"] for e in rig.events.list()]


# -- creation ---------------------------------------------------------------------------------


async def test_creates_the_sandbox_then_each_container_in_order(rig: Rig) -> None:
    pod = make_pod(container("a"), container("b", image="img:2"))
    worker = await rig.start(pod)
    assert rig.runtime.trace == [
        ("create", f"{SANDBOX}_0"),
        ("start", f"{SANDBOX}_0"),
        ("create", name("a", 0)),
        ("start", name("a", 0)),
        ("create", name("b", 0)),
        ("start", name("b", 0)),
    ]
    sandbox = rig.runtime.one(UID, "POD")
    assert sandbox.running
    for app in ("a", "b"):
        record = rig.runtime.one(UID, app)
        assert record.running
        assert rig.runtime.spec_of(record.id).network_of == sandbox.id
    assert reasons(rig) == ["SandboxStarted", "Pulled", "Started", "Pulled", "Started"]
    assert worker.book.attempts == {"a": 0, "b": 0}
    assert worker.book.sandbox_attempt == 0
    assert worker.book.start_time == rig.clock.time()
    assert rig.book_changes > 0
    assert worker.synced_once.is_set()
    assert worker.last_error == ""
    assert rig.clock.pending_s() == []  # nothing to wait for: no timer armed
    assert rig.sync_seconds == [0.0]  # measured on the (fake) monotonic clock


async def test_status_of_a_running_pod(rig: Rig) -> None:
    worker = await rig.start(make_pod(container("a"), container("b", image="img:2")))
    sandbox = rig.runtime.one(UID, "POD")
    status = worker.status
    assert status["phase"] == "Running"
    assert status["podIP"] == sandbox.ip_address != ""
    assert status["podIPs"] == [{"ip": sandbox.ip_address}]
    assert status["hostIP"] == HOST_IP
    assert status["startTime"] is not None
    assert conditions(worker) == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    a = statuses(worker)["a"]
    assert set(a["state"]) == {"running"}
    assert a["ready"] is True
    assert a["restartCount"] == 0
    assert a["image"] == "img:1"
    assert a["containerID"] == f"docker://{rig.runtime.one(UID, 'a').id}"
    assert worker.restart_counts() == {"a": 0, "b": 0}


async def test_specs_given_to_the_runtime(rig: Rig, tmp_path: Path) -> None:
    host_dir = tmp_path / "host" / "logs"
    pod = make_pod(
        container(
            "app",
            command=["serve"],
            env=[
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MODE", "value": "prod"},
            ],
            ports=[{"containerPort": 80, "hostPort": 8080}],
            resources={"limits": {"cpu": "500m", "memory": "64Mi"}},
            volumeMounts=[
                {"name": "data", "mountPath": "/data"},
                {"name": "logs", "mountPath": "/logs", "readOnly": True},
            ],
        ),
        volumes=[
            {"name": "data", "emptyDir": {}},
            {"name": "logs", "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"}},
        ],
    )
    await rig.start(pod)
    sandbox = rig.runtime.one(UID, "POD")
    app = rig.runtime.spec_of(rig.runtime.one(UID, "app").id)
    empty_dir = rig.state_dir / "pods" / UID / "volumes" / "data"
    assert await rig.bridge.run(empty_dir.is_dir)
    assert await rig.bridge.run(host_dir.is_dir)  # DirectoryOrCreate
    assert app.env == {"IP": sandbox.ip_address, "MODE": "prod"}
    assert [(m.source, m.target, m.read_only) for m in app.mounts] == [
        (str(empty_dir), "/data", False),
        (str(host_dir), "/logs", True),
    ]
    assert app.entrypoint == ("serve",)
    assert (app.nano_cpus, app.memory_bytes) == (500_000_000, 64 << 20)
    assert app.labels["io.node-agent.pod.hash"] == pod.spec_hash
    assert app.labels["io.node-agent.attempt"] == "0"
    assert app.labels["io.node-agent.node"] == "n1"
    box = rig.runtime.spec_of(sandbox.id)
    assert box.image == SANDBOX_IMAGE
    assert [(p.container_port, p.host_port) for p in box.port_bindings] == [(80, 8080)]
    assert box.labels["io.node-agent.pod.hash"] == pod.spec_hash


async def test_host_network_pod_has_the_host_ip(rig: Rig) -> None:
    worker = await rig.start(make_pod(hostNetwork=True))
    assert rig.runtime.spec_of(rig.runtime.one(UID, "POD").id).host_network is True
    assert worker.status["podIP"] == HOST_IP


async def test_a_pod_waits_for_the_pod_it_replaces(rig: Rig) -> None:
    before = asyncio.Event()
    worker = rig.spawn(make_pod(), after=before)
    for _ in range(5):
        await asyncio.sleep(0)  # let the worker run as far as it can
    assert rig.runtime.calls["list_containers"] == 0
    assert not worker.synced_once.is_set()
    before.set()
    await rig.wait_syncs(worker, 1)
    assert rig.runtime.one(UID, "c").running


# -- restarts and back-off --------------------------------------------------------------------


async def crash(rig: Rig, worker: PodWorker, code: int, name: str = "c") -> None:
    """The container's process exits; the runtime's event wakes the worker."""
    current = rig.runtime.one(worker.uid, name)
    await rig.step(worker, lambda: (rig.runtime.exit_container(current.id, code), worker.wake()))


async def test_crash_loop_back_off_grows_to_its_cap(rig: Rig) -> None:
    worker = await rig.start(make_pod())
    waits = []
    for attempt in range(5):
        await crash(rig, worker, 1)
        [wait_s] = rig.clock.pending_s()
        waits.append(wait_s)
        waiting = statuses(worker)["c"]["state"]["waiting"]
        assert waiting == {
            "reason": "CrashLoopBackOff",
            "message": f"back-off {wait_s:g}s restarting failed container=c pod=web",
        }
        assert statuses(worker)["c"]["lastState"]["terminated"]["exitCode"] == 1
        assert statuses(worker)["c"]["restartCount"] == attempt
        assert worker.status["phase"] == "Running"  # it will run again
        assert conditions(worker)["Ready"] == "False"
        rig.clock.advance(wait_s - 0.5)
        assert rig.runtime.one(UID, "c").attempt == attempt  # not before the back-off ends
        await rig.advance(worker, 0.5)
        assert rig.runtime.one(UID, "c").running
        assert rig.runtime.one(UID, "c").attempt == attempt + 1
        assert statuses(worker)["c"]["restartCount"] == attempt + 1
    assert waits == [10, 20, 40, 40, 40]
    assert reasons(rig).count("Restarted") == 5
    # One BackOff event per exit, aggregated as kubelet's: one event, counted five times.
    [back_off] = [e for e in rig.events.list() if e["reason"] == "BackOff"]
    assert back_off["count"] == 5 and back_off["type"] == "Warning"
    assert back_off["message"] == "Back-off restarting failed container c in pod web"


async def test_back_off_starts_over_after_a_long_enough_run(rig: Rig) -> None:
    worker = await rig.start(make_pod())
    await crash(rig, worker, 1)
    await rig.advance(worker, 10)
    await crash(rig, worker, 1)
    assert rig.clock.pending_s() == [20]  # a short run: the back-off doubled
    await rig.advance(worker, 20)
    rig.clock.advance(rig.backoff.reset_s)  # runs cleanly for backoff_reset_s
    await crash(rig, worker, 1)
    assert rig.clock.pending_s() == [10]
    assert worker.book.restarts["c"].delay_s == 10


async def test_an_exit_seen_twice_is_counted_once(rig: Rig) -> None:
    worker = await rig.start(make_pod())
    await crash(rig, worker, 1)
    await rig.step(worker)  # another wake-up (a relist) before the back-off ends
    assert rig.clock.pending_s() == [10]
    assert worker.book.restarts["c"].handled_attempt == 0


async def test_on_failure_restarts_only_failed_containers(rig: Rig) -> None:
    worker = await rig.start(
        make_pod(container("ok"), container("bad"), restart_policy="OnFailure")
    )
    await crash(rig, worker, 0, "ok")
    assert rig.clock.pending_s() == []
    ok = statuses(worker)["ok"]["state"]["terminated"]
    assert (ok["exitCode"], ok["reason"]) == (0, "Completed")
    await crash(rig, worker, 3, "bad")
    assert rig.clock.pending_s() == [10]
    assert worker.status["phase"] == "Running"
    await rig.advance(worker, 10)
    assert rig.runtime.one(UID, "bad").running
    assert rig.runtime.one(UID, "ok").attempt == 0  # never restarted
    assert worker.restart_counts() == {"ok": 0, "bad": 1}


@pytest.mark.parametrize(("code", "phase"), [(0, "Succeeded"), (2, "Failed")])
async def test_never_leaves_an_exited_container_alone(rig: Rig, code: int, phase: str) -> None:
    worker = await rig.start(make_pod(restart_policy="Never"))
    await crash(rig, worker, code)
    assert rig.clock.pending_s() == []
    assert worker.status["phase"] == phase
    assert "terminated" in statuses(worker)["c"]["state"]
    await rig.step(worker)
    assert rig.runtime.calls["create_container"] == 2  # the sandbox and the one container
    assert "c" not in worker.book.restarts


@pytest.mark.parametrize("policy", ["Always", "OnFailure"])
async def test_oom_kill_is_a_failure(rig: Rig, policy: str) -> None:
    worker = await rig.start(make_pod(restart_policy=policy))
    current = rig.runtime.one(UID, "c")
    await rig.step(
        worker, lambda: (rig.runtime.exit_container(current.id, 137, oom=True), worker.wake())
    )
    assert statuses(worker)["c"]["lastState"]["terminated"]["reason"] == "OOMKilled"
    assert rig.clock.pending_s() == [10]


async def test_only_the_current_and_the_previous_container_are_kept(rig: Rig) -> None:
    worker = await rig.start(make_pod())
    for wait_s in (10, 20, 40):
        await crash(rig, worker, 1)
        await rig.advance(worker, wait_s)
    assert [r.attempt for r in rig.runtime.now(UID) if not r.is_sandbox] == [2, 3]
    last = statuses(worker)["c"]["lastState"]["terminated"]
    assert last["containerID"] == f"docker://{rig.runtime.now(UID)[1].id}"


# -- replacement and deletion -----------------------------------------------------------------


async def test_a_changed_spec_replaces_the_containers(rig: Rig) -> None:
    old = make_pod(terminationGracePeriodSeconds=7)
    worker = await rig.start(old)
    new = make_pod(container(image="img:2"), terminationGracePeriodSeconds=7)
    assert new.spec_hash != old.spec_hash
    rig.runtime.trace.clear()
    await rig.step(worker, lambda: worker.update(new))
    assert rig.runtime.trace[:3] == [
        ("stop", name("c", 0), "7"),
        ("remove", name("c", 0)),
        ("remove", f"{SANDBOX}_0"),
    ]
    records = rig.runtime.now(UID)
    assert [(r.container_name, r.attempt, r.running) for r in records] == [
        ("POD", 1, True),
        ("c", 1, True),
    ]
    assert all(r.pod_hash == new.spec_hash for r in records)
    made_from = rig.runtime.spec_of(records[1].id)  # the pinned id, the reference on a label
    assert made_from.image == records[1].image_id
    assert made_from.labels[LABEL_IMAGE] == "img:2"
    assert worker.status["phase"] == "Running"


async def test_a_changed_spec_does_not_inherit_the_old_back_off(rig: Rig) -> None:
    """An image typo fixed, a crash-looping command fixed: the new spec starts at once, and
    its first crash waits the initial back-off (kubelet keys back-off by container spec)."""
    worker = await rig.start(make_pod(container(image="typo:1")))
    await rig.advance(worker, 2)  # ErrImagePull shown, then ImagePullBackOff
    await rig.advance(worker, 8)  # the second attempt fails: 20 s
    await rig.advance(worker, 2)
    assert rig.clock.pending_s() == [18]
    await rig.step(worker, lambda: worker.update(make_pod(container(image="img:1"))))
    assert rig.runtime.one(UID, "c").running
    await crash(rig, worker, 1)
    await rig.advance(worker, 10)
    await crash(rig, worker, 1)
    assert rig.clock.pending_s() == [20]
    await rig.step(worker, lambda: worker.update(make_pod(container(image="img:2"))))
    assert rig.runtime.one(UID, "c").running
    await crash(rig, worker, 1)
    assert rig.clock.pending_s() == [10]


async def test_teardown_stops_apps_with_the_grace_period_then_removes_the_sandbox(
    rig: Rig,
) -> None:
    pod = make_pod(
        container("a"),
        container("b"),
        container("done"),
        terminationGracePeriodSeconds=7,
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    worker = await rig.start(pod)
    await crash(rig, worker, 0, "done")  # exited: removed, not stopped
    volumes = rig.state_dir / "pods" / UID
    assert await rig.bridge.run(volumes.is_dir)
    rig.runtime.trace.clear()
    worker.terminate()
    await rig.finished(worker)
    trace = rig.runtime.trace
    assert sorted(trace[:2]) == [("stop", name("a", 0), "7"), ("stop", name("b", 0), "7")]
    assert sorted(trace[2:5]) == [
        ("remove", name("a", 0)),
        ("remove", name("b", 0)),
        ("remove", name("done", 0)),
    ]
    assert trace[5:] == [("remove", f"{SANDBOX}_0")]
    assert rig.runtime.now(UID) == []
    assert not await rig.bridge.run(volumes.exists)
    assert reasons(rig)[-1] == "Killed"
    assert worker.done.is_set()


async def test_deleted_while_a_create_is_in_flight(rig: Rig) -> None:
    rig.runtime.gate = asyncio.Event()
    worker = rig.spawn(make_pod())
    await asyncio.wait_for(rig.runtime.at_gate.wait(), timeout=DEADLINE_S)
    worker.terminate()  # the create is still in flight
    rig.runtime.gate.set()
    await rig.finished(worker)
    assert rig.runtime.now(UID) == []
    assert ("create", name("c", 0)) in rig.runtime.trace
    assert rig.runtime.trace[-1] == ("remove", f"{SANDBOX}_0")


async def test_deleted_while_its_post_start_hook_runs(rig: Rig) -> None:
    """A deletion cancels a running postStart (here a 300 s sleep on the fake clock, which
    never moves): the container is stopped and removed without waiting for the hook, and no
    FailedPostStartHook is reported for it."""
    hooks = Hooks(rig.runtime, sleep=clock_sleep(rig.clock))
    pod = make_pod(container(lifecycle={"postStart": {"sleep": {"seconds": 300}}}))
    worker = rig.spawn(pod, deps=dataclasses.replace(rig.deps, hooks=hooks))
    await until(lambda: 300 in rig.clock.pending_s(), "the postStart sleep")
    assert rig.runtime.one(UID, "c").running
    worker.terminate()
    await rig.finished(worker)
    assert rig.runtime.now(UID) == []
    assert "FailedPostStartHook" not in reasons(rig)


async def test_teardown_is_retried_while_the_runtime_is_down(rig: Rig) -> None:
    worker = await rig.start(make_pod())
    rig.runtime.set_down()
    await rig.step(worker, worker.terminate)
    assert not worker.done.is_set()
    assert rig.clock.pending_s() == [1.0]
    rig.runtime.set_down(False)
    rig.clock.advance(1.0)
    await rig.finished(worker)
    assert rig.runtime.now(UID) == []


async def test_stray_containers_of_an_unknown_pod_are_removed(rig: Rig) -> None:
    """What the pod manager does for containers of a pod nobody wants any more: a worker for
    a placeholder pod (no containers known) that is terminating from the start."""
    first = await rig.start(make_pod(container("a"), container("b")))
    await rig.stop(first)
    meta = ObjectMeta(name="web", namespace="shop", uid=UID)
    placeholder = Pod(meta, PodSpec(containers=()), {"metadata": {"name": "web"}}, "orphan")
    worker = rig.spawn(placeholder, terminating=True)
    await rig.finished(worker)
    assert rig.runtime.now(UID) == []


# -- adoption after an agent restart ----------------------------------------------------------


async def test_adoption_from_the_checkpoint_recreates_nothing(rig: Rig) -> None:
    pod = make_pod()
    first = await rig.start(pod)
    await crash(rig, first, 1)
    await rig.advance(first, 10)
    await rig.stop(first)  # the agent stops; its containers keep running
    saved = json.loads(json.dumps(first.book.to_json()))
    rig.runtime.trace.clear()
    second = await rig.start(pod, WorkerBook.from_json(saved))
    assert rig.runtime.trace == []  # nothing created, started, stopped or removed
    assert second.status["phase"] == "Running"
    assert statuses(second)["c"]["restartCount"] == 1
    assert statuses(second)["c"]["lastState"]["terminated"]["exitCode"] == 1
    await crash(rig, second, 1)
    assert rig.clock.pending_s() == [20]  # the back-off went on from where it was


async def test_adoption_without_a_checkpoint_learns_attempts_from_labels(rig: Rig) -> None:
    pod = make_pod()
    first = await rig.start(pod)
    await crash(rig, first, 1)
    await rig.advance(first, 10)
    await rig.stop(first)
    rig.runtime.trace.clear()
    second = await rig.start(pod)  # the checkpoint was lost
    assert rig.runtime.trace == []
    assert second.book.attempts == {"c": 1}
    assert second.book.sandbox_attempt == 0
    await crash(rig, second, 1)
    await rig.advance(second, 10)
    assert rig.runtime.one(UID, "c").attempt == 2
    assert rig.runtime.calls["create_container"] == 4  # no name was ever taken twice


async def test_a_container_created_but_never_started_is_started(rig: Rig) -> None:
    """The agent died between create and start: the next incarnation starts that container."""
    pod = make_pod()
    first = await rig.start(pod)
    await crash(rig, first, 1)
    await rig.stop(first)
    sandbox = rig.runtime.one(UID, "POD")
    spec = app_spec(rig.deps.ctx, pod, pod.spec.containers[0], 1, sandbox.id, "")
    created = await rig.runtime.create_container(spec)
    rig.runtime.trace.clear()
    second = await rig.start(pod)
    assert rig.runtime.trace == [("start", name("c", 1))]
    assert rig.runtime.one(UID, "c").id == created
    assert statuses(second)["c"]["restartCount"] == 1


async def test_an_earlier_incarnations_sandbox_is_adopted_on_conflict(rig: Rig) -> None:
    rig.runtime.racing.add(f"{SANDBOX}_0")
    worker = await rig.start(make_pod())
    assert worker.last_error == ""
    assert [(r.container_name, r.running) for r in rig.runtime.now(UID)] == [
        ("POD", True),
        ("c", True),
    ]


async def test_an_earlier_incarnations_container_is_adopted_on_conflict(rig: Rig) -> None:
    rig.runtime.racing.add(name("c", 0))
    worker = rig.spawn(make_pod())
    await rig.wait_syncs(worker, 2)  # the conflict makes the worker sync again at once
    assert rig.runtime.trace[-1] == ("start", name("c", 0))
    assert rig.runtime.one(UID, "c").running
    assert rig.runtime.calls["create_container"] == 2


async def test_a_sandbox_name_conflict_nobody_owns_is_an_error(rig: Rig) -> None:
    rig.runtime.fail("create_container", ContainerConflictError("name in use"))
    worker = await rig.start(make_pod())
    assert worker.last_error == "name in use"
    assert rig.clock.pending_s() == [1.0]
    await rig.advance(worker, 1.0)
    assert rig.runtime.one(UID, "c").running


# -- runtime and image faults -----------------------------------------------------------------


async def test_runtime_down_is_retried_with_back_off_and_reported(rig: Rig) -> None:
    worker = await rig.start(make_pod())
    running = worker.status
    rig.runtime.set_down()
    await rig.step(worker)
    assert "unreachable" in worker.last_error
    assert worker.status["reason"] == "RuntimeUnavailable"
    assert "unreachable" in worker.status["message"]
    assert worker.status["containerStatuses"] == running["containerStatuses"]
    assert rig.clock.pending_s() == [1.0]
    await rig.advance(worker, 1.0)
    assert rig.clock.pending_s() == [2.0]
    rig.runtime.set_down(False)
    await rig.advance(worker, 2.0)
    assert worker.last_error == ""
    assert "reason" not in worker.status and "message" not in worker.status
    assert rig.clock.pending_s() == []
    # The sync retry's back-off started over once a sync succeeded.
    rig.runtime.set_down()
    await rig.step(worker)
    assert rig.clock.pending_s() == [1.0]


async def test_runtime_wakes_keep_a_failing_syncs_back_off(rig: Rig) -> None:
    """A sandbox that cannot start: its failed containers' events (a wake each) must not
    retry before the back-off ends; a new spec or a deletion still acts at once."""
    rig.runtime.fail("start_container", RuntimeOperationError("no bridge"), times=None)
    worker = await rig.start(make_pod())
    assert worker.last_error == "no bridge"
    starts = rig.runtime.calls["start_container"]
    for _ in range(5):
        worker.wake()  # as the runtime watch does for each event of the pod
        # Checked before the loop can run: a wake that counted would be pending here.
        assert not worker._wake.is_set()
    assert rig.clock.pending_s() == [1.0]
    await rig.advance(worker, 1.0)  # the retry: one more attempt, not six
    assert rig.runtime.calls["start_container"] == starts + 1
    assert rig.clock.pending_s() == [2.0]
    rig.runtime.clear_faults()
    await rig.step(worker, worker.wake_now)  # the runtime back (wake_all): no waiting
    assert worker.last_error == ""
    assert rig.runtime.one(UID, "c").running
    worker.wake()  # a healthy worker syncs on every wake
    await rig.step(worker)


async def test_the_retry_back_off_has_a_cap(rig: Rig) -> None:
    rig.runtime.set_down()
    worker = await rig.start(make_pod())
    assert worker.status == {
        "phase": "Pending",
        "reason": "RuntimeUnavailable",
        "message": worker.status["message"],
    }
    waits = []
    for _ in range(7):
        [wait_s] = rig.clock.pending_s()
        waits.append(wait_s)
        await rig.advance(worker, wait_s)
    assert waits == [1, 2, 4, 8, 16, 30, 30]


async def test_runtime_lost_mid_sync_converges_without_duplicates(rig: Rig) -> None:
    rig.runtime.fail_app("start_container", RuntimeUnavailableError("engine gone"))
    worker = await rig.start(make_pod())
    assert worker.last_error == "engine gone"
    assert rig.runtime.one(UID, "c").state is ContainerState.CREATED
    await rig.advance(worker, 1.0)
    assert rig.runtime.one(UID, "c").running
    assert rig.runtime.calls["create_container"] == 2  # the created container was started


async def test_runtime_lost_during_create_is_retried(rig: Rig) -> None:
    rig.runtime.fail_app("create_container", RuntimeUnavailableError("engine gone"))
    worker = await rig.start(make_pod())
    assert worker.last_error == "engine gone"
    await rig.advance(worker, 1.0)
    assert rig.runtime.one(UID, "c").running


async def test_image_pull_failure_backs_off_and_says_why(rig: Rig) -> None:
    """kubelet's sequence: the attempt shows ErrImagePull (a Failed warning), then the
    container waits in ImagePullBackOff (a BackOff event) until the back-off has passed."""
    worker = await rig.start(make_pod(container(image="later:1")))
    waiting = statuses(worker)["c"]["state"]["waiting"]
    assert waiting["reason"] == "ErrImagePull"
    assert "later:1" in waiting["message"]
    assert worker.status["phase"] == "Pending"
    assert rig.clock.pending_s() == [2]
    assert rig.events.list()[-1]["type"] == "Warning"
    assert (rig.events.list()[-1]["reason"], rig.events.list()[-2]["reason"]) == (
        "Failed",
        "Pulling",
    )
    assert rig.events.list()[-1]["message"].startswith('Failed to pull image "later:1": ')
    await rig.advance(worker, 2)
    assert statuses(worker)["c"]["state"]["waiting"]["reason"] == "ImagePullBackOff"
    assert rig.events.list()[-1]["reason"] == "BackOff"
    assert rig.events.list()[-1]["message"] == 'Back-off pulling image "later:1"'
    assert rig.clock.pending_s() == [8]
    await rig.advance(worker, 8)
    assert statuses(worker)["c"]["state"]["waiting"]["reason"] == "ErrImagePull"
    await rig.advance(worker, 2)
    assert rig.clock.pending_s() == [18]
    pulls = rig.runtime.calls["pull_image"]
    rig.clock.advance(5)
    await rig.step(worker)  # woken early (a relist): the retry keeps its time
    assert rig.clock.pending_s() == [13]
    assert rig.runtime.calls["pull_image"] == pulls
    rig.runtime.publish_image("later:1")
    await rig.advance(worker, 13)
    assert rig.runtime.one(UID, "c").running
    assert set(statuses(worker)["c"]["state"]) == {"running"}


async def test_an_absent_image_with_pull_policy_never(rig: Rig) -> None:
    worker = await rig.start(make_pod(container(image="nowhere:1", imagePullPolicy="Never")))
    assert statuses(worker)["c"]["state"]["waiting"]["reason"] == "ErrImageNeverPull"


async def test_a_create_refused_by_the_runtime_backs_off(rig: Rig) -> None:
    rig.runtime.fail_app("create_container", RuntimeOperationError("bad mount"))
    worker = await rig.start(make_pod())
    assert statuses(worker)["c"]["state"]["waiting"] == {
        "reason": "CreateContainerError",
        "message": "bad mount",
    }
    assert rig.clock.pending_s() == [10]
    await rig.advance(worker, 10)
    assert rig.runtime.one(UID, "c").running
    assert rig.runtime.one(UID, "c").attempt == 1


async def test_a_start_refused_by_the_runtime_removes_the_container_and_backs_off(
    rig: Rig,
) -> None:
    rig.runtime.fail_app("start_container", RuntimeOperationError("exec format error"))
    worker = await rig.start(make_pod())
    assert statuses(worker)["c"]["state"]["waiting"]["reason"] == "RunContainerError"
    assert ("remove", name("c", 0)) in rig.runtime.trace
    assert [r.container_name for r in rig.runtime.now(UID)] == ["POD"]
    assert rig.clock.pending_s() == [10]
    await rig.advance(worker, 10)
    assert rig.runtime.one(UID, "c").running
    assert statuses(worker)["c"]["restartCount"] == 1


async def test_volumes_that_cannot_be_prepared_fail_the_sync(rig: Rig, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    await rig.bridge.run(blocked.write_text, "")
    deps = rig.make_deps(blocked)
    worker = rig.spawn(make_pod(volumes=[{"name": "v", "emptyDir": {}}]), deps=deps)
    await rig.wait_syncs(worker, 1)
    assert worker.last_error.startswith("cannot prepare volumes of shop/web")
    assert rig.clock.pending_s() == [1.0]


# -- the sandbox ------------------------------------------------------------------------------


async def test_a_lost_sandbox_moves_the_containers_without_back_off(rig: Rig) -> None:
    worker = await rig.start(make_pod(container("a"), container("b")))
    old_ip = worker.status["podIP"]
    sandbox = rig.runtime.one(UID, "POD")
    await rig.step(worker, lambda: (rig.runtime.exit_container(sandbox.id, 0), worker.wake()))
    records = rig.runtime.now(UID)
    assert [(r.container_name, r.attempt, r.running) for r in records] == [
        ("POD", 1, True),
        ("a", 1, True),
        ("b", 1, True),
    ]
    assert rig.clock.pending_s() == []
    assert worker.status["podIP"] not in ("", old_ip)
    # The move was not a crash; the next crash backs off as usual.
    await crash(rig, worker, 1, "a")
    assert rig.clock.pending_s() == [10]
    assert statuses(worker)["a"]["state"]["waiting"]["reason"] == "CrashLoopBackOff"


async def test_a_moved_container_that_exited_before_restarts_at_once(rig: Rig) -> None:
    worker = await rig.start(make_pod())
    await crash(rig, worker, 1)
    await rig.advance(worker, 10)  # attempt 1 runs, attempt 0 is kept as the previous
    sandbox = rig.runtime.one(UID, "POD")
    await rig.runtime.remove_container(sandbox.id)
    await rig.step(worker)
    assert rig.runtime.one(UID, "c").running
    assert rig.runtime.one(UID, "c").attempt == 2
    assert rig.clock.pending_s() == []


async def test_a_sandbox_that_does_not_stay_running_is_an_error(rig: Rig) -> None:
    rig.runtime.script_command((), Script(exit_code=1))  # the sandbox image's process exits
    worker = await rig.start(make_pod(container(command=["serve"])))
    assert worker.last_error == f"sandbox {SANDBOX}_0 did not stay running"
    assert worker.status["reason"] == "SyncError"
    rig.runtime.script_command((), Script(exit_code=None))
    await rig.advance(worker, 1.0)
    assert rig.runtime.one(UID, "POD").attempt == 1  # the exited one was replaced
    assert rig.runtime.one(UID, "c").running


async def test_containers_the_spec_does_not_name_are_removed(rig: Rig) -> None:
    pod = make_pod()
    worker = await rig.start(pod)
    ghost = Container(name="ghost", image="img:1")
    sandbox = rig.runtime.one(UID, "POD")
    await rig.runtime.create_container(app_spec(rig.deps.ctx, pod, ghost, 0, sandbox.id, ""))
    await rig.step(worker)
    assert [r.container_name for r in rig.runtime.now(UID)] == ["POD", "c"]


async def test_an_extra_sandbox_is_removed(rig: Rig) -> None:
    pod = make_pod()
    worker = await rig.start(pod)
    await rig.runtime.create_container(sandbox_spec(rig.deps.ctx, pod, 5))
    await rig.step(worker)
    assert [(r.container_name, r.attempt) for r in rig.runtime.now(UID)] == [("POD", 0), ("c", 0)]


async def test_a_container_the_runtime_could_not_start_is_a_crash(rig: Rig) -> None:
    """Docker leaves a container whose start failed in ``created`` with State.Error set."""
    pod = make_pod()
    worker = await rig.start(pod)
    await crash(rig, worker, 1)
    await rig.advance(worker, 10)
    current = rig.runtime.one(UID, "c")
    await rig.stop(worker)
    await rig.runtime.remove_container(current.id)
    sandbox = rig.runtime.one(UID, "POD")
    spec = app_spec(rig.deps.ctx, pod, pod.spec.containers[0], 2, sandbox.id, "")
    failed = await rig.runtime.create_container(spec)
    rig.runtime._containers[failed].error = "OCI runtime create failed"  # no public control
    second = await rig.start(pod)
    status = statuses(second)["c"]
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert rig.clock.pending_s() == [10]  # ran for 0 s: a fresh back-off, not a reset one
    assert status["restartCount"] == 2


async def test_a_deletions_grace_period_replaces_the_pods_own(rig: Rig) -> None:
    """``nodectl delete --grace-period=2`` of a pod whose own is 7: SIGTERM, then 2 s."""
    worker = await rig.start(make_pod(container("a"), terminationGracePeriodSeconds=7))
    rig.runtime.trace.clear()
    worker.terminate(grace_s=5)
    worker.terminate(grace_s=2)  # the shorter one holds
    worker.terminate()
    await rig.finished(worker)
    assert rig.runtime.trace[0] == ("stop", name("a", 0), "2")
