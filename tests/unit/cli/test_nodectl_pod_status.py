"""``nodectl get pods``' STATUS and RESTARTS columns as kubectl computes them (printPod),
above all the init states: ``Init:N/M``, ``Init:<waiting reason>``, ``Init:<terminated
reason>``, then the app containers' reasons once the pod is initialized."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cli.nodectl import _pod_row, _pod_status

RUNNING = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
DONE = {"terminated": {"exitCode": 0, "reason": "Completed"}}
INITIALIZING = {"waiting": {"reason": "PodInitializing"}}


def init(state: dict[str, Any], restarts: int = 0) -> dict[str, Any]:
    return {"name": "i", "state": state, "restartCount": restarts, "ready": "terminated" in state}


def app(state: dict[str, Any], restarts: int = 0, ready: bool = False) -> dict[str, Any]:
    return {"name": "c", "state": state, "restartCount": restarts, "ready": ready}


def pod(
    phase: str,
    inits: list[dict[str, Any]] | None = None,
    apps: list[dict[str, Any]] | None = None,
    initialized: bool | None = None,
    ready: bool = False,
) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": str(ready)}]
    if initialized is not None:
        conditions.append({"type": "Initialized", "status": str(initialized)})
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    spec: dict[str, Any] = {"containers": [{"name": "c"}] * max(1, len(apps or []))}
    if inits is not None:
        status["initContainerStatuses"] = inits
        spec["initContainers"] = [{"name": f"i{n}"} for n in range(len(inits))]
    if apps is not None:
        status["containerStatuses"] = apps
    return {"metadata": {"name": "p", "namespace": "default"}, "spec": spec, "status": status}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (pod("Running", apps=[app(RUNNING, ready=True)], ready=True), ("Running", 0)),
        (pod("Pending"), ("Pending", 0)),
        (
            pod("Pending", inits=[init(RUNNING), init(INITIALIZING)], initialized=False),
            ("Init:0/2", 0),
        ),
        (pod("Pending", inits=[init(DONE), init(RUNNING)], initialized=False), ("Init:1/2", 0)),
        (
            pod(
                "Pending",
                inits=[init(DONE), init(INITIALIZING)],
                apps=[app(INITIALIZING)],
                initialized=False,
            ),
            ("Init:1/2", 0),
        ),
        (
            pod(
                "Pending",
                inits=[
                    init({"waiting": {"reason": "CrashLoopBackOff"}}, restarts=3),
                    init(INITIALIZING),
                ],
                apps=[app(INITIALIZING)],
                initialized=False,
            ),
            ("Init:CrashLoopBackOff", 3),
        ),
        (
            pod(
                "Failed",
                inits=[init({"terminated": {"exitCode": 1, "reason": "Error"}})],
                apps=[app(INITIALIZING)],
                initialized=False,
            ),
            ("Init:Error", 0),
        ),
        (
            pod("Failed", inits=[init({"terminated": {"exitCode": 3}})], initialized=False),
            ("Init:ExitCode:3", 0),
        ),
        (
            pod(
                "Pending",
                inits=[init({"waiting": {"reason": "ErrImageNeverPull"}})],
                initialized=False,
            ),
            ("Init:ErrImageNeverPull", 0),
        ),
        # Initialized: the app containers speak, their restarts count, not the init ones'.
        (
            pod(
                "Running",
                inits=[init(DONE, restarts=4)],
                apps=[app({"waiting": {"reason": "CrashLoopBackOff"}}, restarts=2)],
                initialized=True,
            ),
            ("CrashLoopBackOff", 2),
        ),
        (
            pod(
                "Running",
                inits=[init(DONE, restarts=4)],
                apps=[app(RUNNING, 1, True)],
                initialized=True,
                ready=True,
            ),
            ("Running", 1),
        ),
        (
            pod("Failed", apps=[app({"terminated": {"exitCode": 2, "reason": "Error"}})]),
            ("Error", 0),
        ),
        (pod("Failed", apps=[app({"terminated": {"exitCode": 2}})]), ("ExitCode:2", 0)),
        # One container completed, another still running: Running (Ready) or NotReady.
        (
            pod("Running", apps=[app(RUNNING, ready=True), app(DONE)], ready=True),
            ("Running", 0),
        ),
        (pod("Running", apps=[app(RUNNING, ready=True), app(DONE)]), ("NotReady", 0)),
        (pod("Succeeded", apps=[app(DONE)]), ("Completed", 0)),
    ],
)
def test_status_column_as_kubectl(obj: dict[str, Any], expected: tuple[str, int]) -> None:
    assert _pod_status(obj) == expected


def test_the_row_escapes_a_reason_the_server_chose() -> None:
    obj = pod("Pending", inits=[init({"waiting": {"reason": "Bad\nrow"}})], initialized=False)
    row = _pod_row(obj, wide=False, all_namespaces=False)
    assert "\n" not in row[2]
    assert row[2].startswith("Init:Bad")


# The acceptance rows of issue 17 (STATUS as kubectl prints it), each from a status fixture of
# the shape the node reports; init rows are above.
def _waiting(reason: str) -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": "…"}}


def _terminating(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return obj


RUNNING_POD = pod("Running", apps=[app(RUNNING, ready=True)], ready=True)


@pytest.mark.parametrize(
    ("row", "obj", "lost", "expected"),
    [
        ("running", RUNNING_POD, False, ("Running", 0)),
        (
            "crash loop",
            pod("Running", apps=[app(_waiting("CrashLoopBackOff"), restarts=2)]),
            False,
            ("CrashLoopBackOff", 2),
        ),
        (
            "image missing",
            pod("Pending", apps=[app(_waiting("ImagePullBackOff"))]),
            False,
            ("ImagePullBackOff", 0),
        ),
        (
            "image never pulled",
            pod("Pending", apps=[app(_waiting("ErrImageNeverPull"))]),
            False,
            ("ErrImageNeverPull", 0),
        ),
        ("completed", pod("Succeeded", apps=[app(DONE)]), False, ("Completed", 0)),
        (
            "error",
            pod("Failed", apps=[app({"terminated": {"exitCode": 1, "reason": "Error"}})]),
            False,
            ("Error", 0),
        ),
        (
            "terminating",
            _terminating(pod("Running", apps=[app(RUNNING, ready=True)], ready=True)),
            False,
            ("Terminating", 0),
        ),
        ("node lost", RUNNING_POD, True, ("NodeLost", 0)),
        (
            "node lost while terminating",
            _terminating(pod("Running", apps=[app(RUNNING, ready=True)], ready=True)),
            True,
            ("Unknown", 0),
        ),
        # What the node last said still holds for a finished or never started pod.
        ("completed, node lost", pod("Succeeded", apps=[app(DONE)]), True, ("Completed", 0)),
        ("pending, node lost", pod("Pending"), True, ("Pending", 0)),
    ],
)
def test_status_rows_of_the_issue(
    row: str, obj: dict[str, Any], lost: bool, expected: tuple[str, int]
) -> None:
    assert _pod_status(obj, node_lost=lost) == expected, row


def test_the_row_reads_node_lost_from_the_pods_node() -> None:
    obj = pod("Running", apps=[app(RUNNING, ready=True)], ready=True)
    obj["spec"]["nodeName"] = "n1"
    obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    now = 1767225600.0 + 3 * 60 + 2  # 2026-01-01T00:03:02Z
    assert _pod_row(obj, wide=True, all_namespaces=False, now=now, lost=frozenset({"n1"})) == [
        "p",
        "1/1",
        "NodeLost",
        "0",
        "3m2s",
        "<none>",
        "n1",
    ]
    assert _pod_row(obj, wide=False, all_namespaces=True, now=now, lost=frozenset({"n2"})) == [
        "default",
        "p",
        "1/1",
        "Running",
        "0",
        "3m2s",
    ]


def test_restarts_say_when_the_last_one_was_as_kubectl() -> None:
    crashed = app(_waiting("CrashLoopBackOff"), restarts=2)
    crashed["lastState"] = {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:00:00Z"}}
    obj = pod("Running", apps=[crashed, app(RUNNING, ready=True)])
    obj["metadata"]["creationTimestamp"] = "2025-12-31T23:00:00Z"
    now = 1767225600.0 + 5 * 60  # 2026-01-01T00:05:00Z
    row = _pod_row(obj, wide=False, all_namespaces=False, now=now)
    assert row[2:5] == ["CrashLoopBackOff", "2 (5m ago)", "65m"]
    crashed["lastState"] = {}
    assert _pod_row(obj, wide=False, all_namespaces=False, now=now)[3] == "2"
