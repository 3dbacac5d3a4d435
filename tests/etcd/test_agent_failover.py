"""Issue 19's failover acceptance with what holds today: two real masters on the test etcd
(the second from a copy of the first's data dir: one cluster CA), one real agent listing both.
The agent registers on its first choice and runs a pod; that master is killed with SIGKILL;
the agent moves to the other master (seen in that master's own view: the node Ready, its lease
renewed there, ``status.master`` naming it) without registering again, and the pod's container
is the same container, not restarted.

The other master starts after the registration (the order the test needs to know which master
the node is on first); the masters share their lease renewals and elect a leader since (the
leader killed: tests/etcd/test_ha_acceptance.py). The test asks the survivor through its own
admin.conf."""

from __future__ import annotations

import json
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.node.masterlink.endpoints import preference
from tests.etcd.server import EtcdServer
from tests.etcd.test_master_on_etcd import on_etcd
from tests.helpers import (
    AgentProcess,
    MasterProcess,
    ensure_test_image,
    node_ready,
    pod_manifest,
    remove_node_containers,
    sleeper,
    wait_for,
)

pytestmark = pytest.mark.docker

NODE = f"failover-{uuid.uuid4().hex[:8]}"  # its containers are its own


def replica_of(first: MasterProcess, root: Path) -> MasterProcess:
    """A second master: its own port and config, the first's CA, serving certificate and
    admin credentials (the documented procedure: a copy of the data dir, ``listen`` changed)."""
    second = MasterProcess(root)
    shutil.rmtree(root / "pki")
    shutil.copytree(first.root / "pki", root / "pki")
    conf = first.admin_conf.read_text().replace(first.url, second.url)
    second.admin_conf.write_text(conf)
    second.admin_conf.chmod(0o600)
    second.pin = first.pin
    return second


def container_of(master: MasterProcess, pod: str) -> tuple[str, int] | None:
    obj = master.pods().get(pod)
    statuses: list[dict[str, Any]] = (obj or {}).get("status", {}).get("containerStatuses", [])
    if not statuses or "running" not in statuses[0].get("state", {}):
        return None
    return statuses[0]["containerID"], statuses[0]["restartCount"]


def agent_log(agent: AgentProcess) -> list[dict[str, Any]]:
    lines = []
    for line in agent.log_path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def test_the_agent_fails_over_to_the_other_master_and_its_pod_runs_on(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    prefix = "/" + etcd_prefix.strip("/").replace("[", "-").replace("]", "-") + "/"
    a = MasterProcess(tmp_path / "a")
    b = replica_of(a, tmp_path / "b")
    for master in (a, b):
        on_etcd(master, etcd, prefix, [etcd.endpoint])
    first, other = (a, b) if preference((a.url, b.url), NODE)[0] == a.url else (b, a)
    agent = AgentProcess(tmp_path / "node", NODE, master=[a.url, b.url], ca_cert_hash=[a.pin])
    client = docker.from_env()
    ensure_test_image(client)
    first.start()
    try:
        agent.start()
        wait_for(lambda: node_ready(first, NODE), what="node Ready on its first master")
        other.start()  # after the registration: its node cache is loaded from etcd at start
        manifest = tmp_path / "web.json"
        manifest.write_text(json.dumps(pod_manifest("web", [sleeper()], hostNetwork=True)))
        applied = first.nodectl("apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        wait_for(lambda: container_of(first, "web"), what="web running")
        running = container_of(first, "web")
        assert first.node(NODE)["status"]["master"] == first.url  # type: ignore[index]

        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=20)
        killed_at = time.monotonic()

        def on_other() -> bool:
            node = node_ready(other, NODE)
            return node is not None and node["status"]["master"] == other.url

        wait_for(on_other, what="the node renewing on the other master", timeout_s=60)
        print(f"failover: the other master saw the node in {time.monotonic() - killed_at:.1f} s")
        wait_for(lambda: container_of(other, "web"), what="web's status on the other master")
        assert container_of(other, "web") == running  # the same container, no restart
        got = other.nodectl("get", "pods")
        assert got.returncode == 0 and "web" in got.stdout, got.stderr

        log = agent_log(agent)
        switches = [r for r in log if r.get("msg", "").startswith("master unreachable; switch")]
        assert switches, "no switch logged"
        assert {r.get("master") for r in switches} == {first.url}
        assert all(r.get("next") == other.url for r in switches)
        registered = [r for r in log if r.get("msg") == "registered with the master"]
        assert len(registered) == 1  # once, on the first master: nothing registered again
        agent.stop()
        for marker in ("BlockingError", "task died unexpectedly", "Traceback"):
            assert marker not in agent.log_path.read_text(), agent.log_tail(40)
    finally:
        if agent.proc is not None:
            agent.stop()
        for master in (a, b):
            master.stop()
        remove_node_containers(client, NODE)
        client.close()
