"""``kill -9`` of the agent at random crash points during pod churn (create, replace, delete):
after every restart the node's containers are exactly the desired ones, with no duplicates,
no orphans, and no restart of a pod the churn did not touch.

Churn comes from the static manifest directory so the desired set is known to the test without
a master. The crash point and the hit count are drawn from a seeded generator (the seed is in
the failure message); a round whose point is not reached is ended with a plain ``kill -9`` so
every round still crashes mid-churn.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from typing import Any

import docker
import pytest

from agent.node.crashpoints import ENV_VAR, POINTS
from tests.helpers import AgentProcess, node_containers, pod_manifest, wait_for

pytestmark = pytest.mark.docker

ROUNDS = int(os.environ.get("CRASH_TEST_ROUNDS", "50"))
POOL = ("churn-a", "churn-b", "churn-c", "churn-d")
KILLED_BY_SIGKILL = -9


def _manifest(name: str, generation: int) -> dict[str, Any]:
    container = {
        "name": "main",
        "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
        "env": [{"name": "GENERATION", "value": str(generation)}],
    }
    return pod_manifest(name, [container], grace_s=0)


def _node_state(client: docker.DockerClient, node: str) -> dict[str, list[tuple[str, str, str]]]:
    """Pod name -> [(container id, kind, status)] for every container of the node."""
    found: dict[str, list[tuple[str, str, str]]] = {}
    for c in node_containers(client, node):
        found.setdefault(c.labels.get("io.node-agent.pod.name", ""), []).append(
            (c.id, c.labels.get("io.node-agent.kind", ""), c.status)
        )
    return found


def _generation(client: docker.DockerClient, container_id: str) -> int:
    env = client.api.inspect_container(container_id)["Config"]["Env"]
    return int(next(e.split("=", 1)[1] for e in env if e.startswith("GENERATION=")))


def _converged(
    client: docker.DockerClient, node: str, desired: dict[str, int]
) -> Callable[[], tuple[dict[str, set[str]]] | None]:
    """A condition for wait_for: the container ids per pod once converged (in a 1-tuple, so an
    empty node is a truthy answer too)."""

    def check() -> tuple[dict[str, set[str]]] | None:
        state = _node_state(client, node)
        if set(state) != set(desired):
            return None
        ids: dict[str, set[str]] = {}
        for name, containers in state.items():
            kinds = sorted(kind for _, kind, _ in containers)
            if kinds != ["app", "sandbox"] or any(s != "running" for _, _, s in containers):
                return None
            app = next(cid for cid, kind, _ in containers if kind == "app")
            if _generation(client, app) != desired[name]:
                return None
            ids[name] = {cid for cid, _, _ in containers}
        return (ids,)

    return check


def test_kill9_at_random_crash_points_converges_exactly(
    make_agent: Callable[..., AgentProcess], docker_client: docker.DockerClient
) -> None:
    seed = int(os.environ.get("CRASH_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    agent = make_agent(f"crash-{uuid.uuid4().hex[:8]}")
    node = agent.node_name
    desired: dict[str, int] = {}
    generation = 0
    agent.start()
    (ids,) = wait_for(_converged(docker_client, node, desired), what="empty start")
    hits: dict[str, int] = {}

    for round_no in range(ROUNDS):
        where = f"seed {seed}, round {round_no}"
        point = rng.choice(sorted(POINTS))
        count = rng.randint(1, 2)
        agent.stop()
        agent.start(wait_ready=False, env={ENV_VAR: f"{point}@{count}"})
        wait_for(
            lambda: (
                agent.proc is not None
                and (agent.proc.poll() is not None or agent.get("/healthz") == (200, "ok"))
            ),
            what=f"armed agent up or crashed ({where})",
        )
        # Churn: add a pod, replace one, delete one (whatever the pool allows).
        touched: set[str] = set()
        absent = [n for n in POOL if n not in desired]
        present = sorted(desired)
        ops: list[tuple[str, str]] = []
        if absent:
            ops.append(("add", rng.choice(absent)))
        if present:
            ops.append(("replace", rng.choice(present)))
        if len(present) > 2:
            ops.append(("delete", rng.choice([n for n in present if n not in touched])))
        for op, name in ops:
            if name in touched:
                continue
            touched.add(name)
            if op == "delete":
                (agent.manifest_dir / f"{name}.json").unlink()
                del desired[name]
            else:
                generation += 1
                desired[name] = generation
                agent.write_manifest(f"{name}.json", _manifest(name, generation))
        assert agent.proc is not None
        try:
            agent.proc.wait(timeout=8)
        except Exception:  # the point was not on this round's path: crash it anyway
            agent.kill9()
        else:
            hits[point] = hits.get(point, 0) + 1
        assert agent.proc.returncode == KILLED_BY_SIGKILL, f"{where}: {agent.log_tail()}"

        agent.start()
        (after,) = wait_for(
            _converged(docker_client, node, desired),
            timeout_s=45,
            what=f"exactly the desired containers after a crash at {point}@{count} ({where}); "
            f"desired {desired}, found {_node_state(docker_client, node)}",
        )
        untouched = set(desired) - touched
        assert {n: after[n] for n in untouched} == {n: ids[n] for n in untouched}, (
            f"{where}: a pod the churn did not touch was restarted"
        )
        ids = after

    print(f"seed {seed}: crash points reached {hits}")
    # Not vacuous: most rounds died at their crash point, and most points were reached.
    assert sum(hits.values()) >= ROUNDS // 2, hits
    assert len(hits) >= min(len(POINTS) // 2, ROUNDS // 3), hits
