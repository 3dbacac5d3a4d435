"""The manual cluster CA rotation of certs/README.md, as an operator does it, with real
processes: a new CA (`node-master init --force`), then on each node the old CA dropped and the
new pin set; the node registers again (with the key it had) and its pods keep running. And what
happens without the node-side step: the agent keeps the CA it pinned and cannot talk to the
master (no automatic pick-up of a new CA exists yet)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import docker
import pytest
from cryptography import x509

from agent.pki.core import verify_issued_by
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
    without_sessions,
)

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]


def reinit(master: MasterProcess) -> str:
    """``node-master init --force`` on the master's data dir; the new CA pin."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli.node_master",
            "init",
            "--force",
            "--data-dir",
            str(master.root),
            "--server-name",
            master.host,
            "--listen",
            f"{master.host}:{master.port}",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    ).stdout
    return next(line.split()[-1] for line in out.splitlines() if "CA pin:" in line)


def test_manual_ca_rotation_re_registers_the_node_and_keeps_its_pods(
    make_master: MakeMaster, make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    master = make_master()
    master.start()
    old_pin = master.pin
    agent = make_agent(
        None, master=master.url, ca_cert_hash=[old_pin], master_backoff_max_s=1.0
    ).start()
    name = agent.node_name
    wait_for(lambda: node_ready(master, name), what="node registered under the old CA")
    agent.write_manifest("web.json", pod_manifest("web", [sleeper()]))
    wait_for(lambda: running_phase(agent, "web"), what="static pod running")
    before = {c.id for c in node_containers(docker_client, name)}
    key_before = (agent.state_dir / "pki" / "node.key").read_bytes()

    # 1. The master: a new cluster CA (the store and its nodes stay; master.toml is rewritten
    #    by --force, so the operator puts theirs back: here the helper writes it again).
    master.stop()
    new_pin = reinit(master)
    assert new_pin != old_pin
    master.pin = new_pin
    without_sessions(master.admin_conf)
    master.configure(trust=["open"])
    master.start()

    # Without the node-side step the agent keeps its pinned CA and cannot reach the master.
    def refused() -> bool:
        agent.assert_alive()
        return "certificate verify failed" in agent.log_path.read_text(errors="replace")

    wait_for(refused, what="the agent refusing the master's new serving certificate")
    assert not node_ready(master, name)

    # 2. The node: stop, drop the pinned CA, pin the new CA (the old pin may stay), start.
    agent.stop()
    (agent.state_dir / "pki" / "ca.crt").unlink()
    config = agent.config_path.read_text()
    assert json.dumps([old_pin]) in config
    agent.config_path.write_text(
        config.replace(json.dumps([old_pin]), json.dumps([old_pin, new_pin]))
    )
    agent.start()

    node = wait_for(lambda: node_ready(master, name), what="node registered under the new CA")
    assert node["status"]["registration"]["admittedBy"] == "open"
    new_ca = x509.load_pem_x509_certificate((master.root / "pki" / "ca.crt").read_bytes())
    node_cert = x509.load_pem_x509_certificate((agent.state_dir / "pki" / "node.crt").read_bytes())
    assert verify_issued_by(node_cert, [new_ca]) == new_ca
    # Same key: the name stays bound to it in the master's store, no administrator needed.
    assert (agent.state_dir / "pki" / "node.key").read_bytes() == key_before
    assert running_phase(agent, "web")
    assert {c.id for c in node_containers(docker_client, name)} == before
