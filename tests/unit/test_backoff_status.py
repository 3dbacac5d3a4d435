"""Pure pieces of the pod worker: back-off schedule, restart decisions, PodStatus shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.manifest import parse_pod
from agent.node.backoff import BackoffPolicy, RestartState
from agent.node.pods.status import ContainerView, container_status, pod_phase, pod_status
from agent.node.pods.worker import should_restart
from agent.node.runtime.base import ContainerRecord, ContainerState
from agent.types import RestartPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_kubelet_default_schedule_doubles_to_cap() -> None:
    policy = BackoffPolicy()
    delays = []
    previous = None
    for _ in range(8):
        previous = policy.next_delay(previous, ran_for_s=1.0)
        delays.append(previous)
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]


def test_clean_run_resets_backoff() -> None:
    policy = BackoffPolicy(initial_s=1, max_s=8, reset_s=60)
    assert policy.next_delay(8, ran_for_s=59.9) == 8
    assert policy.next_delay(4, ran_for_s=59.9) == 8
    assert policy.next_delay(8, ran_for_s=60) == 1


def test_restart_state_round_trip_and_validation() -> None:
    state = RestartState(delay_s=20.0, not_before=123.5, handled_attempt=3)
    assert RestartState.from_json(dict(state.to_json())) == state
    with pytest.raises(ValueError):
        RestartState.from_json({"delay_s": "x", "not_before": 1, "handled_attempt": 1})


@pytest.mark.parametrize(
    ("policy", "code", "expected"),
    [
        (RestartPolicy.ALWAYS, 0, True),
        (RestartPolicy.ALWAYS, 1, True),
        (RestartPolicy.ON_FAILURE, 0, False),
        (RestartPolicy.ON_FAILURE, 137, True),
        (RestartPolicy.NEVER, 1, False),
        (RestartPolicy.NEVER, 0, False),
    ],
)
def test_should_restart(policy: RestartPolicy, code: int, expected: bool) -> None:
    assert should_restart(policy, code) is expected


def record(
    state: ContainerState, *, attempt: int = 0, code: int | None = None, oom: bool = False
) -> ContainerRecord:
    return ContainerRecord(
        id=f"id{attempt}",
        name=f"c_{attempt}",
        labels={"io.node-agent.attempt": str(attempt), "io.node-agent.container": "c"},
        state=state,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=5) if state is ContainerState.EXITED else None,
        exit_code=code,
        oom_killed=oom,
        image_id="sha256:abc",
    )


def pod(policy: str = "Always") -> object:
    return parse_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "i:1"}]},
        },
        source="t",
    )


def test_running_container_status() -> None:
    view = ContainerView("c", "i:1", record(ContainerState.RUNNING), None, 0)
    status = container_status(view)
    assert status["state"] == {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    assert status["ready"] is True
    assert status["containerID"] == "docker://id0"
    assert status["lastState"] == {}


def test_crash_loop_status_shows_last_termination() -> None:
    crashed = record(ContainerState.EXITED, attempt=2, code=137, oom=True)
    view = ContainerView("c", "i:1", crashed, None, 2, waiting_reason="CrashLoopBackOff")
    status = container_status(view)
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["lastState"]["terminated"]["reason"] == "OOMKilled"
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert status["restartCount"] == 2
    assert status["ready"] is False


def test_phases() -> None:
    p_never = pod("Never")
    done = ContainerView(
        "c", "i", record(ContainerState.EXITED, code=0), None, 0, will_restart=False
    )
    failed = ContainerView(
        "c", "i", record(ContainerState.EXITED, code=3), None, 0, will_restart=False
    )
    creating = ContainerView("c", "i", None, None, 0)
    running = ContainerView("c", "i", record(ContainerState.RUNNING), None, 0)
    assert pod_phase(p_never, [done]) == "Succeeded"  # type: ignore[arg-type]
    assert pod_phase(p_never, [failed]) == "Failed"  # type: ignore[arg-type]
    assert pod_phase(p_never, [creating]) == "Pending"  # type: ignore[arg-type]
    assert pod_phase(pod(), [running, creating]) == "Running"  # type: ignore[arg-type]
    restarting = ContainerView("c", "i", record(ContainerState.EXITED, code=1), None, 1)
    assert pod_phase(pod(), [restarting]) == "Running"  # type: ignore[arg-type]


def test_pod_status_conditions_keep_transition_times() -> None:
    p = pod()
    running = ContainerView("c", "i", record(ContainerState.RUNNING), None, 0)
    first = pod_status(
        p, [running], host_ip="10.0.0.1", pod_ip="172.17.0.2", start_time=T0, previous=None, now=T0
    )  # type: ignore[arg-type]
    later = T0 + timedelta(minutes=5)
    second = pod_status(
        p,
        [running],
        host_ip="10.0.0.1",
        pod_ip="172.17.0.2",
        start_time=T0,
        previous=first,
        now=later,
    )  # type: ignore[arg-type]
    ready = {c["type"]: c for c in second["conditions"]}["Ready"]
    assert ready["status"] == "True"
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert second["podIPs"] == [{"ip": "172.17.0.2"}]
    assert second["startTime"] == "2026-01-01T00:00:00Z"
    crashed = ContainerView(
        "c", "i", record(ContainerState.EXITED, code=1), None, 0, waiting_reason="CrashLoopBackOff"
    )
    third = pod_status(
        p, [crashed], host_ip="h", pod_ip="x", start_time=T0, previous=second, now=later
    )  # type: ignore[arg-type]
    ready = {c["type"]: c for c in third["conditions"]}["Ready"]
    assert ready == {
        "type": "Ready",
        "status": "False",
        "lastTransitionTime": "2026-01-01T00:05:00Z",
        "reason": "ContainersNotReady",
    }
