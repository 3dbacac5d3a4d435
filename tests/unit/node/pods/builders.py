"""Builders shared by the pod tests: manifests → pods, container records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.manifest import parse_pod
from agent.node.pods.specs import SpecContext
from agent.node.runtime.base import ContainerRecord, ContainerState
from agent.types import Pod

T0 = datetime(2026, 1, 1, tzinfo=UTC)
UID = "abcdef12-0000-0000-0000-000000000000"


def make_ctx(state_dir: Path = Path("/state")) -> SpecContext:
    return SpecContext(
        node_name="n1", sandbox_image="pause:1", state_dir=state_dir, host_ip="10.1.2.3"
    )


def container(name: str = "c", image: str = "img:1", **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, **extra}


def make_pod(
    *containers: dict[str, Any],
    restart_policy: str = "Always",
    name: str = "web",
    namespace: str = "shop",
    uid: str = UID,
    source: str = "file:/m/web.yaml",
    **spec: Any,
) -> Pod:
    """A parsed pod; ``spec`` keys are manifest spec fields (``volumes``, ``hostNetwork``...)."""
    return parse_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": {
                "restartPolicy": restart_policy,
                "containers": list(containers) or [container()],
                **spec,
            },
        },
        source=source,
        node_name="n1",
    )


def record(
    state: ContainerState,
    *,
    attempt: int = 0,
    code: int | None = None,
    oom: bool = False,
    started: datetime | None = T0,
    ran_s: float = 5.0,
    error: str = "",
    name: str = "c",
) -> ContainerRecord:
    """An app container record as the runtime would report it."""
    finished = (
        started + timedelta(seconds=ran_s)
        if started is not None and state is ContainerState.EXITED
        else None
    )
    return ContainerRecord(
        id=f"id{attempt}",
        name=f"{name}_{attempt}",
        labels={"io.node-agent.attempt": str(attempt), "io.node-agent.container": name},
        state=state,
        started_at=started,
        finished_at=finished,
        exit_code=code,
        oom_killed=oom,
        error=error,
        image_id="sha256:abc",
    )
