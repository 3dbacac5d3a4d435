"""Issue 16 items 4 and 5 on the real engine: a crash-looping container keeps exactly
``max_dead_containers_per_container`` terminated containers besides its current one (older
ones removed, oldest first), the node as a whole keeps at most ``max_dead_containers`` of
them (image GC's run), and a container writing its log as fast as it can stays within the
json-file bound ``container_log_max_size`` x ``container_log_max_files`` the agent
configured."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from agent.types import LABEL_ATTEMPT, LABEL_CONTAINER
from tests.helpers import AgentProcess, node_containers, pod_manifest, wait_for

DEAD_KEPT = 2
LOG_MAX_BYTES = 100 * 1024
LOG_FILES = 2
LINE_SLACK_BYTES = 64 * 1024  # the driver rotates after the write that crosses the size
DEAD_ON_NODE = 1
# Fails on its first two attempts (the count lives in an emptyDir), then runs: each container
# ends with a running attempt 2 and a dead attempt 1 the per-container bound (1) keeps.
FAIL_TWICE = 'n=$(cat /count/$C 2>/dev/null || echo 0); echo $((n+1)) >/count/$C; \
[ "$n" -ge 2 ] && exec sleep 3600; exit 1'


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


def test_the_node_wide_dead_container_maximum_holds(
    make_agent: Callable[..., AgentProcess], docker_client: docker.DockerClient
) -> None:
    """Three containers each leave one dead attempt the per-container bound keeps; the node's
    bound (1) leaves one of the three: without it three would stay."""
    agent = make_agent(
        max_dead_containers_per_container=1,
        max_dead_containers=DEAD_ON_NODE,
        image_gc_period_s=0.5,  # the node-wide bound is applied by image GC's runs
        backoff_initial_s=0.5,
        backoff_max_s=0.5,
    ).start()
    names = ["a", "b", "c"]
    containers = [
        {
            "name": name,
            "command": ["sh", "-c", FAIL_TWICE],
            "env": [{"name": "C", "value": name}],
            "volumeMounts": [{"name": "count", "mountPath": "/count"}],
        }
        for name in names
    ]
    agent.write_manifest(
        "p.json", pod_manifest("dead", containers, volumes=[{"name": "count", "emptyDir": {}}])
    )
    seen: list[dict[str, list[tuple[int, str]]]] = []

    def settled() -> bool:
        mine: dict[str, list[tuple[int, str]]] = {}
        for c in node_containers(docker_client, agent.node_name):
            name = c.labels.get(LABEL_CONTAINER)
            if name in names:
                mine.setdefault(name, []).append((int(c.labels[LABEL_ATTEMPT]), c.status))
        seen.append(mine)
        latest_running = all(max(mine.get(n, [(-1, "")])) == (2, "running") for n in names)
        dead = [s for found in mine.values() for s in found if s[1] == "exited"]
        return latest_running and len(dead) == DEAD_ON_NODE

    try:
        wait_for(settled, timeout_s=60, what=f"{DEAD_ON_NODE} dead container on the node")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; attempts and states seen last: {seen[-3:]}") from None
    for _ in range(5):  # and it stays so (the runs go on every half second)
        dead = [
            c
            for c in node_containers(docker_client, agent.node_name)
            if c.labels.get(LABEL_CONTAINER) in names and c.status == "exited"
        ]
        assert len(dead) == DEAD_ON_NODE, dead
