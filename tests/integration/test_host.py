"""The host's side of issue 14 (docs/security.md, "The host"), with real master and agent
processes, real TLS on loopback and the real Docker engine: the local port leaks nothing to a
``hostNetwork`` pod, the daemons' files are private whatever the umask, and the node's admission
policy refuses what its config forbids, for master and static pods alike."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from agent.types import LABEL_POD_NAME
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

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]

SECRET = "hunter2-7f3c91d0"  # what the probe must never see
SECRET_HEX = " ".join(f"{b:02x}" for b in SECRET[:6].encode())
DONE = "== probe done"


def join(make_agent: MakeAgent, master: MasterProcess, **config: Any) -> AgentProcess:
    return make_agent(
        master=master.url, ca_cert_hash=[master.pin], master_backoff_max_s=1.0, **config
    )


def listening_ports(pid: int) -> set[int]:
    """Every TCP port the process listens on (its unauthenticated surface and the rest)."""
    return {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def probe_script(ports: list[int]) -> str:
    """What a hostNetwork pod can try without a certificate: plain HTTP and HTTPS (no client
    certificate, any server certificate) on the read-only paths, and a raw request by nc."""
    paths = "/healthz /v1/pods /v1/events /metrics /v1/namespaces/default/pods/db/logs"
    return (
        f"for p in {' '.join(map(str, ports))}; do\n"
        f"  for path in {paths}; do\n"
        '    echo "== http $p $path"; timeout 5 wget -q -O- "http://127.0.0.1:$p$path" 2>&1;'
        ' echo " rc=$?"\n'
        '    echo "== https $p $path";'
        ' timeout 5 wget -q --no-check-certificate -O- "https://127.0.0.1:$p$path" 2>&1; echo " rc=$?"\n'
        "  done\n"
        '  echo "== raw $p"; printf "GET /v1/pods HTTP/1.0\\r\\nHost: local\\r\\n\\r\\n"'
        ' | nc -w 3 127.0.0.1 "$p" 2>&1; echo " rc=$?"\n'
        "done\n"
        f'echo "{DONE}"\n'
    )


def sections(log: str) -> dict[str, str]:
    """The probe's output by ``== kind port path`` header."""
    found: dict[str, str] = {}
    header = None
    for line in log.splitlines():
        if line.startswith("== "):
            header = line[3:]
            found[header] = ""
        elif header is not None:
            found[header] += line + "\n"
    return found


def test_a_host_network_pod_reads_no_env_through_any_unauthenticated_port(
    make_master: MakeMaster,
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master = make_master().start()
    # At debug, aiohttp logs the probe's TLS hello on the plain health port with a traceback
    # (its parser's 400, "HTTPS traffic on an HTTP port"), which the fixture counts as a crash.
    agent = join(make_agent, master, log_level="info").start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    db = pod_manifest("db", [{**sleeper(), "env": [{"name": "DB_PASSWORD", "value": SECRET}]}])
    manifest = tmp_path / "db.yaml"
    manifest.write_text(json.dumps(db))
    done = master.nodectl("apply", "-f", str(manifest))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: running_phase(agent, "db"), timeout_s=60, what="db Running")

    # The pod list with the secret is still there for root, on the socket only.
    assert SECRET in agent.api_get("/v1/pods")[1]
    assert agent.get("/healthz") == (200, "ok")
    assert agent.get("/v1/pods")[0] == 404
    assert agent.get("/v1/events")[0] == 404
    status, metrics = agent.get("/metrics")
    assert status == 200 and 'pod="db"' in metrics and SECRET not in metrics

    assert agent.proc is not None and master.proc is not None
    agent_ports = listening_ports(agent.proc.pid)
    node_api_port = int(tomllib.loads(agent.config_path.read_text())["api_addr"].split(":")[1])
    assert {agent.port, node_api_port} <= agent_ports
    ports = sorted(agent_ports | listening_ports(master.proc.pid))
    probe = pod_manifest(
        "probe",
        [{"name": "main", "command": ["sh", "-c", probe_script(ports)]}],
        restart_policy="Never",
        hostNetwork=True,
    )
    agent.write_manifest("probe.yaml", probe)

    def probe_log() -> str | None:
        for container in node_containers(docker_client, agent.node_name):
            if container.labels.get(LABEL_POD_NAME) == "probe":
                log = container.logs().decode(errors="replace")
                return log if DONE in log else None
        return None

    log = wait_for(probe_log, timeout_s=120, what="the probe's output")
    # busybox's TLS client dumps a plain answer in hex: the secret is not there either.
    assert SECRET not in log and "DB_PASSWORD" not in log and SECRET_HEX not in log
    found = sections(log)
    assert len(found) == len(ports) * 11 + 1, sorted(found)
    # The probe did reach the ports: the health port answered it, and said 404 to the rest.
    health = agent.port
    assert found[f"http {health} /healthz"].startswith("ok")
    for path in ("/v1/pods", "/v1/events", "/v1/namespaces/default/pods/db/logs"):
        assert "404 Not Found" in found[f"http {health} {path}"], found[f"http {health} {path}"]
    assert 'pod="db"' in found[f"http {health} /metrics"]
    # The node API and the master want a client certificate: nothing is served without one.
    for port in ports:
        if port != health:
            assert " rc=0" not in found[f"https {port} /v1/pods"], found[f"https {port} /v1/pods"]


def private_modes(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every path below ``root`` that is not owner-only (dirs 0700, files 0600)."""
    loose = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here != root or d not in skip]
        for name, want in [(".", 0o700)] * (here == root) + [(d, 0o700) for d in dirnames]:
            mode = stat.S_IMODE((here / name).lstat().st_mode)
            if mode != want:
                loose[str((here / name).relative_to(root))] = oct(mode)
        for name in filenames:
            st = (here / name).lstat()
            if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o600:
                loose[str((here / name).relative_to(root))] = oct(stat.S_IMODE(st.st_mode))
    return loose


def tightened(log_path: Path) -> set[str]:
    """The paths a daemon's JSON log says it tightened at start."""
    paths = set()
    for line in log_path.read_text(errors="replace").splitlines():
        if "private path was readable by others" in line:
            paths.add(json.loads(line)["path"])
    return paths


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual shell umask, inherited by the daemons started under it."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("umask_022")
def test_master_and_agent_started_under_umask_022_keep_their_files_private(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    master = make_master().start()
    agent = join(make_agent, master, node_labels=["zone=a"]).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(json.dumps(pod_manifest("web", [sleeper()])))
    assert master.nodectl("apply", "-f", str(manifest)).returncode == 0
    wait_for(lambda: running_phase(agent, "web"), timeout_s=60, what="web Running")
    issue_user = ["issue-user", "alice", "--data-dir", str(master.root)]
    subprocess.run(  # a nodectl config for a viewer: written by node-master, private too
        [sys.executable, "-m", "agent.cli.node_master", *issue_user],
        check=True,
        capture_output=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    # The harness opens master.log in the data dir under umask 022 before the master starts:
    # that is all the master may have had to tighten; what init and run made was private.
    assert tightened(master.log_path) <= {str(master.log_path)}
    assert private_modes(master.root) == {}, f"master {master.root}"
    names = {p.name for p in master.root.iterdir()}
    assert {"store.db", "store.db-wal", "store.db-shm", "pki", "users", "master.toml"} <= names
    # The agent made its state dir itself: nothing to tighten, everything private (the pods'
    # volume dirs included: this pod has none).
    assert tightened(agent.log_path) == set()
    assert private_modes(agent.state_dir) == {}, f"agent {agent.state_dir}"
    assert {"checkpoint.json", "pki", "api.sock"} <= {p.name for p in agent.state_dir.iterdir()}

    # Loosened by hand while they were down: both daemons put it right at start and say so.
    master.stop()
    agent.stop()
    (master.root / "store.db").chmod(0o644)
    master.root.chmod(0o755)
    (agent.state_dir / "pki" / "node.key").chmod(0o644)
    master.start()
    agent.start()
    assert {str(master.root / "store.db"), str(master.root)} <= tightened(master.log_path)
    assert str(agent.state_dir / "pki" / "node.key") in tightened(agent.log_path)
    assert private_modes(master.root) == {}
    assert private_modes(agent.state_dir) == {}


def forbidden(agent: AgentProcess, name: str) -> dict[str, Any] | None:
    pod = agent.pod(name)
    if pod is None or pod["status"].get("reason") != "Forbidden":
        return None
    return pod


def test_the_admission_policy_refuses_a_forbidden_host_path_from_the_master_and_a_file(
    make_master: MakeMaster,
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    master = make_master().start()
    agent = join(make_agent, master, allowed_host_paths=[str(allowed)]).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")

    def host_path_pod(name: str, path: Path) -> dict[str, Any]:
        main = {**sleeper(), "volumeMounts": [{"name": "host", "mountPath": "/host"}]}
        volume = {"name": "host", "hostPath": {"path": str(path)}}
        return pod_manifest(name, [main], volumes=[volume])

    forbidden_path = tmp_path / "elsewhere"
    rule = f"outside allowed_host_paths [{allowed}]"
    # From the master: an admin's apply.
    manifest = tmp_path / "pods.yaml"
    manifest.write_text(json.dumps(host_path_pod("api-bad", forbidden_path)))
    done = master.nodectl("apply", "-f", str(manifest))
    assert done.returncode == 0, done.stderr
    # From a file: a static pod. And an allowed one beside them, which runs.
    agent.write_manifest("static-bad.yaml", host_path_pod("static-bad", Path("/etc")))
    agent.write_manifest("static-ok.yaml", host_path_pod("static-ok", allowed / "data"))

    wait_for(lambda: running_phase(agent, "static-ok"), timeout_s=60, what="static-ok Running")
    for name, path in (("api-bad", forbidden_path), ("static-bad", Path("/etc"))):
        pod = wait_for(lambda n=name: forbidden(agent, n), timeout_s=60, what=f"{name} refused")
        message = f"hostPath {path} of volume host is {rule}"
        assert pod["status"] == {"phase": "Failed", "reason": "Forbidden", "message": message}
        events = [e for e in agent.events() if e["involvedObject"]["name"] == name]
        assert [(e["reason"], e["type"], e["message"]) for e in events] == [
            ("Forbidden", "Warning", message)
        ]
    assert not forbidden_path.exists()  # never created: the pod never started
    names = {c.labels.get(LABEL_POD_NAME) for c in node_containers(docker_client, agent.node_name)}
    assert "api-bad" not in names and "static-bad" not in names

    # The admin sees why: the master's pod and the static pod's mirror carry the rule.
    def reported() -> dict[str, dict[str, Any]] | None:
        pods = master.pods()
        mirror = f"static-bad-{agent.node_name}"
        want = ("api-bad", mirror)
        if all(pods.get(n, {}).get("status", {}).get("reason") == "Forbidden" for n in want):
            return pods
        return None

    pods = wait_for(reported, timeout_s=60, what="the refusals reported to the master")
    assert "allowed_host_paths" in pods["api-bad"]["status"]["message"]
    assert "allowed_host_paths" in pods[f"static-bad-{agent.node_name}"]["status"]["message"]
    agent.assert_alive()
