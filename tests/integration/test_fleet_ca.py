"""certs/fleet-ca.sh end to end: the script's fleet CA and node certificate admit a real agent
through a real master's client-cert rule; a certificate from another CA the same script made is
refused, and the agent's log says why."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO_ROOT, AgentProcess, MasterProcess, node_ready, wait_for

pytestmark = pytest.mark.docker

SCRIPT = REPO_ROOT / "certs" / "fleet-ca.sh"

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]


def fleet_ca(*args: str) -> str:
    done = subprocess.run(
        ["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def log_records(agent: AgentProcess) -> list[dict[str, Any]]:
    records = []
    for line in agent.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def test_fleet_ca_script_admits_its_node_and_refuses_another_ca(
    tmp_path: Path, make_master: MakeMaster, make_agent: MakeAgent
) -> None:
    fleet, other = tmp_path / "fleet-ca", tmp_path / "other-ca"
    out = fleet_ca("init", str(fleet))
    assert "client_ca_file" in out
    out = fleet_ca("issue", str(fleet), "edge-a", "--days", "2")
    assert 'bootstrap_cert = "/etc/node-agent/fleet.crt"' in out
    # Another CA made the same way, issuing a certificate for the same node name.
    fleet_ca("init", str(other))
    fleet_ca("issue", str(other), "edge-a")

    master = make_master()
    master.configure(
        trust=["client-cert"],
        client_ca_file=str(fleet / "ca.crt"),
        client_cert_name_must_match=True,
    )
    master.start()

    def agent_with(ca_dir: Path, name: str) -> AgentProcess:
        return make_agent(
            name,
            master=master.url,
            ca_cert_hash=[master.pin],
            master_backoff_max_s=1.0,
            bootstrap_cert=str(ca_dir / "nodes" / "edge-a.crt"),
            bootstrap_key=str(ca_dir / "nodes" / "edge-a.key"),
        )

    # The rogue first: the same node name, a certificate from the other CA.
    rogue = agent_with(other, "edge-a").start()

    def refused() -> dict[str, Any] | None:
        rogue.assert_alive()
        return next(
            (r for r in log_records(rogue) if "does not trust its issuer" in r.get("error", "")),
            None,
        )

    record = wait_for(refused, timeout_s=60, what="the rogue agent logging its refusal")
    assert master.node("edge-a") is None, "a node with a foreign CA's certificate was admitted"
    assert "client_ca_file" in record["error"] and "other-ca" in record["error"], record
    rogue.stop()

    agent = agent_with(fleet, "edge-a").start()
    node = wait_for(lambda: node_ready(master, "edge-a"), what="agent admitted by client-cert")
    assert node["status"]["registration"]["admittedBy"] == "client-cert"
    assert agent.get("/healthz") == (200, "ok")
