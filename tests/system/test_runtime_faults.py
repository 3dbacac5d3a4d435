"""Faults below the agent: the Docker engine restarted under it, and a state directory that
fills up or turns read-only. Pods must keep running (or come back) and nothing may be
duplicated; the agent says what is wrong in /healthz and in its node conditions."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.node.pods.checkpoint import CheckpointStore
from tests.helpers import (
    REPO_ROOT,
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

DOCKER_PIDFILE = Path("/var/run/docker.pid")


def _dockerd_pid() -> int:
    pid = int(DOCKER_PIDFILE.read_text().strip())
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
    return pid


def _start_dockerd() -> None:
    """The same way the suite's setup starts it (systemd when booted, else detached)."""
    subprocess.run(
        ["bash", "scripts/bootstrap.sh", "--no-venv", "--no-images"],
        cwd=REPO_ROOT,
        check=True,
        timeout=180,
        capture_output=True,
    )


def _pods_exactly_once(client: docker.DockerClient, node: str, pods: set[str]) -> bool:
    found: dict[str, list[str]] = {}
    for c in node_containers(client, node):
        if c.status == "running":
            found.setdefault(c.labels.get("io.node-agent.pod.name", ""), []).append(
                c.labels.get("io.node-agent.kind", "")
            )
    return set(found) == pods and all(sorted(k) == ["app", "sandbox"] for k in found.values())


def test_dockerd_restart_agent_recovers_every_pod_without_duplicates(
    make_agent: Callable[..., AgentProcess], docker_client: docker.DockerClient
) -> None:
    agent = make_agent(f"dockerd-{uuid.uuid4().hex[:8]}")
    pods = {"web", "worker"}
    for name in pods:
        agent.write_manifest(f"{name}.json", pod_manifest(name, [sleeper()], grace_s=0))
    agent.start()
    for name in pods:
        wait_for(lambda n=name: running_phase(agent, n), what=f"{name} Running")

    pid = _dockerd_pid()
    try:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout_s=90, what="dockerd stopped")

        def runtime_unhealthy() -> bool:
            status, body = agent.get("/healthz")
            return status == 503 and "runtime:" in body

        wait_for(runtime_unhealthy, what="/healthz reports the runtime down")
        agent.assert_alive()
    finally:
        _start_dockerd()

    agent.wait_healthy(timeout_s=90)
    wait_for(
        lambda: _pods_exactly_once(docker_client, agent.node_name, pods),
        timeout_s=60,
        what="every pod running again, each container once",
    )
    for name in pods:
        wait_for(lambda n=name: running_phase(agent, n), what=f"{name} Running again")


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _checkpointed_pods(path: Path) -> set[str]:
    data = CheckpointStore(path).load()
    assert data is not None
    return {entry["manifest"]["metadata"]["name"] for entry in data["pods"].values()}


def _condition(master: MasterProcess, node: str, kind: str) -> dict[str, Any]:
    found = master.node(node)
    assert found is not None
    return next(c for c in found["status"]["conditions"] if c["type"] == kind)


def test_full_or_readonly_state_dir_keeps_old_checkpoint_and_pods(
    make_agent: Callable[..., AgentProcess],
    make_master: Callable[..., MasterProcess],
    tmp_path: Path,
) -> None:
    with _small_tmpfs(tmp_path / "statefs", "2m") as fs:
        master = make_master().start()
        agent = make_agent(
            f"disk-{uuid.uuid4().hex[:8]}",
            state_dir=str(fs / "state"),
            master=master.url,
            ca_cert_hash=[master.pin],
            master_backoff_max_s=1.0,
        )
        checkpoint = fs / "state" / "checkpoint.json"
        agent.write_manifest("one.json", pod_manifest("one", [sleeper()], grace_s=0))
        agent.start()
        wait_for(lambda: running_phase(agent, "one"), what="one Running")
        wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
        wait_for(lambda: _checkpointed_pods(checkpoint) == {"one"}, what="one checkpointed")

        def unhealthy(code: str) -> bool:
            status, body = agent.get("/healthz")
            return status == 503 and "checkpoint:" in body and code in body

        for fault, code in (("full", "ENOSPC"), ("read-only", "EROFS")):
            saved = checkpoint.read_bytes()
            newcomer = f"during-{fault.replace('-', '')}"
            if fault == "full":
                filler = _fill(fs)
            else:
                subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
            agent.write_manifest(f"{newcomer}.json", pod_manifest(newcomer, [sleeper()], grace_s=0))
            wait_for(lambda c=code: unhealthy(c), what=f"/healthz reports the {fault} state dir")
            condition = wait_for(
                lambda: (
                    (c := _condition(master, agent.node_name, "CheckpointWritable"))["status"]
                    == "False"
                    and c
                ),
                what="master sees CheckpointWritable=False",
            )
            assert code in condition["message"] and condition["reason"] == "CheckpointWriteFailed"
            # The old checkpoint is intact and readable; the pods keep running, new ones start.
            assert checkpoint.read_bytes() == saved
            assert newcomer not in _checkpointed_pods(checkpoint)
            wait_for(lambda n=newcomer: running_phase(agent, n), what=f"{newcomer} Running")
            assert running_phase(agent, "one")

            if fault == "full":
                filler.unlink()
            else:
                subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
            agent.wait_healthy(timeout_s=30)
            wait_for(
                lambda n=newcomer: n in _checkpointed_pods(checkpoint),
                what="checkpoint written again once the disk is fixed",
            )
            wait_for(
                lambda: (
                    _condition(master, agent.node_name, "CheckpointWritable")["status"] == "True"
                ),
                what="master sees CheckpointWritable=True again",
            )
        assert json.loads(checkpoint.read_text())  # still a well-formed file
        agent.stop()
