"""Volumes, host networking, image and start failures, and systemd notification, against the
real engine through a real agent process."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests.helpers import (
    AgentProcess,
    node_containers,
    pod_manifest,
    running_phase,
    sleeper,
    wait_for,
)

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]


def test_volumes_shared_between_containers(
    make_agent: MakeAgent, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "from-host.txt").write_text("host says hi\n")
    agent = make_agent().start()
    writer = {
        "name": "writer",
        "command": [
            "sh",
            "-c",
            "echo shared > /scratch/note && cat /host/from-host.txt > /scratch/copy && exec sleep 3600",
        ],
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "host", "mountPath": "/host", "readOnly": True},
        ],
    }
    reader = {
        "name": "reader",
        "command": [
            "sh",
            "-c",
            "until [ -s /data/copy ]; do sleep 0.1; done; cat /data/note /data/copy; exec sleep 3600",
        ],
        "volumeMounts": [{"name": "scratch", "mountPath": "/data"}],
    }
    manifest = pod_manifest(
        "vols",
        [writer, reader],
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "host", "hostPath": {"path": str(host_dir), "type": "Directory"}},
        ],
    )
    path = agent.write_manifest("vols.yaml", manifest)
    pod = wait_for(lambda: running_phase(agent, "vols"), what="pod vols Running")
    reader_id = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "reader")[
        "containerID"
    ].removeprefix("docker://")
    wait_for(
        lambda: b"shared\nhost says hi" in docker_client.containers.get(reader_id).logs(),
        what="reader saw both volumes",
    )
    volume_dir = agent.state_dir / "pods" / pod["metadata"]["uid"] / "volumes" / "scratch"
    assert (volume_dir / "note").read_text() == "shared\n"

    path.unlink()
    wait_for(lambda: not node_containers(docker_client, agent.node_name), what="pod removed")
    # The pod's directory goes after its containers: wait for it, as for them.
    wait_for(lambda: not volume_dir.exists(), what="emptyDir deleted with the pod")
    assert (host_dir / "from-host.txt").exists(), "hostPath content is never deleted"


def test_host_network_pod_listens_on_host(make_agent: MakeAgent) -> None:
    agent = make_agent().start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    web = {
        "name": "web",
        "command": [
            "sh",
            "-c",
            f"mkdir -p /w && echo host-net > /w/index.html && exec httpd -f -p 127.0.0.1:{port} -h /w",
        ],
    }
    agent.write_manifest("hn.yaml", pod_manifest("hn", [web], hostNetwork=True))
    pod = wait_for(lambda: running_phase(agent, "hn"), what="hostNetwork pod Running")
    assert pod["status"]["podIP"] == pod["status"]["hostIP"]

    def fetch() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            chunks = []
            while chunk := conn.recv(4096):  # the server closes after the response
                chunks.append(chunk)
            return b"".join(chunks)

    assert b"host-net" in wait_for(fetch, what="page served on the host's loopback")


def test_missing_image_and_bad_command_are_reported(make_agent: MakeAgent) -> None:
    agent = make_agent(backoff_initial_s=0.5).start()
    agent.write_manifest(
        "noimg.yaml",
        pod_manifest(
            "noimg",
            [{"name": "c", "image": "node-agent-test/absent:1", "imagePullPolicy": "Never"}],
        ),
    )
    agent.write_manifest(
        "badcmd.yaml", pod_manifest("badcmd", [{"name": "c", "command": ["/no/such/binary"]}])
    )
    agent.write_manifest("ok.yaml", pod_manifest("ok", [sleeper()]))

    def waiting_reason(name: str) -> str | None:
        pod = agent.pod(name)
        if not pod or not pod["status"].get("containerStatuses"):
            return None
        state = pod["status"]["containerStatuses"][0]["state"]
        return state.get("waiting", {}).get("reason")

    wait_for(lambda: waiting_reason("noimg") == "ErrImageNeverPull", what="ErrImageNeverPull")
    wait_for(
        lambda: waiting_reason("badcmd") in ("RunContainerError", "CreateContainerError"),
        what="start error reported",
    )
    assert agent.pod("noimg")["status"]["phase"] == "Pending"
    wait_for(lambda: running_phase(agent, "ok"), what="healthy neighbour unaffected")
    reasons = {e["reason"] for e in agent.events()}
    assert "ErrImageNeverPull" in reasons


def test_sd_notify_ready_after_first_reconcile_and_stopping(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(60)
    with server:
        agent = make_agent()
        agent.write_manifest("pre.yaml", pod_manifest("pre", [sleeper()]))
        agent.start(
            wait_ready=False, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}
        )
        messages = []
        while not any(m.startswith(b"READY=1") for m in messages):
            messages.append(server.recv(4096))
        # READY comes only after the pre-existing manifest's pod was started.
        assert running_phase(agent, "pre") is not None
        while b"WATCHDOG=1" not in messages:
            messages.append(server.recv(4096))
        assert agent.stop() == 0
        while b"STOPPING=1" not in messages:
            messages.append(server.recv(4096))
