"""Probes against the real engine through a real agent: readiness toggles Ready both ways (also
as the master's ``nodectl get pods`` READY column), a liveness failure restarts with back-off,
a startupProbe holds liveness off, and an httpGet probe reaches a busybox ``httpd`` in the pod.

Files the exec probes test are created and removed with ``docker exec`` from the test."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.helpers import AgentProcess, MasterProcess, node_ready, pod_manifest, wait_for

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]

SLEEP = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def exec_probe(*command: str, **timing: Any) -> dict[str, Any]:
    return {"exec": {"command": list(command)}, "periodSeconds": 1, **timing}


def status(agent: AgentProcess, pod: str, container: str = "main") -> dict[str, Any] | None:
    found = agent.pod(pod)
    for each in (found or {}).get("status", {}).get("containerStatuses", []):
        if each["name"] == container:
            return dict(each)
    return None


def condition(agent: AgentProcess, pod: str, kind: str) -> str | None:
    found = agent.pod(pod) or {}
    for each in found.get("status", {}).get("conditions", []):
        if each["type"] == kind:
            return str(each["status"])
    return None


def in_container(client: docker.DockerClient, container_id: str, script: str) -> str:
    """Run ``sh -c script`` in the container (as a user would with docker exec)."""
    code, output = client.containers.get(container_id).exec_run(["sh", "-c", script])
    assert code == 0 and isinstance(output, bytes), output
    return output.decode()


def running_id(agent: AgentProcess, pod: str, container: str = "main") -> str | None:
    found = status(agent, pod, container)
    if found is None or "running" not in found["state"]:
        return None
    return str(found["containerID"]).removeprefix("docker://")


def events_of(agent: AgentProcess, pod: str) -> list[tuple[str, str]]:
    return [
        (e["reason"], e["message"]) for e in agent.events() if e["involvedObject"]["name"] == pod
    ]


def test_readiness_toggles_ready_both_ways(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    probe = exec_probe("cat", "/tmp/ready", failureThreshold=1)
    other = {"name": "other", "command": SLEEP}
    agent.write_manifest(
        "ready.yaml",
        pod_manifest("ready", [{"name": "main", "command": SLEEP, "readinessProbe": probe}, other]),
    )
    main_id = wait_for(lambda: running_id(agent, "ready"), what="main running")
    wait_for(lambda: status(agent, "ready", "other")["ready"], what="other ready")  # type: ignore[index]
    # Running, not ready: the file the probe reads is not there.
    assert status(agent, "ready")["ready"] is False  # type: ignore[index]
    assert condition(agent, "ready", "Ready") == "False"
    assert condition(agent, "ready", "ContainersReady") == "False"

    in_container(docker_client, main_id, "touch /tmp/ready")
    wait_for(lambda: condition(agent, "ready", "Ready") == "True", what="pod Ready")
    assert condition(agent, "ready", "ContainersReady") == "True"
    assert status(agent, "ready")["ready"] is True  # type: ignore[index]

    in_container(docker_client, main_id, "rm /tmp/ready")
    wait_for(lambda: condition(agent, "ready", "Ready") == "False", what="pod not Ready again")
    assert status(agent, "ready")["restartCount"] == 0  # type: ignore[index]
    assert running_id(agent, "ready") == main_id  # readiness never restarts
    assert any(
        reason == "Unhealthy" and message.startswith("Readiness probe failed: ")
        for reason, message in events_of(agent, "ready")
    )


def test_liveness_failure_restarts_with_back_off(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    # Back-off 2 s, then 4 s: long enough to see each wait in the status.
    agent = make_agent(backoff_initial_s=2.0).start()
    main = {
        "name": "main",
        "command": ["sh", "-c", "touch /tmp/alive; trap 'exit 0' TERM; sleep 3600 & wait"],
        "livenessProbe": exec_probe(
            "cat", "/tmp/alive", failureThreshold=2, terminationGracePeriodSeconds=1
        ),
    }
    agent.write_manifest("live.yaml", pod_manifest("live", [main]))
    first = wait_for(lambda: running_id(agent, "live"), what="main running")

    def waiting_message() -> str | None:
        found = status(agent, "live") or {}
        waiting = found.get("state", {}).get("waiting", {})
        return waiting.get("message") if waiting.get("reason") == "CrashLoopBackOff" else None

    in_container(docker_client, first, "rm /tmp/alive")
    message = wait_for(waiting_message, what="killed, waiting to restart")
    assert message.startswith("back-off 2s ")
    second = wait_for(lambda: running_id(agent, "live"), what="restarted")
    assert second != first
    assert status(agent, "live")["restartCount"] == 1  # type: ignore[index]
    reasons = [reason for reason, _ in events_of(agent, "live")]
    assert reasons.index("Unhealthy") < reasons.index("Killing")
    killing = dict(events_of(agent, "live"))["Killing"]
    assert killing == "Container main failed liveness probe, will be restarted"

    # The restarted container is probed afresh (its own file exists: it stays up) until it
    # loses the file too; the second restart waits twice as long.
    in_container(docker_client, second, "rm /tmp/alive")
    message = wait_for(waiting_message, what="killed again")
    assert message.startswith("back-off 4s ")
    wait_for(lambda: status(agent, "live")["restartCount"] == 2, what="second restart")  # type: ignore[index]


def test_a_startup_probe_holds_liveness_off(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    main = {
        "name": "main",
        "command": SLEEP,
        # Each startup probe leaves a mark, so the test can tell that time passed with probes
        # running; the liveness probe would fail at once (no /tmp/alive) if it ran.
        "startupProbe": exec_probe(
            "sh", "-c", "echo x >> /tmp/marks; test -f /tmp/started", failureThreshold=120
        ),
        "livenessProbe": exec_probe("cat", "/tmp/alive", failureThreshold=1),
    }
    agent.write_manifest("startup.yaml", pod_manifest("startup", [main]))
    first = wait_for(lambda: running_id(agent, "startup"), what="main running")
    wait_for(
        lambda: (
            in_container(docker_client, first, "cat /tmp/marks 2>/dev/null || true").count("x") >= 5
        ),
        what="five startup probes",
    )
    found = status(agent, "startup")
    assert found is not None
    assert (found["started"], found["ready"], found["restartCount"]) == (False, False, 0)
    assert running_id(agent, "startup") == first

    in_container(docker_client, first, "touch /tmp/alive /tmp/started")
    wait_for(lambda: status(agent, "startup")["ready"], what="started and ready")  # type: ignore[index]
    assert status(agent, "startup")["started"] is True  # type: ignore[index]
    in_container(docker_client, first, "rm /tmp/alive")
    wait_for(
        lambda: status(agent, "startup")["restartCount"] == 1,  # type: ignore[index]
        what="liveness, now on, restarts it",
    )


def test_http_get_probe_reaches_httpd_in_the_pod(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    main = {
        "name": "main",
        "command": [
            "sh",
            "-c",
            "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www",
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {
            "httpGet": {"port": "http", "path": "/healthz"},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    agent.write_manifest("web.yaml", pod_manifest("web", [main]))
    wait_for(lambda: condition(agent, "web", "Ready") == "True", what="web Ready")
    main_id = running_id(agent, "web")
    assert main_id is not None
    in_container(docker_client, main_id, "rm /www/healthz")  # now a 404
    wait_for(lambda: condition(agent, "web", "Ready") == "False", what="web not Ready")
    assert any("statuscode: 404" in message for reason, message in events_of(agent, "web")), (
        events_of(agent, "web")
    )


def test_nodectl_ready_column_follows_readiness(
    make_master: MakeMaster,
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = make_agent(
        master=master.url, ca_cert_hash=[master.pin], master_backoff_max_s=1.0
    ).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    probe = exec_probe("cat", "/tmp/ready", failureThreshold=1)
    pod = pod_manifest(
        "halfready",
        [
            {"name": "main", "command": SLEEP, "readinessProbe": probe},
            {"name": "other", "command": SLEEP},
        ],
    )
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(json.dumps(pod))
    done = master.nodectl("apply", "-f", str(manifest))
    assert done.returncode == 0, done.stderr

    def ready_column() -> str | None:
        table = master.nodectl("get", "pods").stdout
        for line in table.splitlines():
            cells = line.split()
            if cells and cells[0] == "halfready":
                return cells[1]
        return None

    wait_for(lambda: ready_column() == "1/2", timeout_s=60, what="READY 1/2")
    main_id = wait_for(lambda: running_id(agent, "halfready"), what="main running")
    in_container(docker_client, main_id, "touch /tmp/ready")
    wait_for(lambda: ready_column() == "2/2", timeout_s=60, what="READY 2/2")
    in_container(docker_client, main_id, "rm /tmp/ready")
    wait_for(lambda: ready_column() == "1/2", timeout_s=60, what="READY 1/2 again")
