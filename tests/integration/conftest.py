"""Integration fixtures: a real dockerd (the bootstrap starts it), the local busybox test image,
and agent processes that are killed and whose containers are removed after each test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.helpers import AgentProcess, MasterProcess, ensure_test_image, remove_node_containers


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"integration tests need a running dockerd (run scripts/bootstrap.sh): {exc}")
    ensure_test_image(client)
    yield client
    client.close()


@pytest.fixture
def make_agent(
    tmp_path: Path, docker_client: docker.DockerClient
) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def make(name: str | None = None, **config: Any) -> AgentProcess:
        node = name or f"it-{uuid.uuid4().hex[:10]}"
        # One directory per agent process, even for two agents claiming the same node name.
        agent = AgentProcess(tmp_path / f"{node}-{len(agents)}", node, **config)
        agents.append(agent)
        return agent

    yield make
    problems = []
    for agent in agents:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill9()
        remove_node_containers(docker_client, agent.node_name)
        log = agent.log_path.read_text(errors="replace") if agent.log_path.exists() else ""
        # blockbuster (NODE_AGENT_BLOCKBUSTER=1) turns a blocking call on the loop into an
        # exception; wherever it surfaced, the test fails.
        for marker in ("BlockingError", "task died unexpectedly", "Traceback"):
            if marker in log:
                problems.append(
                    f"{agent.node_name}: {marker!r} in the agent log:\n{agent.log_tail(40)}"
                )
    assert not problems, "\n".join(problems)


@pytest.fixture
def make_master(tmp_path: Path) -> Iterator[Callable[..., MasterProcess]]:
    masters: list[MasterProcess] = []

    def make(**settings: Any) -> MasterProcess:
        master = MasterProcess(tmp_path / f"master-{len(masters)}", **settings)
        masters.append(master)
        return master

    yield make
    problems = []
    for master in masters:
        if master.proc is not None and master.proc.poll() is None:
            master.proc.kill()
            master.proc.wait()
        log = master.log_path.read_text(errors="replace") if master.log_path.exists() else ""
        for marker in ("BlockingError", "task died unexpectedly", "Traceback"):
            if marker in log:
                problems.append(f"master: {marker!r} in its log:\n{log[-3000:]}")
    assert not problems, "\n".join(problems)
