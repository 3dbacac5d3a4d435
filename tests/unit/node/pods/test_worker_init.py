"""Init containers in the pod worker, on the FakeRuntime with a fake clock: order, failure and
back-off per restart policy, status (initContainerStatuses, Initialized, PodInitializing),
completion in the checkpointed book, adoption after an agent restart with and without the book,
a lost sandbox running them again, replacement and teardown."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockBuster

from agent.cli.nodectl import _pod_status
from agent.node.pods.worker import PodWorker, WorkerBook
from agent.node.runtime.fake import Script
from agent.types import KIND_APP, KIND_INIT, LABEL_KIND, Pod
from tests.unit.node.pods.builders import UID, container, make_pod
from tests.unit.node.pods.rig import Rig

SANDBOX = "POD_web_shop_abcdef12"
OK = Script(exit_code=0)
FAIL = Script(stderr=b"no database\n", exit_code=1)


def name(container_name: str, attempt: int) -> str:
    return f"{container_name}_web_shop_abcdef12_{attempt}"


@pytest.fixture
async def rig(tmp_path: Path, blockbuster: BlockBuster) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "state")
    for image in ("img:1", "tool:1"):
        rig.runtime.add_image(image)
    yield rig
    await rig.close()


def init(container_name: str, **extra: Any) -> dict[str, Any]:
    """An init container whose command is its own name (scripted per test)."""
    return container(container_name, image="tool:1", command=[container_name], **extra)


def pod_with_inits(*names: str, restart_policy: str = "Always", **spec: Any) -> Pod:
    return make_pod(
        container("app"),
        restart_policy=restart_policy,
        initContainers=[init(n) for n in names],
        **spec,
    )


def init_statuses(worker: PodWorker) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in worker.status["initContainerStatuses"]}


def app_status(worker: PodWorker) -> dict[str, Any]:
    [status] = worker.status["containerStatuses"]
    return dict(status)


def conditions(worker: PodWorker) -> dict[str, str]:
    return {c["type"]: c["status"] for c in worker.status["conditions"]}


def shown(worker: PodWorker) -> str:
    """The STATUS column ``nodectl get pods`` prints for the worker's status."""
    return _pod_status({"spec": dict(worker.pod.manifest["spec"]), "status": worker.status})[0]


def exit_now(rig: Rig, worker: PodWorker, container_name: str, code: int = 0) -> None:
    """The container's process exits; the runtime's event wakes the worker."""
    rig.runtime.exit_container(rig.runtime.one(UID, container_name).id, code)
    worker.wake()


def created(rig: Rig) -> list[str]:
    return [entry[1] for entry in rig.runtime.trace if entry[0] == "create"]


async def test_init_containers_run_in_order_each_to_success_before_the_app(rig: Rig) -> None:
    rig.runtime.script_command(["first"], Script(exit_code=None))  # runs until it is told
    rig.runtime.script_command(["second"], Script(exit_code=None))
    worker = await rig.start(pod_with_inits("first", "second"))
    # The sandbox, then the first init container only.
    assert rig.runtime.trace == [
        ("create", f"{SANDBOX}_0"),
        ("start", f"{SANDBOX}_0"),
        ("create", name("first", 0)),
        ("start", name("first", 0)),
    ]
    assert worker.status["phase"] == "Pending"
    assert conditions(worker)["Initialized"] == "False"
    assert worker.book.init_done_sandbox == -1
    assert shown(worker) == "Init:0/2"
    assert init_statuses(worker)["first"]["state"].keys() == {"running"}
    assert init_statuses(worker)["second"]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert app_status(worker)["state"] == {"waiting": {"reason": "PodInitializing"}}
    await rig.step(worker)  # a sync while it runs changes nothing
    assert len(created(rig)) == 2
    await rig.step(worker, lambda: exit_now(rig, worker, "first"))
    assert created(rig)[-1] == name("second", 0)
    assert shown(worker) == "Init:1/2"
    assert "app" not in {r.container_name for r in rig.runtime.now(UID)}
    await rig.step(worker, lambda: exit_now(rig, worker, "second"))
    assert created(rig) == [f"{SANDBOX}_0", name("first", 0), name("second", 0), name("app", 0)]
    assert rig.runtime.one(UID, "app").running
    assert worker.book.init_done_sandbox == 0
    assert worker.status["phase"] == "Running"
    assert shown(worker) == "Running"
    assert conditions(worker) == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    for init_name in ("first", "second"):
        status = init_statuses(worker)[init_name]
        assert status["state"]["terminated"]["reason"] == "Completed"
        assert status["state"]["terminated"]["exitCode"] == 0
        assert status["ready"] is True
        assert status["restartCount"] == 0
    # Done ones are kept (their logs, their status) and never run again.
    await rig.step(worker)
    await rig.step(worker)
    assert created(rig) == [f"{SANDBOX}_0", name("first", 0), name("second", 0), name("app", 0)]


async def test_init_containers_are_labelled_and_share_the_pods_sandbox_and_volumes(
    rig: Rig,
) -> None:
    pod = make_pod(
        container("app", volumeMounts=[{"name": "work", "mountPath": "/work"}]),
        initContainers=[
            init(
                "prep",
                volumeMounts=[{"name": "work", "mountPath": "/w"}],
                env=[{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            )
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    rig.runtime.script_command(["prep"], OK)
    worker = await rig.start(pod)
    await rig.step(worker)
    sandbox = rig.runtime.one(UID, "POD")
    prep = rig.runtime.one(UID, "prep")
    app = rig.runtime.one(UID, "app")
    assert prep.is_init and not prep.is_sandbox
    assert not app.is_init
    prep_spec = rig.runtime.spec_of(prep.id)
    app_spec = rig.runtime.spec_of(app.id)
    assert prep_spec.labels[LABEL_KIND] == KIND_INIT
    assert app_spec.labels[LABEL_KIND] == KIND_APP
    assert prep_spec.network_of == sandbox.id
    assert prep_spec.env["IP"] == sandbox.ip_address
    assert prep_spec.mounts[0].source == app_spec.mounts[0].source
    assert prep_spec.mounts[0].target == "/w"


async def test_a_failing_init_container_is_retried_with_back_off_and_holds_the_rest(
    rig: Rig,
) -> None:
    rig.runtime.script_command(["first"], FAIL)
    rig.runtime.script_command(["second"], OK)
    worker = await rig.start(pod_with_inits("first", "second"))
    await rig.step(worker)  # sees the failure
    first = init_statuses(worker)["first"]
    assert first["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert first["lastState"]["terminated"]["exitCode"] == 1
    assert first["lastState"]["terminated"]["reason"] == "Error"
    assert first["ready"] is False
    assert init_statuses(worker)["second"]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert app_status(worker)["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert worker.status["phase"] == "Pending"
    assert conditions(worker)["Initialized"] == "False"
    assert rig.clock.pending_s() == [10]
    assert worker.book.restarts["first"].delay_s == 10
    assert shown(worker) == "Init:CrashLoopBackOff"
    # The back-off doubles, as for an app container.
    await rig.advance(worker, 10)
    assert created(rig)[-1] == name("first", 1)
    await rig.step(worker)
    assert rig.clock.pending_s() == [20]
    assert init_statuses(worker)["first"]["restartCount"] == 1
    # Fixed: it succeeds on its next run, then the second and the app follow.
    rig.runtime.script_command(["first"], OK)
    await rig.advance(worker, 20)
    assert created(rig)[-1] == name("first", 2)
    await rig.step(worker)
    assert created(rig)[-1] == name("second", 0)
    await rig.step(worker)
    assert rig.runtime.one(UID, "app").running
    assert init_statuses(worker)["first"]["restartCount"] == 2
    assert worker.status["phase"] == "Running"


async def test_on_failure_retries_a_failed_init_container(rig: Rig) -> None:
    rig.runtime.script_command(["first"], FAIL)
    worker = await rig.start(pod_with_inits("first", restart_policy="OnFailure"))
    await rig.step(worker)
    assert rig.clock.pending_s() == [10]
    rig.runtime.script_command(["first"], OK)
    await rig.advance(worker, 10)
    await rig.step(worker)
    assert rig.runtime.one(UID, "app").running


async def test_under_never_a_failed_init_container_fails_the_pod(rig: Rig) -> None:
    rig.runtime.script_command(["first"], FAIL)
    worker = await rig.start(pod_with_inits("first", "second", restart_policy="Never"))
    await rig.step(worker)
    assert worker.status["phase"] == "Failed"
    assert conditions(worker)["Initialized"] == "False"
    first = init_statuses(worker)["first"]
    assert first["state"]["terminated"]["exitCode"] == 1
    assert first["state"]["terminated"]["reason"] == "Error"
    assert shown(worker) == "Init:Error"
    assert rig.clock.pending_s() == []  # nothing will run again
    await rig.step(worker)
    assert created(rig) == [f"{SANDBOX}_0", name("first", 0)]
    assert "first" not in worker.book.restarts


async def test_under_never_succeeded_init_containers_let_the_pod_run(rig: Rig) -> None:
    rig.runtime.script_command(["first"], OK)
    worker = await rig.start(pod_with_inits("first", restart_policy="Never"))
    await rig.step(worker)
    assert rig.runtime.one(UID, "app").running
    assert worker.status["phase"] == "Running"


async def test_an_init_container_that_cannot_be_pulled_waits_with_its_reason(rig: Rig) -> None:
    pod = make_pod(
        container("app"),
        initContainers=[container("pull", image="missing:1", imagePullPolicy="Never")],
    )
    worker = await rig.start(pod)
    waiting = init_statuses(worker)["pull"]["state"]["waiting"]
    assert waiting["reason"] == "ErrImageNeverPull"
    assert shown(worker) == "Init:ErrImageNeverPull"
    assert worker.status["phase"] == "Pending"
    assert created(rig) == [f"{SANDBOX}_0"]


# -- completion survives an agent restart ----------------------------------------------------


async def initialized(rig: Rig, pod: Pod) -> PodWorker:
    worker = await rig.start(pod)
    for _ in pod.spec.init_containers:  # each sync runs the next one
        await rig.step(worker)
    assert rig.runtime.one(UID, "app").running
    return worker


def test_the_book_round_trips_init_completion() -> None:
    book = WorkerBook(attempts={"first": 0, "app": 0}, sandbox_attempt=2, init_done_sandbox=2)
    saved = json.loads(json.dumps(book.to_json()))
    assert saved["init_done_sandbox"] == 2
    assert WorkerBook.from_json(saved) == book
    # A book written before init containers existed: not done.
    del saved["init_done_sandbox"]
    assert WorkerBook.from_json(saved).init_done_sandbox == -1
    with pytest.raises(ValueError, match="init_done_sandbox"):
        WorkerBook.from_json({**saved, "init_done_sandbox": "2"})


async def test_a_restarted_agent_with_its_book_does_not_run_init_again(rig: Rig) -> None:
    rig.runtime.script_command(["first"], OK)
    pod = pod_with_inits("first")
    first = await initialized(rig, pod)
    saved = json.loads(json.dumps(first.book.to_json()))
    await rig.stop(first)  # kill -9: containers keep running
    before = list(rig.runtime.trace)

    second = await rig.start(pod, WorkerBook.from_json(saved))
    assert rig.runtime.trace == before  # nothing created, started or stopped
    assert second.status["phase"] == "Running"
    assert conditions(second)["Initialized"] == "True"
    assert init_statuses(second)["first"]["state"]["terminated"]["exitCode"] == 0


async def test_without_its_book_a_running_app_is_the_evidence(rig: Rig) -> None:
    rig.runtime.script_command(["first"], OK)
    pod = pod_with_inits("first")
    first = await initialized(rig, pod)
    await rig.stop(first)
    # The exited init container is gone too (a `docker container prune`): the running app
    # still says the pod was initialized, as for kubelet.
    await rig.runtime.remove_container(rig.runtime.one(UID, "first").id)
    before = list(rig.runtime.trace)

    second = await rig.start(pod)  # the checkpoint was lost: a fresh book
    assert rig.runtime.trace == before
    assert second.book.init_done_sandbox == 0
    assert conditions(second)["Initialized"] == "True"


async def test_a_crash_after_the_last_init_succeeded_does_not_run_it_again(rig: Rig) -> None:
    rig.runtime.script_command(["first"], OK)
    pod = pod_with_inits("first")
    first = await rig.start(pod)  # first ran and exited 0; the agent dies before its book
    await rig.stop(first)

    second = await rig.start(pod)
    assert created(rig) == [f"{SANDBOX}_0", name("first", 0), name("app", 0)]
    assert second.book.init_done_sandbox == 0
    assert rig.runtime.one(UID, "app").running


async def test_a_half_done_init_sequence_resumes_where_it_was(rig: Rig) -> None:
    rig.runtime.script_command(["first"], OK)
    rig.runtime.script_command(["second"], Script(exit_code=None))  # runs until stopped
    pod = pod_with_inits("first", "second")
    first = await rig.start(pod)
    await rig.step(first)
    assert rig.runtime.one(UID, "second").running
    saved = json.loads(json.dumps(first.book.to_json()))
    await rig.stop(first)

    second = await rig.start(pod, WorkerBook.from_json(saved))
    assert created(rig) == [f"{SANDBOX}_0", name("first", 0), name("second", 0)]
    assert init_statuses(second)["second"]["state"].keys() == {"running"}
    assert init_statuses(second)["second"]["ready"] is False
    assert worker_phase(second) == "Pending"
    rig.runtime.exit_container(rig.runtime.one(UID, "second").id, 0)
    await rig.step(second)
    assert rig.runtime.one(UID, "app").running


def worker_phase(worker: PodWorker) -> str:
    return str(worker.status["phase"])


async def test_a_lost_sandbox_runs_the_init_containers_again(rig: Rig) -> None:
    rig.runtime.script_command(["first"], OK)
    worker = await initialized(rig, pod_with_inits("first"))
    sandbox = rig.runtime.one(UID, "POD")

    def lose_the_sandbox() -> None:
        rig.runtime.exit_container(sandbox.id, 0)
        worker.wake()

    await rig.step(worker, lose_the_sandbox)
    # The app was cut off and removed, the old init container with it; init runs again
    # in the new sandbox before the app.
    records = [(r.container_name, r.attempt, r.running) for r in rig.runtime.now(UID)]
    assert records == [("POD", 1, True), ("first", 1, False)]
    assert worker.status["phase"] == "Pending"
    assert conditions(worker)["Initialized"] == "False"
    await rig.step(worker)
    assert rig.runtime.one(UID, "app").running
    assert rig.runtime.one(UID, "app").attempt == 1
    assert worker.book.init_done_sandbox == 1
    assert rig.clock.pending_s() == []  # the move was not a crash: no back-off


async def test_a_changed_spec_runs_the_new_init_containers(rig: Rig) -> None:
    rig.runtime.script_command(["first"], OK)
    rig.runtime.script_command(["other"], OK)
    worker = await initialized(rig, pod_with_inits("first"))
    await rig.step(worker, lambda: worker.update(pod_with_inits("other")))
    assert {r.container_name for r in rig.runtime.now(UID)} == {"POD", "other"}
    await rig.step(worker)
    assert rig.runtime.one(UID, "app").running
    assert [s["name"] for s in worker.status["initContainerStatuses"]] == ["other"]


async def test_teardown_removes_init_containers(rig: Rig) -> None:
    rig.runtime.script_command(["first"], OK)
    worker = await initialized(rig, pod_with_inits("first"))
    worker.terminate()
    await rig.finished(worker)
    assert rig.runtime.now(UID) == []


async def test_a_pod_without_init_containers_reports_none(rig: Rig) -> None:
    worker = await rig.start(make_pod())
    assert "initContainerStatuses" not in worker.status
    assert conditions(worker)["Initialized"] == "True"
    assert worker.book.init_done_sandbox == -1  # nothing to record
