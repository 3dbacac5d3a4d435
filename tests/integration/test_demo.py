"""``make run``'s script (scripts/demo.sh) with real processes (issue 17, item 9): with the
master's port taken, or the agent's, it exits non-zero at once, printing the bind error and
the end of the dying process's log, and never claims a pod keeps running; with ``DEMO_PORT`` and ``DEMO_DIR`` chosen
it reaches a Running demo pod (``--until-running`` stops it there instead of following the
agent's log).

Each test has its own ports, node name and directory, so it runs beside a user's ``make run``
and on a pytest-xdist worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import docker
import pytest

from tests.helpers import REPO_ROOT, free_port, remove_node_containers

pytestmark = pytest.mark.docker

SAFETY_TIMEOUT_S = 300  # a hung script fails the test instead of the run; never the assertion


def demo(
    tmp_path: Path, port: int, node: str, *flags: str, health_port: int = 0
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        DEMO_PORT=str(port),
        DEMO_DIR=str(tmp_path / "demo"),
        DEMO_NODE=node,
        DEMO_HEALTH_PORT=str(health_port or free_port()),
        DEMO_API_PORT=str(free_port()),
    )
    env.pop("NODECTL_CONFIG", None)
    # Its own session: on a timeout the script's master and agent go with it.
    proc = subprocess.Popen(
        ["bash", "scripts/demo.sh", *flags],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=SAFETY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"scripts/demo.sh did not end\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_masters_port_taken_fails_at_once_with_the_bind_error(tmp_path: Path) -> None:
    node = f"demo-{uuid.uuid4().hex[:8]}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = demo(tmp_path, port, node, "--until-running")
    assert done.returncode == 1, done
    assert "demo: the master exited (status 1)" in done.stderr, done.stderr
    assert f"('127.0.0.1', {port}): address already in use" in done.stderr, done.stderr
    assert f"last lines of {tmp_path / 'demo' / 'master.log'}:" in done.stderr, done.stderr
    assert "keeps running" not in done.stdout + done.stderr
    assert done.stdout.count("demo stopped") == 1, done.stdout
    assert "Traceback" not in done.stdout


def test_a_chosen_port_and_directory_reach_a_running_demo_pod(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    node = f"demo-{uuid.uuid4().hex[:8]}"
    port = free_port()
    try:
        done = demo(tmp_path, port, node, "--until-running")
        assert done.returncode == 0, done
        assert f"master on 127.0.0.1:{port}, node {node}" in done.stdout
        rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line}
        assert rows["demo-web"][1:3] == ["2/2", "Running"], done.stdout
        assert rows[node][1].split(",")[0] == "Ready", done.stdout  # or Ready,SchedulingDisabled
        assert done.stdout.count("demo stopped; the pod demo-web keeps running") == 1
        conf = (tmp_path / "demo" / "master" / "admin.conf").read_text()
        assert f'server = "https://127.0.0.1:{port}"' in conf
    finally:
        remove_node_containers(docker_client, node)


def test_the_agent_dying_ends_the_demo_with_its_error(tmp_path: Path) -> None:
    node = f"demo-{uuid.uuid4().hex[:8]}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        health_port = busy.getsockname()[1]
        done = demo(tmp_path, free_port(), node, "--until-running", health_port=health_port)
    assert done.returncode == 1, done
    assert "demo: the agent exited (status 1)" in done.stderr, done.stderr
    assert f"('127.0.0.1', {health_port}): address already in use" in done.stderr
    assert f"last lines of {tmp_path / 'demo' / 'agent.log'}:" in done.stderr
    assert "keeps running" not in done.stdout + done.stderr
