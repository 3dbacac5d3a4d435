"""sd_notify from inside a container (issue 15 item 5), against the real engine through a real
agent process: Ready only after READY=1 (sent as another uid), STATUS= shown, a container that
stops sending WATCHDOG=1 restarted, and a flood of datagrams that changes nothing for others.

The containers speak sd_notify with a tiny static helper built here from ``sdnotify.c`` (busybox's
``nc`` has no Unix datagram sockets), mounted into them from the host."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.helpers import AgentProcess, pod_manifest, sleeper, wait_for

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
HELPER_SOURCE = Path(__file__).with_name("sdnotify.c")
HELPER_MOUNT = "/helper"
NOTIFY = "node-agent.io/notify"
WATCHDOG = "node-agent.io/notify-watchdog-seconds"


@pytest.fixture(scope="module")
def helper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdnotify")
    subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-o", str(out / "sdnotify"), str(HELPER_SOURCE)],
        check=True,
    )
    out.chmod(0o755)  # a container process of any uid runs it
    return out


def notify_pod(
    name: str, containers: list[dict[str, Any]], helper_dir: Path, annotations: dict[str, str]
) -> dict[str, Any]:
    for c in containers:
        c.setdefault("volumeMounts", []).append(
            {"name": "helper", "mountPath": HELPER_MOUNT, "readOnly": True}
        )
    manifest = pod_manifest(
        name,
        containers,
        volumes=[{"name": "helper", "hostPath": {"path": str(helper_dir), "type": "Directory"}}],
    )
    manifest["metadata"]["annotations"] = annotations
    return manifest


def container_status(agent: AgentProcess, pod: str, container: str) -> dict[str, Any] | None:
    found = agent.pod(pod)
    if found is None:
        return None
    statuses = found["status"].get("containerStatuses", [])
    return next((s for s in statuses if s["name"] == container), None)


def condition(agent: AgentProcess, pod: str, kind: str) -> str | None:
    found = agent.pod(pod)
    if found is None:
        return None
    return next(
        (c["status"] for c in found["status"].get("conditions", []) if c["type"] == kind), None
    )


def running_id(agent: AgentProcess, pod: str, container: str) -> str | None:
    status = container_status(agent, pod, container)
    if status is None or "running" not in status["state"]:
        return None
    return str(status["containerID"]).removeprefix("docker://")


def test_ready_only_after_ready_1_sent_as_another_uid(
    make_agent: MakeAgent, docker_client: docker.DockerClient, helper_dir: Path
) -> None:
    agent = make_agent().start()
    app = {
        "name": "app",
        "command": [
            "sh",
            "-c",
            "until [ -e /tmp/go ]; do sleep 0.1; done; "
            # Not root: the socket must be writable by whatever uid the container runs as.
            f"su -s /bin/sh -c '{HELPER_MOUNT}/sdnotify READY=1 \"STATUS=serving as uid $(id -u)\"'"
            " nobody && exec sleep 3600",
        ],
    }
    agent.write_manifest(
        "ready.yaml", notify_pod("ready", [app, sleeper("plain")], helper_dir, {NOTIFY: "app"})
    )
    app_id = wait_for(lambda: running_id(agent, "ready", "app"), what="app running")
    wait_for(lambda: running_id(agent, "ready", "plain"), what="plain running")
    # It cannot have said READY=1 yet (it waits for /tmp/go): running, started, not ready.
    status = container_status(agent, "ready", "app")
    assert status is not None
    assert (status["started"], status["ready"]) == (False, False)
    assert condition(agent, "ready", "Ready") == "False"
    container = docker_client.containers.get(app_id)
    assert container.exec_run(["sh", "-c", "echo $NOTIFY_SOCKET"]).output.decode().strip() == (
        "/run/node-agent/notify/notify.sock"
    )

    container.exec_run(["touch", "/tmp/go"])
    wait_for(lambda: condition(agent, "ready", "Ready") == "True", what="pod Ready")
    status = container_status(agent, "ready", "app")
    assert status is not None
    assert (status["started"], status["ready"]) == (True, True)
    assert status["state"]["running"]["message"] == "serving as uid 65534"
    assert container.logs() == b"", "the helper reported an error"


def test_a_container_that_stops_sending_watchdog_is_restarted(
    make_agent: MakeAgent, docker_client: docker.DockerClient, helper_dir: Path
) -> None:
    agent = make_agent().start()
    app = {
        "name": "app",
        "command": [
            "sh",
            "-c",
            f"{HELPER_MOUNT}/sdnotify READY=1 && "
            f"while [ ! -e /tmp/hang ]; do {HELPER_MOUNT}/sdnotify WATCHDOG=1; sleep 0.3; done; "
            "exec sleep 3600",
        ],
    }
    agent.write_manifest(
        "dog.yaml", notify_pod("dog", [app], helper_dir, {NOTIFY: "app", WATCHDOG: "2"})
    )
    wait_for(lambda: condition(agent, "dog", "Ready") == "True", what="pod Ready")
    first = running_id(agent, "dog", "app")
    assert first is not None
    status = container_status(agent, "dog", "app")
    assert status is not None and status["restartCount"] == 0

    docker_client.containers.get(first).exec_run(["touch", "/tmp/hang"])  # it stops pinging
    wait_for(
        lambda: (s := container_status(agent, "dog", "app")) is not None and s["restartCount"] == 1,
        what="the app restarted",
    )
    events = [(e["reason"], e["message"]) for e in agent.events()]
    assert ("Unhealthy", "container app: sd_notify watchdog: no WATCHDOG=1 for 2s") in events
    # The new attempt (a fresh filesystem: no /tmp/hang) says READY=1 and pings again.
    wait_for(lambda: condition(agent, "dog", "Ready") == "True", what="Ready again")
    second = running_id(agent, "dog", "app")
    assert second is not None and second != first


def _metric(agent: AgentProcess, result: str) -> float:
    _, text = agent.get("/metrics")
    match = re.search(
        rf'^node_agent_notify_datagrams_total\{{result="{result}"\}} (\S+)$', text, re.M
    )
    return float(match.group(1)) if match else 0.0


def test_a_flood_changes_nothing_for_other_pods(
    make_agent: MakeAgent, docker_client: docker.DockerClient, helper_dir: Path
) -> None:
    agent = make_agent().start()
    # 10,000 datagrams a second into one socket, while another pod's watchdog (2 s, pinged
    # every 0.3 s) must keep being heard on time.
    flood = {
        "name": "flood",
        "command": [
            "sh",
            "-c",
            f"while true; do {HELPER_MOUNT}/sdnotify -n 10000 STATUS=flood; sleep 1; done",
        ],
    }
    steady = {
        "name": "steady",
        "command": [
            "sh",
            "-c",
            f"{HELPER_MOUNT}/sdnotify READY=1 && "
            f"while true; do {HELPER_MOUNT}/sdnotify WATCHDOG=1; sleep 0.3; done",
        ],
    }
    # ... and another pod's exec probes every second (a late one times out and counts).
    probed = {
        "name": "probed",
        "command": ["sh", "-c", "touch /tmp/ok && exec sleep 3600"],
        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}, "periodSeconds": 1},
        "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
    }
    agent.write_manifest("probed.yaml", pod_manifest("probed", [probed]))
    agent.write_manifest(
        "steady.yaml",
        notify_pod("steady", [steady], helper_dir, {NOTIFY: "steady", WATCHDOG: "2"}),
    )
    wait_for(lambda: condition(agent, "probed", "Ready") == "True", what="probed Ready")
    wait_for(lambda: condition(agent, "steady", "Ready") == "True", what="steady Ready")
    agent.write_manifest("flood.yaml", notify_pod("flood", [flood], helper_dir, {NOTIFY: "flood"}))
    flood_id = wait_for(lambda: running_id(agent, "flood", "flood"), what="flood running")

    def rounds() -> int:
        return docker_client.containers.get(flood_id).logs().count(b"sent=")

    wait_for(lambda: rounds() >= 10, timeout_s=60.0, what="ten rounds of 10,000 datagrams")
    assert _metric(agent, "rate_limited") > 0
    # The socket is read a few times a second: the kernel's queue stays full and refuses
    # nearly all of the flood to its sender (EAGAIN) instead of the agent reading it.
    log = docker_client.containers.get(flood_id).logs().decode()
    taken = sum(int(n) for n in re.findall(r"sent=(\d+)", log))
    refused = sum(int(n) for n in re.findall(r"refused=(\d+)", log))
    assert taken + refused >= 100_000 and refused > 9 * taken
    steady_status = container_status(agent, "steady", "steady")
    assert steady_status is not None
    assert steady_status["restartCount"] == 0 and steady_status["ready"] is True
    assert condition(agent, "steady", "Ready") == "True"
    probed_status = container_status(agent, "probed", "probed")
    assert probed_status is not None
    assert probed_status["restartCount"] == 0 and probed_status["ready"] is True
    assert condition(agent, "probed", "Ready") == "True"
    assert not [e for e in agent.events() if e["reason"] == "Unhealthy"]
    assert agent.get("/healthz") == (200, "ok")


def test_an_agent_restart_keeps_a_ready_container_ready_and_watched(
    make_agent: MakeAgent, docker_client: docker.DockerClient, helper_dir: Path
) -> None:
    agent = make_agent().start()
    app = {
        "name": "app",
        "command": [
            "sh",
            "-c",
            f"{HELPER_MOUNT}/sdnotify READY=1 STATUS=up && "
            # Pings fail (and are retried) while no agent has the socket bound.
            f"while true; do {HELPER_MOUNT}/sdnotify WATCHDOG=1 2>/dev/null; sleep 0.3; done",
        ],
    }
    agent.write_manifest(
        "again.yaml", notify_pod("again", [app], helper_dir, {NOTIFY: "app", WATCHDOG: "3"})
    )
    wait_for(lambda: condition(agent, "again", "Ready") == "True", what="pod Ready")
    first = running_id(agent, "again", "app")

    agent.kill9()
    agent.start()
    # The new agent binds the socket again in the mounted directory: the container's pings
    # reach it (a whole watchdog interval of them), and what it said before is remembered.
    wait_for(lambda: _metric(agent, "accepted") >= 12, what="pings heard by the new agent")
    wait_for(lambda: condition(agent, "again", "Ready") == "True", what="Ready after the restart")
    status = container_status(agent, "again", "app")
    assert status is not None
    assert status["restartCount"] == 0 and running_id(agent, "again", "app") == first
    assert status["state"]["running"]["message"] == "up"
    assert not [e for e in agent.events() if e["reason"] == "Unhealthy"]
