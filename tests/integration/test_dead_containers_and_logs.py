"""Issue 16 items 4 and 5 on the real engine: a crash-looping container keeps exactly
``max_dead_containers_per_container`` terminated containers besides its current one (older
ones removed, oldest first), and a container writing its log as fast as it can stays within the json-file bound
``container_log_max_size`` x ``container_log_max_files`` the agent configured."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from agent.types import LABEL_CONTAINER
from tests.helpers import AgentProcess, node_containers, pod_manifest, wait_for

DEAD_KEPT = 2
LOG_MAX_BYTES = 100 * 1024
LOG_FILES = 2
LINE_SLACK_BYTES = 64 * 1024  # the driver rotates after the write that crosses the size


def test_dead_containers_kept_exactly_n_and_logs_bounded(
    make_agent: Callable[..., AgentProcess], docker_client: docker.DockerClient
) -> None:
    agent = make_agent(
        max_dead_containers_per_container=DEAD_KEPT,
        container_log_max_size="100k",
        container_log_max_files=LOG_FILES,
        backoff_initial_s=0.5,
        backoff_max_s=0.5,
    ).start()
    crasher = {"name": "crasher", "command": ["sh", "-c", "sleep 1; exit 1"]}
    writer = {"name": "writer", "command": ["sh", "-c", "yes 0123456789abcdef0123456789abcdef"]}
    agent.write_manifest("p.json", pod_manifest("churn", [crasher, writer]))

    def of(name: str) -> list[Any]:
        return [
            c
            for c in node_containers(docker_client, agent.node_name)
            if c.labels.get(LABEL_CONTAINER) == name
        ]

    def restarts() -> int:
        pod = agent.pod("churn")
        statuses = pod["status"].get("containerStatuses", []) if pod else []
        return next((s["restartCount"] for s in statuses if s["name"] == "crasher"), 0)

    seen: list[tuple[int, list[str]]] = []

    def exactly_n_dead() -> bool:
        mine = of("crasher")
        seen.append((restarts(), sorted(c.status for c in mine)))
        exited = [c for c in mine if c.status == "exited"]
        return seen[-1][0] >= DEAD_KEPT + 2 and len(exited) == DEAD_KEPT

    try:
        wait_for(exactly_n_dead, timeout_s=60, what=f"{DEAD_KEPT} dead containers kept")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; restarts and states seen last: {seen[-5:]}") from None
    # While the latest attempt waits out its back-off it is dead too: one more; never more.
    for _ in range(5):
        assert len([c for c in of("crasher") if c.status == "exited"]) <= DEAD_KEPT + 1

    [writing] = of("writer")
    writing.reload()
    assert writing.attrs["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "100k", "max-file": str(LOG_FILES)},
    }
    log_path = Path(writing.attrs["LogPath"])
    rotated = log_path.with_name(log_path.name + ".1")
    wait_for(rotated.exists, what="the writer's log rotated")

    def files() -> list[Path]:
        return sorted(log_path.parent.glob(log_path.name + "*"))

    # Rotated several times over by now: still at most LOG_FILES files, each within the bound.
    wait_for(lambda: os.path.getsize(rotated) > 0, what="a full rotated file")
    for _ in range(20):
        found = files()
        assert len(found) <= LOG_FILES, found
        for path in found:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue  # rotated away between the listing and the stat
            assert size <= LOG_MAX_BYTES + LINE_SLACK_BYTES, (path, size)
