"""``node-agent doctor`` and ``node-master doctor`` against a real master and agent (issue 18's
doctor acceptance, issue 17 item 9): a healthy node passes (exit 0); a wrong CA pin, a Docker
socket that does not exist, a state dir on a full or read-only tmpfs, a busy health port, an
expired or missing node certificate each fail (exit 1) naming the problem and its fix; the
master's doctor sees its node, then sees it NotReady once the agent stops. Doctor creates
nothing (an absent state dir stays absent) and never prints a traceback."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.pki.core import cert_to_pem, certs_from_pem, key_from_pem
from tests.helpers import REPO_ROOT, AgentProcess, MasterProcess, node_ready, wait_for

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]
WRONG_PIN = "sha256:" + "0" * 64


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(  # noqa: PLW1510 - callers check the exit status
        [sys.executable, "-m", module, "doctor", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr == "", done.stderr
    return done


def agent_doctor(agent: AgentProcess, *flags: str) -> tuple[int, dict[str, dict[str, Any]]]:
    done = run("agent.cli.node_agent", "--config", str(agent.config_path), *flags, "-o", "json")
    report = json.loads(done.stdout)
    assert report["ok"] is (done.returncode == 0)
    return done.returncode, {c["name"]: c for c in report["checks"]}


def master_doctor(master: MasterProcess) -> subprocess.CompletedProcess[str]:
    return run("agent.cli.node_master", "--config", str(master.config_path))


def failing(checks: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, check in checks.items() if not check["ok"]}


@contextlib.contextmanager
def tmpfs(path: Path, *options: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    mount_options = ",".join(("size=1m", *options))
    subprocess.run(["mount", "-t", "tmpfs", "-o", mount_options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(path: Path) -> None:
    with (path / "fill").open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()


def expire(cert_path: Path, ca_dir: Path) -> None:
    """Replace the node's certificate by the same one, as issued 31 days ago (30-day life)."""
    cert = certs_from_pem(cert_path.read_bytes())[0]
    ca_key = key_from_pem((ca_dir / "ca.key").read_bytes())
    now = dt.datetime.now(dt.UTC)
    old = x509.CertificateBuilder(
        issuer_name=cert.issuer,
        subject_name=cert.subject,
        public_key=cert.public_key(),
        serial_number=cert.serial_number,
        not_valid_before=now - dt.timedelta(days=31),
        not_valid_after=now - dt.timedelta(days=1),
        extensions=list(cert.extensions),
    ).sign(ca_key, hashes.SHA256())
    cert_path.write_bytes(cert_to_pem(old))


def test_doctor_on_a_healthy_node_and_on_each_problem(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    master = make_master().start()
    agent = make_agent(master=master.url, ca_cert_hash=[master.pin], master_backoff_max_s=1.0)
    agent.start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")

    code, checks = agent_doctor(agent)
    assert code == 0, checks
    assert "the agent's" in checks["health port"]["detail"]
    assert "served" in checks["api socket"]["detail"]
    assert checks["registration"]["detail"].startswith(f"registered with {master.url}")
    text = run("agent.cli.node_agent", "--config", str(agent.config_path))
    assert text.returncode == 0 and text.stdout.endswith("all checks passed\n")
    assert all(line.startswith(("✓ ", "all checks")) for line in text.stdout.splitlines())

    done = master_doctor(master)
    assert done.returncode == 0, done.stdout
    assert "✓ nodes: 1 nodes, none NotReady" in done.stdout
    assert "is the master's (pid" in done.stdout

    # A wrong CA pin: the master's CA does not match, and the line says which pin it has.
    config = ("--config", str(agent.config_path))
    text = run("agent.cli.node_agent", *config, "--ca-cert-hash", WRONG_PIN)
    assert text.returncode == 1
    assert (
        f"✗ master CA: the master's CA does not match ca_cert_hash (it presents {master.pin})"
        in text.stdout
    )
    assert "    fix: set ca_cert_hash to the pin `node-master init` printed" in text.stdout
    code, checks = agent_doctor(agent, "--ca-cert-hash", "nope")
    assert code == 1 and {"ca pin", "master CA"} <= failing(checks)

    # Docker's socket does not exist.
    socket_path = tmp_path / "no-docker" / "docker.sock"
    text = run("agent.cli.node_agent", *config, "--docker-host", f"unix://{socket_path}")
    assert text.returncode == 1
    assert (
        f"✗ docker: Docker is not reachable at unix://{socket_path}: is dockerd running? "
        "(systemctl start docker)\n    fix: systemctl start docker" in text.stdout
    )

    # A state dir that does not exist stays so; a full tmpfs; a read-only one.
    absent = tmp_path / "absent"
    code, checks = agent_doctor(agent, "--state-dir", str(absent / "state"))
    assert checks["state dir"]["ok"] and "creates" in checks["state dir"]["detail"]
    assert not absent.exists()
    with tmpfs(tmp_path / "full") as full:
        fill(full)
        code, checks = agent_doctor(agent, "--state-dir", str(full))
        state = checks["state dir"]
        assert code == 1 and not state["ok"] and "only" in state["detail"]
        assert f"df -h {full}" in state["fix"]
    with tmpfs(tmp_path / "ro", "ro") as read_only:
        code, checks = agent_doctor(agent, "--state-dir", str(read_only))
        state = checks["state dir"]
        assert code == 1 and "read-only file system" in state["detail"]
        assert "writable" in state["fix"]

    # The agent stops: the master's doctor sees its node NotReady; its port is someone else's.
    agent.stop()

    def not_ready() -> bool:
        done = master_doctor(master)
        return done.returncode == 1 and f"NotReady: {agent.node_name}" in done.stdout

    wait_for(not_ready, what="node-master doctor reports the node NotReady")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", agent.port))
        squatter.listen()
        code, checks = agent_doctor(agent)
    health = checks["health port"]
    assert code == 1
    assert f"127.0.0.1:{agent.port} is in use by pid {os.getpid()}" in health["detail"]
    assert "health_addr" in health["fix"]

    # The node's certificate expired, then missing.
    cert = agent.state_dir / "pki" / "node.crt"
    kept = cert.read_bytes()
    expire(cert, master.root / "pki")
    code, checks = agent_doctor(agent)
    assert code == 1 and failing(checks) == {"node certificate"}
    assert "expired on" in checks["node certificate"]["detail"]
    assert "registers again" in checks["node certificate"]["fix"]
    cert.unlink()
    code, checks = agent_doctor(agent)
    assert code == 1 and failing(checks) == {"node certificate"}
    assert "no node certificate" in checks["node certificate"]["detail"]
    cert.write_bytes(kept)


def test_doctor_shows_why_the_master_refused_the_node(
    make_master: MakeMaster, make_agent: MakeAgent
) -> None:
    master = make_master()
    master.configure(trust=["token"])
    master.start()
    agent = make_agent(
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
        token="abcdef.0123456789abcdef",  # well formed, never created
    )
    agent.start(wait_ready=False)
    state = agent.state_dir / "registration.json"
    wait_for(lambda: state.exists() and "Denied" in state.read_text(), what="refusal recorded")

    text = run("agent.cli.node_agent", "--config", str(agent.config_path))
    assert text.returncode == 1
    [line] = [line for line in text.stdout.splitlines() if line.startswith("✗ registration:")]
    assert f"denied by {master.url}" in line and "abcdef" in line and "(HTTP 403)" in line
    assert "0123456789abcdef" not in text.stdout  # the secret is never shown
    fix = text.stdout.splitlines()[text.stdout.splitlines().index(line) + 1]
    assert fix.startswith("    fix: give the node a valid join token")
