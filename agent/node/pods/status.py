"""Pod status in the Kubernetes ``v1 PodStatus`` shape, computed from runtime records (pure).

The pod worker gathers what it knows (latest and previous container records, restart counts,
why a container is waiting) into :class:`ContainerView` values; this module turns them into the
JSON document the API serves and the master will receive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from agent.node.runtime.base import ContainerRecord
from agent.types import Pod, RestartPolicy

PHASE_PENDING = "Pending"
PHASE_RUNNING = "Running"
PHASE_SUCCEEDED = "Succeeded"
PHASE_FAILED = "Failed"
PHASE_UNKNOWN = "Unknown"
POD_INITIALIZING = "PodInitializing"  # the waiting reason of containers before init is done
PHASES = (PHASE_PENDING, PHASE_RUNNING, PHASE_SUCCEEDED, PHASE_FAILED, PHASE_UNKNOWN)


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class ContainerView:
    name: str
    image: str
    current: ContainerRecord | None
    previous: ContainerRecord | None
    restart_count: int
    waiting_reason: str | None = None
    waiting_message: str = ""
    will_restart: bool = True
    started: bool = True  # while running: its startup probe passed (or it has none)
    ready: bool = True  # while running: its readiness probe passes (or it has none)
    # While running: the last sd_notify STATUS= (escaped, bounded), shown as the running
    # state's message (our extension: Kubernetes' running state has only startedAt).
    notify_status: str = ""
    # ``imageID`` as shown (the pinned image's docker-pullable:// or docker:// name); "" takes
    # the record's own image id.
    image_id: str = ""


def _terminated(record: ContainerRecord) -> dict[str, Any]:
    code = record.exit_code if record.exit_code is not None else 0
    if record.oom_killed:
        reason = "OOMKilled"
    elif code == 0:
        reason = "Completed"
    else:
        reason = "Error"
    state: dict[str, Any] = {
        "exitCode": code,
        "reason": reason,
        "startedAt": rfc3339(record.started_at),
        "finishedAt": rfc3339(record.finished_at),
        "containerID": f"docker://{record.id}",
    }
    if record.error:
        state["message"] = record.error
    return {"terminated": state}


def _state(view: ContainerView) -> dict[str, Any]:
    record = view.current
    if view.waiting_reason is not None or record is None or not record.ever_started:
        waiting: dict[str, Any] = {"reason": view.waiting_reason or "ContainerCreating"}
        if view.waiting_message:
            waiting["message"] = view.waiting_message
        return {"waiting": waiting}
    if record.running:
        running: dict[str, Any] = {"startedAt": rfc3339(record.started_at)}
        if view.notify_status:
            running["message"] = view.notify_status
        return {"running": running}
    return _terminated(record)


def container_status(view: ContainerView) -> dict[str, Any]:
    record = view.current
    state = _state(view)
    # While waiting to restart, the exit that caused the wait is the last state.
    last_record = view.previous
    if "waiting" in state and record is not None and record.ever_started and not record.running:
        last_record = record
    status: dict[str, Any] = {
        "name": view.name,
        "state": state,
        "lastState": _terminated(last_record) if last_record is not None else {},
        "ready": record is not None and record.running and "running" in state and view.ready,
        "started": record is not None and record.running and view.started,
        "restartCount": view.restart_count,
        "image": view.image,
        "imageID": view.image_id or (record.image_id if record is not None else ""),
    }
    if record is not None:
        status["containerID"] = f"docker://{record.id}"
    return status


def pod_phase(pod: Pod, views: Sequence[ContainerView]) -> str:
    # A container that was never created and never will be (its preStart preconditions
    # failed under restartPolicy Never) counts as one that failed.
    gave_up = [v.current is None and not v.will_restart for v in views]
    views = [v for v, out in zip(views, gave_up, strict=True) if not out]
    records = [v.current for v in views]
    if any(r is not None and r.running for r in records):
        return PHASE_RUNNING
    if any(r is None or not r.ever_started for r in records):
        return PHASE_PENDING
    # Every container has run and none runs now.
    if any(v.will_restart for v in views):
        return (
            PHASE_RUNNING if pod.spec.restart_policy is not RestartPolicy.NEVER else PHASE_PENDING
        )
    codes = [r.exit_code for r in records if r is not None]
    failed = any(gave_up) or not all(code == 0 for code in codes)
    return PHASE_FAILED if failed else PHASE_SUCCEEDED


def init_container_status(view: ContainerView) -> dict[str, Any]:
    """An init container's status: ``ready`` once it has succeeded, as kubelet reports it."""
    status = container_status(view)
    record = view.current
    status["ready"] = (
        "terminated" in status["state"] and record is not None and record.exit_code == 0
    )
    return status


def _init_failed(pod: Pod, views: Sequence[ContainerView]) -> bool:
    """An init container failed and will not run again (``restartPolicy: Never``): the pod
    has failed (kubelet's getPhase)."""
    return pod.spec.restart_policy is RestartPolicy.NEVER and any(
        v.current is not None
        and v.current.ever_started
        and not v.current.running
        and (v.current.exit_code != 0 or v.current.oom_killed)
        for v in views
    )


def _condition(
    kind: str, ok: bool, previous: dict[str, dict[str, Any]], now: datetime, reason: str = ""
) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(kind)
    since = before["lastTransitionTime"] if before and before["status"] == status else None
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastTransitionTime": since or rfc3339(now),
    }
    if reason and not ok:
        condition["reason"] = reason
    return condition


def pod_status(
    pod: Pod,
    views: Sequence[ContainerView],
    *,
    host_ip: str,
    pod_ip: str,
    start_time: datetime | None,
    previous: dict[str, Any] | None,
    now: datetime,
    init_views: Sequence[ContainerView] = (),
    initialized: bool = True,
) -> dict[str, Any]:
    if init_views:
        # kubelet: in a pod with init containers, a container not created yet waits with
        # reason PodInitializing (not ContainerCreating).
        views = [
            replace(v, waiting_reason=POD_INITIALIZING)
            if v.waiting_reason is None and (v.current is None or not v.current.ever_started)
            else v
            for v in views
        ]
        init_views = [
            replace(v, waiting_reason=POD_INITIALIZING)
            if v.waiting_reason is None and v.current is None
            else v
            for v in init_views
        ]
    statuses = [container_status(v) for v in views]
    if initialized:
        phase = pod_phase(pod, views)
    else:
        phase = PHASE_FAILED if _init_failed(pod, init_views) else PHASE_PENDING
    all_ready = bool(statuses) and all(s["ready"] for s in statuses)
    before = {c["type"]: c for c in (previous or {}).get("conditions", [])}
    not_ready = "ContainersNotReady"
    conditions = [
        _condition("PodScheduled", True, before, now),
        _condition("Initialized", initialized, before, now, "ContainersNotInitialized"),
        _condition("ContainersReady", all_ready, before, now, not_ready),
        _condition("Ready", all_ready, before, now, not_ready),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}] if pod_ip else [],
        "startTime": rfc3339(start_time),
        "containerStatuses": statuses,
    }
    if init_views:
        status["initContainerStatuses"] = [init_container_status(v) for v in init_views]
    return status
