"""preStart preconditions (issue 15 item 2, our extension) against the real engine through a
real agent process: a container waits in PreStartHookPending for a TCP service and starts at
the first check after it appears; one that never passes ends in PreStartHookFailed after its
deadline; an exec precondition runs in a helper container in the pod's network namespace, with
the container's env and volumes, never on the host; completion survives an agent restart.
Also Kubernetes' postStart (a failure kills the container, which restarts) and preStop (it runs
before SIGTERM).

Most tests read the events from the node's own API (``api.sock``); one reads them where an
operator does, in ``nodectl describe pod`` through the master (the node reports its events).
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.helpers import (
    AgentProcess,
    MasterProcess,
    free_port,
    node_containers,
    node_ready,
    pod_manifest,
    running_phase,
    sleeper,
    wait_for,
)

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
PERIOD_S = 2


def waiting_of(agent: AgentProcess, pod: str, container: str = "main") -> dict[str, Any]:
    found = agent.pod(pod)
    if found is None:
        return {}
    for status in found["status"].get("containerStatuses", []):
        if status["name"] == container:
            state: dict[str, Any] = status["state"].get("waiting", {})
            return state
    return {}


def app_containers(client: docker.DockerClient, node: str, pod: str) -> list[str]:
    """The names of the pod's app containers (not the sandbox, not a precondition's helper)."""
    return [
        c.name
        for c in node_containers(client, node)
        if c.labels.get("io.node-agent.pod.name") == pod
        and c.labels.get("io.node-agent.kind") == "app"
    ]


@pytest.fixture
def listener() -> Iterator[Callable[[int], socket.socket]]:
    """A TCP service on the host's loopback that the test starts when it wants."""
    sockets: list[socket.socket] = []

    def listen(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(16)
        sock.settimeout(0)
        sockets.append(sock)
        return sock

    yield listen
    for sock in sockets:
        sock.close()


def accepted(sock: socket.socket) -> int:
    """Connections the service has had, accepting (and closing) each."""
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_waits_for_a_tcp_service_then_starts_at_the_first_check_after_it_appears(
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    listener: Callable[[int], socket.socket],
) -> None:
    agent = make_agent().start()
    port = free_port()
    app = sleeper()
    app["lifecycle"] = {
        "preStart": [
            {
                "tcpSocket": {"host": "127.0.0.1", "port": port},
                "periodSeconds": PERIOD_S,
                "deadlineSeconds": 600,
            }
        ]
    }
    agent.write_manifest("dep.yaml", pod_manifest("dep", [app]))
    state = wait_for(
        lambda: (
            waiting_of(agent, "dep").get("reason") == "PreStartHookPending"
            and waiting_of(agent, "dep")
        ),
        what="PreStartHookPending",
    )
    assert state["message"].startswith(
        f"waiting for preStart[0] (tcpSocket 127.0.0.1:{port}): dial tcp 127.0.0.1:{port}:"
    )
    events = wait_for(
        lambda: [e for e in agent.events() if e["reason"] == "PreStartHookPending"],
        what="the PreStartHookPending event",
    )
    assert len(events) == 1 and events[0]["involvedObject"]["name"] == "dep"
    assert app_containers(docker_client, agent.node_name, "dep") == []
    assert agent.pod("dep")["status"]["phase"] == "Pending"  # type: ignore[index]

    service = listener(port)  # the service appears
    pod = wait_for(lambda: running_phase(agent, "dep"), what="pod dep Running")
    # The first check after the service appeared passed and started the container: the service
    # saw exactly one connection (a second one would be a check a period later), and none after.
    assert accepted(service) == 1
    assert len(app_containers(docker_client, agent.node_name, "dep")) == 1
    reasons = [e["reason"] for e in agent.events() if e["involvedObject"]["name"] == "dep"]
    assert reasons.index("PreStartHookSucceeded") < reasons.index("Started")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_a_precondition_that_never_passes_fails_after_its_deadline(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    port = free_port()  # nobody listens there
    app = sleeper()
    app["lifecycle"] = {
        "preStart": [
            {
                "tcpSocket": {"host": "127.0.0.1", "port": port},
                "periodSeconds": 1,
                "deadlineSeconds": 3,
            }
        ]
    }
    agent.write_manifest("never.yaml", pod_manifest("never", [app], restart_policy="Never"))
    pod = wait_for(
        lambda: (p := agent.pod("never")) and p["status"]["phase"] == "Failed" and p,
        what="pod never Failed",
    )
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "PreStartHookFailed"
    assert waiting["message"].startswith(
        f"preStart[0] (tcpSocket 127.0.0.1:{port}) not passed within its deadline of 3s: "
        f"dial tcp 127.0.0.1:{port}:"
    )
    failed = [e for e in agent.events() if e["reason"] == "PreStartHookFailed"]
    assert len(failed) == 1
    assert failed[0]["type"] == "Warning"
    assert failed[0]["message"] == f"container main: {waiting['message']}"
    assert app_containers(docker_client, agent.node_name, "never") == []


def test_an_always_pod_backs_off_and_checks_again(
    make_agent: MakeAgent, listener: Callable[[int], socket.socket]
) -> None:
    agent = make_agent().start()
    port = free_port()
    app = sleeper()
    app["lifecycle"] = {
        "preStart": [
            {
                "tcpSocket": {"host": "127.0.0.1", "port": port},
                "periodSeconds": 1,
                "deadlineSeconds": 1,
            }
        ]
    }
    agent.write_manifest("retry.yaml", pod_manifest("retry", [app]))
    wait_for(
        lambda: len([e for e in agent.events() if e["reason"] == "PreStartHookFailed"]) >= 2,
        what="two failed runs (a back-off between them)",
    )
    assert "back-off" in next(
        e["message"] for e in agent.events() if e["reason"] == "PreStartHookFailed"
    )
    listener(port)
    wait_for(lambda: running_phase(agent, "retry"), what="pod retry Running")


def test_exec_precondition_runs_in_the_pod_network_never_on_the_host(
    make_agent: MakeAgent, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    agent = make_agent().start()
    marker = Path("/tmp") / f"prestart-marker-{uuid.uuid4().hex}"
    marker.write_text("only on the host\n")
    try:
        # A web server bound to the pod's own loopback only: the host cannot reach it.
        server = {
            "name": "server",
            "command": [
                "sh",
                "-c",
                "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 127.0.0.1:7000 -h /www",
            ],
        }
        check = (
            f"test ! -e {marker} && wget -q -O /dev/null http://127.0.0.1:7000/ "
            f'&& echo "checked by $WHO" > /work/seen'
        )
        app = {
            "name": "main",
            "command": ["sh", "-c", "cat /work/seen; exec sleep 3600"],
            "env": [{"name": "WHO", "value": "the helper"}],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
            "lifecycle": {
                "preStart": [
                    {
                        "exec": {"command": ["sh", "-c", check]},
                        "periodSeconds": 1,
                        "timeoutSeconds": 10,
                        "deadlineSeconds": 120,
                    }
                ]
            },
        }
        manifest = pod_manifest(
            "netcheck", [server, app], volumes=[{"name": "work", "emptyDir": {}}]
        )
        agent.write_manifest("netcheck.yaml", manifest)
        pod = wait_for(lambda: running_phase(agent, "netcheck"), what="pod netcheck Running")
        main_id = next(
            c["containerID"] for c in pod["status"]["containerStatuses"] if c["name"] == "main"
        ).removeprefix("docker://")
        wait_for(
            lambda: b"checked by the helper" in docker_client.containers.get(main_id).logs(),
            what="the helper's note, written with the container's env into its volume",
        )
        # The helpers are gone; only the sandbox and the two containers remain.
        kinds = sorted(
            c.labels.get("io.node-agent.kind")
            for c in node_containers(docker_client, agent.node_name)
        )
        assert kinds == ["app", "app", "sandbox"]
    finally:
        marker.unlink()


def test_exec_precondition_cannot_see_the_host(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    """The converse: a check that passes only if it ran on the host never passes."""
    agent = make_agent().start()
    marker = Path("/tmp") / f"pm-{uuid.uuid4().hex[:8]}"  # short: the message is bounded
    marker.write_text("only on the host\n")
    try:
        app = sleeper()
        app["lifecycle"] = {
            "preStart": [
                {
                    "exec": {"command": ["sh", "-c", f"cat {marker}"]},
                    "periodSeconds": 1,
                    "timeoutSeconds": 10,
                    "deadlineSeconds": 3,
                }
            ]
        }
        agent.write_manifest("host.yaml", pod_manifest("host", [app], restart_policy="Never"))
        pod = wait_for(
            lambda: (p := agent.pod("host")) and p["status"]["phase"] == "Failed" and p,
            what="pod host Failed",
        )
        message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        assert f"exited with 1: cat: can't open '{marker}'" in message
        assert app_containers(docker_client, agent.node_name, "host") == []
    finally:
        marker.unlink()


def test_an_agent_restart_does_not_check_the_preconditions_of_a_running_container_again(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    """Each check appends to a counter on a hostPath volume (the helper has the container's
    mounts); after ``kill -9`` of the agent and a restart, the counter has not grown."""
    agent = make_agent().start()
    counts = tmp_path / "counts"
    counts.mkdir(mode=0o777)
    app = sleeper()
    app["volumeMounts"] = [{"name": "counts", "mountPath": "/counts"}]
    app["lifecycle"] = {
        "preStart": [
            {
                "exec": {"command": ["sh", "-c", "echo checked >> /counts/n"]},
                "timeoutSeconds": 10,
            }
        ]
    }
    manifest = pod_manifest(
        "once",
        [app],
        volumes=[{"name": "counts", "hostPath": {"path": str(counts), "type": "Directory"}}],
    )
    agent.write_manifest("once.yaml", manifest)
    pod = wait_for(lambda: running_phase(agent, "once"), what="pod once Running")
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    assert (counts / "n").read_text() == "checked\n"
    checkpoint = agent.state_dir / "checkpoint.json"
    wait_for(
        lambda: '"prestart_done":{"main":0}' in checkpoint.read_text(),
        what="the completion in the checkpoint",
    )

    agent.kill9()
    agent.start()
    wait_for(
        lambda: (
            (p := running_phase(agent, "once"))
            and p["status"]["containerStatuses"][0]["containerID"] == container_id
        ),
        what="the restarted agent's status of the same container",
    )
    assert (counts / "n").read_text() == "checked\n"


def test_nodectl_describe_pod_shows_prestart_hook_failed(
    make_master: Callable[..., MasterProcess], make_agent: MakeAgent, tmp_path: Path
) -> None:
    """Through a real master: ``nodectl describe pod`` shows the container waiting with
    reason PreStartHookFailed and the hook's message (the status the node reports), and the
    node's PreStartHookFailed warning in its events table, from the node-agent on that node."""
    master = make_master().start()
    agent = make_agent(
        master=master.url, ca_cert_hash=[master.pin], master_backoff_max_s=1.0
    ).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    app = sleeper()
    app["lifecycle"] = {
        "preStart": [
            {
                "tcpSocket": {"host": "127.0.0.1", "port": free_port()},
                "periodSeconds": 1,
                "deadlineSeconds": 2,
            }
        ]
    }
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(json.dumps(pod_manifest("gated", [app], restart_policy="Never")))
    done = master.nodectl("apply", "-f", str(manifest))
    assert done.returncode == 0, done.stderr

    def described() -> str | None:
        out = master.nodectl("describe", "pod", "gated").stdout
        events = out[out.find("Events:") :]
        failed = [line for line in events.splitlines() if " PreStartHookFailed " in line]
        # The container's state (or the pod's own reason): kubectl's "Reason:" row.
        waiting = re.search(r"^ *Reason: +PreStartHookFailed$", out, re.MULTILINE)
        done = waiting and failed
        return out if done else None

    out = wait_for(described, timeout_s=60, what="describe pod: PreStartHookFailed")
    messages = re.findall(r"^ +Message: +(.*)$", out, re.MULTILINE)  # the container's state
    assert any(
        "tcpSocket 127.0.0.1:" in m and "not passed within its deadline of 2s" in m
        for m in messages
    ), out
    assert re.search(r"^Status: +Failed$", out, re.MULTILINE)
    events = out[out.find("Events:") :].splitlines()
    [row] = [line for line in events if " PreStartHookFailed " in line]
    assert row.split()[0] == "Warning" and f"node-agent, {agent.node_name}" in row
    assert "not passed within its deadline of 2s" in row


def test_pre_stop_runs_before_sigterm(
    make_agent: MakeAgent, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """The container's SIGTERM handler finds what its preStop hook (an exec in it) wrote."""
    agent = make_agent().start()
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    app = {
        "name": "main",
        "command": [
            "sh",
            "-c",
            "trap 'test -e /out/prestop && echo ordered > /out/term; exit 0' TERM; "
            "sleep 3600 & wait",
        ],
        "volumeMounts": [{"name": "out", "mountPath": "/out"}],
        "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo hook > /out/prestop"]}}},
    }
    manifest = pod_manifest(
        "stopper",
        [app],
        grace_s=10,
        volumes=[{"name": "out", "hostPath": {"path": str(out), "type": "Directory"}}],
    )
    path = agent.write_manifest("stopper.yaml", manifest)
    wait_for(lambda: running_phase(agent, "stopper"), what="pod stopper Running")
    path.unlink()
    wait_for(lambda: not node_containers(docker_client, agent.node_name), what="pod removed")
    assert (out / "prestop").read_text() == "hook\n"
    assert (out / "term").read_text() == "ordered\n"


def test_a_failed_post_start_kills_the_container_which_restarts(make_agent: MakeAgent) -> None:
    agent = make_agent().start()
    app = sleeper()
    app["lifecycle"] = {"postStart": {"exec": {"command": ["sh", "-c", "echo no >&2; exit 3"]}}}
    agent.write_manifest("post.yaml", pod_manifest("post", [app]))

    def restarted() -> list[dict[str, Any]] | None:
        failed = [e for e in agent.events() if e["reason"] == "FailedPostStartHook"]
        pod = agent.pod("post")
        restarts = pod["status"]["containerStatuses"][0]["restartCount"] if pod else 0
        # The same failure twice is one event counted twice (aggregated as in Kubernetes).
        times = sum(e["count"] for e in failed)
        return failed if times >= 2 and restarts >= 1 else None

    failed = wait_for(restarted, what="two failed postStart hooks and a restart")
    assert len(failed) == 1 and failed[0]["count"] >= 2
    assert failed[0]["type"] == "Warning"
    assert failed[0]["message"] == (
        "container main: postStart hook failed: command 'sh -c echo no >&2; exit 3' "
        "exited with 3: no"
    )
