"""Coasting: the master stopped, the node partitioned away, the agent restarted while the master
is down. Master and agent run as real processes in their own network namespaces (topology.py);
their pods run on the real dockerd. Outages are minutes in production and seconds here: the
lease (1 s), the master's grace (4 s) and the agent's reconnect cap (1 s) are shortened, the
mechanisms are the same."""

from __future__ import annotations

import json
import ssl
import time
import tomllib
import urllib.request
import uuid
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
from tests.system.topology import Host, Topology

pytestmark = pytest.mark.docker

API_PORT = 10250


def _start_cluster(
    topology: Topology, make_master: Any, make_agent: Any, **master_settings: Any
) -> tuple[MasterProcess, AgentProcess, Host]:
    mhost = topology.add_host("master")
    ahost = topology.add_host("a1")
    master = make_master(host=mhost.address, netns=mhost.netns, **master_settings).start()
    agent = make_agent(
        f"coast-{uuid.uuid4().hex[:8]}",
        netns=ahost.netns,
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
        api_addr=f"{ahost.address}:{API_PORT}",
    ).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready on the master")
    return master, agent, ahost


def _apply(master: MasterProcess, tmp_path: Path, node: str, name: str, **spec: Any) -> None:
    manifest = pod_manifest(name, [sleeper()], nodeName=node, **spec)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(manifest))
    done = master.nodectl("apply", "-f", str(path))
    assert done.returncode == 0, done.stderr


def _snapshot(client: docker.DockerClient, node: str) -> dict[str, tuple[str, str, str]]:
    """Container id -> (pod name, state, start time) of every container of the node."""
    found = {}
    for container in node_containers(client, node):
        state = client.api.inspect_container(container.id)["State"]
        pod = container.labels.get("io.node-agent.pod.name", "")
        found[container.id] = (pod, state["Status"], state["StartedAt"])
    return found


def _unreachable_count(agent: AgentProcess) -> int:
    return agent.log_path.read_text(errors="replace").count("master unreachable")


def _restart_count(agent: AgentProcess, pod: str) -> int:
    found = agent.pod(pod)
    assert found is not None
    return sum(int(c["restartCount"]) for c in found["status"].get("containerStatuses", []))


def _admin_tls(master: MasterProcess, tmp_path: Path) -> ssl.SSLContext:
    """A client TLS context with the admin credentials of ``admin.conf``."""
    admin = tomllib.loads(master.admin_conf.read_text())
    cert, key = tmp_path / "admin.crt", tmp_path / "admin.key"
    cert.write_text(admin["client_cert"])
    key.write_text(admin["client_key"])
    ctx = ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt"))
    ctx.load_cert_chain(cert, key)
    return ctx


def _node_api_pods(master: MasterProcess, host: Host, tmp_path: Path) -> set[str]:
    """The pods the node API lists to the admin, straight to the node (no master)."""
    ctx = _admin_tls(master, tmp_path)
    url = f"https://{host.address}:{API_PORT}/v1/pods"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        assert resp.status == 200
        return {p["metadata"]["name"] for p in json.loads(resp.read())["items"]}


def _exec_direct(master: MasterProcess, host: Host, tmp_path: Path, pod: str) -> tuple[int, str]:
    """``sh -c 'echo coasting'`` in ``pod`` over HTTP/2 straight to the node API (admin
    certificate), as ``nodectl exec --direct`` does: no master involved."""
    import asyncio

    from agent.aio.h2conn import connect
    from agent.proto import execframe

    async def run() -> tuple[int, str]:
        ctx = _admin_tls(master, tmp_path)
        ctx.check_hostname = False
        conn = await connect(host.address, API_PORT, ctx, server_hostname="")
        try:
            stream = await conn.request(
                "POST",
                f"/v1/namespaces/default/pods/{pod}/exec?command=sh&command=-c"
                "&command=echo%20coasting",
                end_stream=True,
            )
            await stream.response()
            out = b"".join(
                f.payload for f in execframe.FrameDecoder().feed(await stream.read_all(1 << 20))
            )
            return int(dict(stream.trailers or ())["exit-code"]), out.decode()
        finally:
            await conn.shutdown()

    return asyncio.run(run())


def _app_container(client: docker.DockerClient, node: str, pod: str) -> Any:
    return next(
        c
        for c in node_containers(client, node)
        if c.labels.get("io.node-agent.pod.name") == pod
        and c.labels.get("io.node-agent.kind") != "sandbox"
        and c.status == "running"
    )


def test_master_outage_pods_coast_and_catch_up(
    topology: Topology,
    make_master: Any,
    make_agent: Any,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master, agent, ahost = _start_cluster(topology, make_master, make_agent)
    node = agent.node_name
    agent.write_manifest("static.json", pod_manifest("static-web", [sleeper()]))
    for name in ("steady", "crasher"):
        _apply(master, tmp_path, node, name)
    for name in ("steady", "crasher", "static-web"):
        wait_for(lambda n=name: running_phase(agent, n), what=f"{name} Running")
    before = _snapshot(docker_client, node)
    crasher_id = _app_container(docker_client, node, "crasher").id

    master.stop()
    wait_for(lambda: _unreachable_count(agent) >= 3, what="agent retried the master 3 times")

    # The agent keeps enforcing restart policies on its own.
    docker_client.containers.get(crasher_id).kill()
    wait_for(
        lambda: _restart_count(agent, "crasher") == 1 and running_phase(agent, "crasher"),
        what="crashed container restarted while the master is down",
    )
    # Static pods and the node API (admin certificate, straight to the node) keep working.
    assert running_phase(agent, "static-web")
    assert {"steady", "crasher", "static-web"} <= _node_api_pods(master, ahost, tmp_path)
    assert _exec_direct(master, ahost, tmp_path, "steady") == (0, "coasting\n")
    assert agent.get("/healthz") == (200, "ok")

    during = _snapshot(docker_client, node)
    assert set(before) <= set(during), "a container was removed while the master was down"
    unchanged = {cid: v for cid, v in before.items() if cid != crasher_id}
    assert {cid: during[cid] for cid in unchanged} == unchanged

    master.start()
    wait_for(lambda: node_ready(master, node), what="node Ready again")

    def caught_up() -> bool:
        pod = master.pods()["crasher"]
        return sum(c["restartCount"] for c in pod["status"]["containerStatuses"]) == 1

    wait_for(caught_up, what="the master sees the restart that happened while it was down")
    after = _snapshot(docker_client, node)
    assert {cid: after[cid] for cid in unchanged} == unchanged, "a pod was restarted on reconnect"


def test_partition_then_heal_reconciles_without_restarts(
    topology: Topology,
    make_master: Any,
    make_agent: Any,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master, agent, ahost = _start_cluster(topology, make_master, make_agent)
    node = agent.node_name
    agent.write_manifest("static.json", pod_manifest("static-web", [sleeper()]))
    for name in ("keep", "doomed"):
        _apply(master, tmp_path, node, name)
    for name in ("keep", "doomed", "static-web"):
        wait_for(lambda n=name: running_phase(agent, n), what=f"{name} Running")
    kept = {
        cid: v
        for cid, v in _snapshot(docker_client, node).items()
        if v[0] in ("keep", "static-web")
    }

    topology.partition(ahost)
    wait_for(
        lambda: not node_ready(master, node), timeout_s=30, what="master marks the node NotReady"
    )
    wait_for(lambda: _unreachable_count(agent) >= 1, what="agent notices the partition")
    # Changes made on the master while the node cannot hear them.
    assert master.nodectl("delete", "pod", "doomed", "--wait=false").returncode == 0
    _apply(master, tmp_path, node, "newcomer")
    assert running_phase(agent, "doomed"), "the agent must not drop pods on its own"
    assert agent.get("/healthz") == (200, "ok")

    topology.heal(ahost)
    wait_for(lambda: node_ready(master, node), timeout_s=60, what="node Ready after the heal")
    wait_for(lambda: running_phase(agent, "newcomer"), what="pod created meanwhile runs")
    wait_for(
        lambda: not any(v[0] == "doomed" for v in _snapshot(docker_client, node).values()),
        what="pod deleted meanwhile is removed",
    )
    now = _snapshot(docker_client, node)
    assert {cid: now.get(cid) for cid in kept} == kept, "an unchanged pod was restarted"
    # The changes arrived by resuming the watch from the last resource version, not a relist.
    assert "resuming the pod watch" in agent.log_path.read_text(errors="replace")


def test_agent_restarted_while_master_down_keeps_its_pods(
    topology: Topology,
    make_master: Any,
    make_agent: Any,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master, agent, _ = _start_cluster(topology, make_master, make_agent)
    node = agent.node_name
    agent.write_manifest("static.json", pod_manifest("static-web", [sleeper()]))
    for name in ("steady", "crasher"):
        _apply(master, tmp_path, node, name)
    for name in ("steady", "crasher", "static-web"):
        wait_for(lambda n=name: running_phase(agent, n), what=f"{name} Running")
    _app_container(docker_client, node, "crasher").kill()
    wait_for(
        lambda: _restart_count(agent, "crasher") == 1 and running_phase(agent, "crasher"),
        what="crasher restarted once",
    )
    before = _snapshot(docker_client, node)

    master.stop()
    agent.kill9()
    started = time.monotonic()
    agent.start()  # waits for /healthz: the first reconcile of every pod is done
    managed_s = time.monotonic() - started
    print(f"pods back under management {managed_s:.2f}s after the agent started")

    for name in ("steady", "crasher", "static-web"):
        assert running_phase(agent, name), f"{name} not Running after the restart"
    assert _restart_count(agent, "crasher") == 1, "restart count lost across the agent restart"
    assert _restart_count(agent, "steady") == 0
    assert _snapshot(docker_client, node) == before, "containers changed across the restart"
    assert _unreachable_count(agent) >= 1  # it really ran without the master


def test_watch_history_gone_while_partitioned_relists_and_converges(
    topology: Topology,
    make_master: Any,
    make_agent: Any,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    """The master keeps only 5 revisions of history: the agent's resumed watch gets 410
    (in-band), and the agent relists instead, with the same outcome as a resume."""
    master, agent, ahost = _start_cluster(
        topology, make_master, make_agent, store_history_revisions=5
    )
    node = agent.node_name
    for name in ("keep", "doomed"):
        _apply(master, tmp_path, node, name)
    for name in ("keep", "doomed"):
        wait_for(lambda n=name: running_phase(agent, n), what=f"{name} Running")
    kept = {cid: v for cid, v in _snapshot(docker_client, node).items() if v[0] == "keep"}

    topology.partition(ahost)
    wait_for(lambda: _unreachable_count(agent) >= 1, what="agent notices the partition")
    assert master.nodectl("delete", "pod", "doomed", "--wait=false").returncode == 0
    for round_no in range(4):  # 8 more revisions: the agent's is compacted away
        _apply(master, tmp_path, node, f"filler-{round_no}")
        assert master.nodectl("delete", "pod", f"filler-{round_no}", "--wait=false").returncode == 0
    _apply(master, tmp_path, node, "newcomer")

    topology.heal(ahost)
    wait_for(lambda: running_phase(agent, "newcomer"), timeout_s=60, what="newcomer runs")
    wait_for(
        lambda: not any(v[0] == "doomed" for v in _snapshot(docker_client, node).values()),
        what="pod deleted meanwhile is removed",
    )
    log = agent.log_path.read_text(errors="replace")
    assert "pod watch history compacted; relisting" in log, "the resumed watch was not refused"
    assert "is compacted" in log, "the master's reason for the 410 is not in the log"
    assert not any(v[0].startswith("filler") for v in _snapshot(docker_client, node).values())
    now = _snapshot(docker_client, node)
    assert {cid: now.get(cid) for cid in kept} == kept, "an unchanged pod was restarted"


FAKE_5XX_MASTER = """
import http.server, ssl, sys
class Down(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = b'{"error": {"code": 503, "message": "overloaded", "details": {}}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_PUT = do_POST = do_DELETE = answer
    def log_message(self, *args):
        sys.stderr.write("5xx " + self.requestline + "\\n")
server = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Down)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def test_master_answering_5xx_is_an_outage_not_a_reason_to_drop_pods(
    make_master: Any,
    make_agent: Any,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    """The master's address answers 503 to everything (an overloaded master or a broken
    proxy in front of it, with the real certificate): the agent treats it as unreachable,
    keeps its pods, backs off, and recovers when the real master is back."""
    import subprocess
    import sys

    master = make_master().start()
    agent = make_agent(
        f"coast-{uuid.uuid4().hex[:8]}",
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
    ).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    _apply(master, tmp_path, agent.node_name, "steady")
    wait_for(lambda: running_phase(agent, "steady"), what="steady Running")
    before = _snapshot(docker_client, agent.node_name)

    master.stop()
    fake = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FAKE_5XX_MASTER,
            "127.0.0.1",
            str(master.port),
            str(master.root / "pki" / "master.crt"),
            str(master.root / "pki" / "master.key"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: agent.log_path.read_text(errors="replace").count(": 503") >= 3,
            what="the agent met 503 three times",
        )
        assert running_phase(agent, "steady")
        assert agent.get("/healthz") == (200, "ok")  # an outage of the master, not of the node
        assert _snapshot(docker_client, agent.node_name) == before
    finally:
        fake.kill()
        fake.wait()
    master.start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready again")
    assert _snapshot(docker_client, agent.node_name) == before
