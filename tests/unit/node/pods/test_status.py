"""The v1 PodStatus document: container states, last states, phases, conditions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.node.pods.status import (
    ContainerView,
    container_status,
    pod_phase,
    pod_status,
    rfc3339,
)
from agent.node.runtime.base import ContainerState
from tests.unit.node.pods.builders import T0, make_pod, record

RUNNING = ContainerState.RUNNING
EXITED = ContainerState.EXITED


def view(current: object, *, restarts: int = 0, **extra: object) -> ContainerView:
    return ContainerView("c", "i:1", current, None, restarts, **extra)  # type: ignore[arg-type]


def test_rfc3339() -> None:
    assert rfc3339(None) is None
    assert rfc3339(T0 + timedelta(seconds=1.9)) == "2026-01-01T00:00:01Z"


def test_running_container_status() -> None:
    status = container_status(view(record(RUNNING)))
    assert status == {
        "name": "c",
        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
        "lastState": {},
        "ready": True,
        "started": True,
        "restartCount": 0,
        "image": "i:1",
        "imageID": "sha256:abc",
        "containerID": "docker://id0",
    }


def test_not_yet_created_container_is_creating() -> None:
    status = container_status(view(None))
    assert status["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert status["imageID"] == ""
    assert "containerID" not in status
    assert (status["ready"], status["started"]) == (False, False)


def test_created_but_never_started_is_creating() -> None:
    status = container_status(view(record(ContainerState.CREATED, started=None)))
    assert status["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert status["lastState"] == {}
    assert status["containerID"] == "docker://id0"


def test_waiting_carries_reason_and_message() -> None:
    status = container_status(
        view(None, waiting_reason="ImagePullBackOff", waiting_message="no such image")
    )
    assert status["state"] == {
        "waiting": {"reason": "ImagePullBackOff", "message": "no such image"}
    }


def test_crash_loop_status_shows_last_termination() -> None:
    crashed = record(EXITED, attempt=2, code=137, oom=True)
    status = container_status(view(crashed, restarts=2, waiting_reason="CrashLoopBackOff"))
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["lastState"]["terminated"]["reason"] == "OOMKilled"
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert status["restartCount"] == 2
    assert (status["ready"], status["started"]) == (False, False)


@pytest.mark.parametrize(
    ("code", "oom", "reason", "exit_code"),
    [(0, False, "Completed", 0), (3, False, "Error", 3), (None, False, "Completed", 0)],
)
def test_terminated_reasons(code: int | None, oom: bool, reason: str, exit_code: int) -> None:
    status = container_status(view(record(EXITED, code=code, oom=oom), will_restart=False))
    assert status["state"] == {
        "terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": "2026-01-01T00:00:00Z",
            "finishedAt": "2026-01-01T00:00:05Z",
            "containerID": "docker://id0",
        }
    }
    assert status["lastState"] == {}


def test_terminated_with_runtime_error_has_message() -> None:
    failed = record(EXITED, code=127, error='exec: "nope": not found')
    terminated = container_status(view(failed))["state"]["terminated"]
    assert terminated["message"] == 'exec: "nope": not found'
    assert terminated["reason"] == "Error"


def test_running_again_shows_the_previous_exit_as_last_state() -> None:
    previous = record(EXITED, attempt=0, code=1)
    current = record(RUNNING, attempt=1)
    status = container_status(ContainerView("c", "i", current, previous, 1))
    assert "running" in status["state"]
    assert status["lastState"]["terminated"]["containerID"] == "docker://id0"
    assert status["containerID"] == "docker://id1"


def test_phases() -> None:
    never = make_pod(restart_policy="Never")
    always = make_pod()
    done = view(record(EXITED, code=0), will_restart=False)
    failed = view(record(EXITED, code=3), will_restart=False)
    creating = view(None)
    running = view(record(RUNNING))
    restarting = view(record(EXITED, code=1))
    assert pod_phase(never, [done]) == "Succeeded"
    assert pod_phase(never, [done, failed]) == "Failed"
    assert pod_phase(never, [creating]) == "Pending"
    assert pod_phase(never, [done, creating]) == "Pending"
    assert pod_phase(always, [running, creating]) == "Running"
    assert pod_phase(always, [running, failed]) == "Running"
    assert pod_phase(always, [restarting]) == "Running"
    assert pod_phase(make_pod(restart_policy="OnFailure"), [restarting, done]) == "Running"
    # A view that says it will restart under Never (the worker never builds one) is not done.
    assert pod_phase(never, [view(record(EXITED, code=1))]) == "Pending"


def test_pod_status_conditions_keep_transition_times() -> None:
    p = make_pod()
    running = view(record(RUNNING))
    first = pod_status(
        p, [running], host_ip="10.0.0.1", pod_ip="172.17.0.2", start_time=T0, previous=None, now=T0
    )
    later = T0 + timedelta(minutes=5)
    second = pod_status(
        p,
        [running],
        host_ip="10.0.0.1",
        pod_ip="172.17.0.2",
        start_time=T0,
        previous=first,
        now=later,
    )
    assert second["phase"] == "Running"
    assert second["hostIP"] == "10.0.0.1"
    assert second["podIP"] == "172.17.0.2"
    assert second["podIPs"] == [{"ip": "172.17.0.2"}]
    assert second["startTime"] == "2026-01-01T00:00:00Z"
    assert [c["type"] for c in second["conditions"]] == [
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
    ]
    assert all(c["status"] == "True" for c in second["conditions"])
    assert all(c["lastTransitionTime"] == "2026-01-01T00:00:00Z" for c in second["conditions"])
    crashed = view(record(EXITED, code=1), waiting_reason="CrashLoopBackOff")
    third = pod_status(
        p, [crashed], host_ip="h", pod_ip="x", start_time=T0, previous=second, now=later
    )
    conditions = {c["type"]: c for c in third["conditions"]}
    assert conditions["Ready"] == {
        "type": "Ready",
        "status": "False",
        "lastTransitionTime": "2026-01-01T00:05:00Z",
        "reason": "ContainersNotReady",
    }
    assert conditions["ContainersReady"]["status"] == "False"
    assert conditions["PodScheduled"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_pod_status_before_anything_runs() -> None:
    status = pod_status(
        make_pod(), [view(None)], host_ip="h", pod_ip="", start_time=None, previous={}, now=T0
    )
    assert status["phase"] == "Pending"
    assert status["podIPs"] == []
    assert status["startTime"] is None
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "False"


def test_a_pod_without_containers_is_never_ready() -> None:
    status = pod_status(
        make_pod(), [], host_ip="h", pod_ip="", start_time=None, previous=None, now=T0
    )
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    assert status["containerStatuses"] == []
