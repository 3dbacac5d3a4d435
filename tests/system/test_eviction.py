"""The master moves scheduler-placed pods off a dead node after ``pod_eviction_timeout_s``, never
pinned pods, and moves nothing when every node goes NotReady at once (disruption mode). The
dead node, back, removes what was moved away. Real master and agent processes on loopback."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.helpers import (
    AgentProcess,
    MasterProcess,
    node_containers,
    node_ready,
    pod_manifest,
    running_phase,
    sleeper,
    wait_for,
)

pytestmark = pytest.mark.docker

EVICTION_TIMEOUT_S = 2.0


def _cluster(
    make_master: Callable[..., MasterProcess], make_agent: Callable[..., AgentProcess]
) -> tuple[MasterProcess, dict[str, AgentProcess]]:
    master = make_master(pod_eviction_timeout_s=EVICTION_TIMEOUT_S).start()
    agents = {}
    for _ in range(2):
        agent = make_agent(
            f"evict-{uuid.uuid4().hex[:8]}",
            master=master.url,
            ca_cert_hash=[master.pin],
            master_backoff_max_s=1.0,
        ).start()
        agents[agent.node_name] = agent
    for name in agents:
        wait_for(lambda n=name: node_ready(master, n), what=f"{name} Ready")
    return master, agents


def _apply(master: MasterProcess, tmp_path: Path, name: str, **spec: Any) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(pod_manifest(name, [sleeper()], grace_s=0, **spec)))
    done = master.nodectl("apply", "-f", str(path))
    assert done.returncode == 0, done.stderr


def _bound_running(master: MasterProcess, name: str) -> str | None:
    pod = master.pods().get(name)
    if pod and pod["status"].get("phase") == "Running":
        return str(pod["spec"].get("nodeName") or "") or None
    return None


def _log_lines(master: MasterProcess, msg: str) -> list[dict[str, Any]]:
    lines = master.log_path.read_text(errors="replace").splitlines()
    return [e for e in map(json.loads, filter(None, lines)) if e.get("msg") == msg]


def test_scheduled_pod_moves_off_a_dead_node_and_the_node_drops_it_when_back(
    make_master: Callable[..., MasterProcess],
    make_agent: Callable[..., AgentProcess],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master, agents = _cluster(make_master, make_agent)
    _apply(master, tmp_path, "mover")
    first = wait_for(lambda: _bound_running(master, "mover"), what="mover Running")
    (other,) = set(agents) - {first}
    _apply(master, tmp_path, "pinned", nodeName=first)
    wait_for(lambda: running_phase(agents[first], "pinned"), what="pinned Running")

    agents[first].kill9()  # its containers keep running: the node is dead to the master only
    second = wait_for(
        lambda: (n := _bound_running(master, "mover")) != first and n,
        timeout_s=60,
        what="mover evicted and Running on the other node",
    )
    assert second == other
    assert running_phase(agents[other], "mover")
    assert master.pods()["pinned"]["spec"]["nodeName"] == first, "a pinned pod moved"
    events = master.nodectl("describe", "pod", "mover").stdout
    assert "Evicted" in events and first in events

    agents[first].start()
    wait_for(lambda: node_ready(master, first), what="dead node back")
    wait_for(
        lambda: (
            not any(
                c.labels.get("io.node-agent.pod.name") == "mover"
                for c in node_containers(docker_client, first)
            )
        ),
        what="the returning node removes the pod that moved away",
    )
    assert running_phase(agents[first], "pinned")
    assert _bound_running(master, "mover") == other


def test_every_node_not_ready_at_once_moves_nothing(
    make_master: Callable[..., MasterProcess],
    make_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    master, agents = _cluster(make_master, make_agent)
    _apply(master, tmp_path, "stay")
    node = wait_for(lambda: _bound_running(master, "stay"), what="stay Running")
    for agent in agents.values():
        agent.kill9()
    wait_for(
        lambda: _log_lines(master, "eviction held in disruption mode"),
        timeout_s=60,
        what="master holds evictions past the timeout",
    )
    assert _log_lines(master, "disruption mode: too many nodes NotReady at once, evicting no pods")
    assert master.pods()["stay"]["spec"]["nodeName"] == node
    assert not _log_lines(master, "pod evicted from a NotReady node")
