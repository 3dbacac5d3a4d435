"""Issue 18's acceptance on hosts that boot systemd, as an operator would do it.

A master host installs node-master from its deb, `node-master init`s the cluster, switches the
registration rule to ``token`` and makes a join token carrying a label. An agent host (the
host's Docker socket bind-mounted: its pods are sibling containers on the host's engine) gets
node-agent installed and configured by cloud-init from packaging/cloud-init/user-data.yaml,
rendered by render.sh with the master's URL (its address on Docker's bridge), CA pin, the token
and a label. Then, in order (one module: each step starts from where the previous left):
the node joined, its pod runs; a second host with the same (one-use) token is refused, the
agent logging the master's reason and doctor showing it; the token deleted, the restarted agent is still the master's; the watchdog restarts a frozen agent without touching the pod;
an upgrade to N+1 restarts the agent and leaves config and pod alone; removal stops the agent
and keeps pods, state and config; purge removes state and config, and leaves the pods' containers
to Docker, as docs/packaging.md says.

The packages are built from this tree by packaging/build.sh (version N as in agent/__init__.py,
N+1 with its last component bumped) into build/system-pkg/<version>/, not dist/: `make deb`'s
output is left alone, and the tests never take a stale package from there.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import LABEL_NODE, TEST_IMAGE, wait_for
from tests.system.pkg.conftest import HostFactory
from tests.system.pkg.host import REPO_ROOT, SystemdHost

BUILD_ROOT = Path("build/system-pkg")  # relative to the repository (packaging/build.sh wants so)
ADMIN = "/var/lib/node-master/admin.conf"
MASTER_PORT = 6443
POD = "web"
TOKEN_LABEL = "pool=systest"
CLOUD_INIT_LABEL = "zone=test"
# The shipped unit's WatchdogSec is 30 s, RestartSec a few more; a loaded machine gets slack.
WATCHDOG_RESTART_TIMEOUT_S = 120.0
NODE_TIMEOUT_S = 90.0


def _version_n() -> str:
    text = (REPO_ROOT / "agent" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([0-9.]+)"$', text, re.M)
    assert match, "agent/__init__.py has no __version__"
    return match.group(1)


def _bump(version: str) -> str:
    parts = version.split(".")
    return ".".join([*parts[:-1], str(int(parts[-1]) + 1)])


@dataclass(frozen=True, slots=True)
class Debs:
    version: str
    agent: Path
    master: Path


def _build_debs(version: str) -> Debs:
    dist = BUILD_ROOT / version
    out = subprocess.run(
        ["bash", "packaging/build.sh", "deb"],
        cwd=REPO_ROOT,
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "VERSION": version,
            # BUILD_DIR stays build.sh's default: the wheelhouse `make deb` fills is reused.
            "DIST": str(dist),
        },
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, f"packaging/build.sh deb (VERSION={version}):\n{out.stderr[-4000:]}"
    debs = Debs(
        version,
        REPO_ROOT / dist / f"node-agent_{version}_amd64.deb",
        REPO_ROOT / dist / f"node-master_{version}_amd64.deb",
    )
    assert debs.agent.is_file() and debs.master.is_file(), f"no debs in {dist}: {out.stderr}"
    return debs


@pytest.fixture(scope="module")
def debs() -> tuple[Debs, Debs]:
    """Version N and N+1 of both packages."""
    n = _version_n()
    return _build_debs(n), _build_debs(_bump(n))


@dataclass(frozen=True, slots=True)
class Cluster:
    master: SystemdHost
    agent: SystemdHost
    n: Debs
    n1: Debs
    ca_pin: str
    token_id: str
    user_data: str  # as rendered for the agent host (its token has one use)

    def nodectl(self, *argv: str) -> str:
        return self.master.run("nodectl", "--config", ADMIN, *argv).stdout

    def node(self) -> dict[str, Any]:
        listed: dict[str, Any] = json.loads(self.nodectl("get", "nodes", "-o", "json"))
        items = [n for n in listed["items"] if n["metadata"]["name"] == self.agent.name]
        assert items, f"node {self.agent.name} is not registered"
        node: dict[str, Any] = items[0]
        return node

    def pod(self) -> dict[str, Any]:
        listed: dict[str, Any] = json.loads(self.nodectl("get", "pods", "-o", "json"))
        items = [p for p in listed["items"] if p["metadata"]["name"] == POD]
        assert items, f"pod {POD} is not on the master"
        pod: dict[str, Any] = items[0]
        return pod


def _ready(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


def _active_running(host: SystemdHost, unit: str) -> dict[str, str] | None:
    props = host.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts")
    return props if (props["ActiveState"], props["SubState"]) == ("active", "running") else None


def _install_master(master: SystemdHost, deb: Path) -> tuple[str, str]:
    """node-master from its package, initialised, serving under systemd with the token rule
    only; a join token (one use, the label TOKEN_LABEL). Returns (CA pin, token)."""
    master.put(deb, "/root/")
    master.run("apt-get", "install", "-y", f"/root/{deb.name}")
    address = master.ip()
    init = master.run(
        "node-master", "init", "--data-dir", "/var/lib/node-master",
        "--server-name", address, "--listen", f"0.0.0.0:{MASTER_PORT}",
    ).stdout  # fmt: skip
    pin = re.search(r"sha256:[0-9a-f]{64}", init)
    assert pin, f"node-master init printed no CA pin:\n{init}"
    # Only a join token admits a node (init writes trust = ["open"]).
    master.sh(
        'sed -i \'s/^trust = \\["open"\\]$/trust = ["token"]/\' /var/lib/node-master/master.toml'
        " && grep -qx 'trust = \\[\"token\"\\]' /var/lib/node-master/master.toml"
    )
    # The unit is enabled by the package and starts once master.toml exists.
    master.run("systemctl", "start", "node-master.service")
    wait_for(lambda: _active_running(master, "node-master.service"), what="node-master active")
    created = master.run(
        "node-master", "token", "create", "--ttl", "1h", "--usages", "1",
        "--labels", TOKEN_LABEL, "--description", "test_install", "--data-dir", "/var/lib/node-master",
    ).stdout  # fmt: skip
    token = re.search(r"--token ([a-z0-9]{6}\.[a-z0-9]{16})", created)
    assert token, f"token create printed no join line:\n{created}"
    assert f"--master https://{address}:{MASTER_PORT}" in created and pin.group(0) in created
    return pin.group(0), token.group(1)


def _cloud_init(agent: SystemdHost, user_data: str) -> None:
    """Apply user-data as cloud-init does at first boot: a NoCloud seed, then cloud-init's
    own stages (the image keeps them off at boot)."""
    agent.write("/var/lib/cloud/seed/nocloud/meta-data", f"instance-id: {agent.name}\n")
    agent.write("/var/lib/cloud/seed/nocloud/user-data", user_data)
    agent.run("cloud-init", "schema", "--config-file", "/var/lib/cloud/seed/nocloud/user-data")
    for stage in (["init", "--local"], ["init"], ["modules", "--mode=config"],
                  ["modules", "--mode=final"]):  # fmt: skip
        agent.run("cloud-init", *stage)
    result = json.loads(agent.read("/var/lib/cloud/data/result.json"))
    assert result["v1"]["errors"] == [], f"cloud-init errors: {result['v1']['errors']}"


@pytest.fixture(scope="module")
def cluster(boot_host: HostFactory, debs: tuple[Debs, Debs]) -> Iterator[Cluster]:
    n, n1 = debs
    master = boot_host("master")
    pin, token = _install_master(master, n.master)
    agent = boot_host("agent", docker_socket=True)
    agent.put(n.agent, "/root/")
    rendered = subprocess.run(
        ["bash", "packaging/cloud-init/render.sh",
         "--master", f"https://{master.ip()}:{MASTER_PORT}", "--ca-pin", pin, "--token", token,
         "--label", CLOUD_INIT_LABEL, "--package", f"/root/{n.agent.name}"],
        cwd=REPO_ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    _cloud_init(agent, rendered)
    yield Cluster(master, agent, n, n1, pin, token.split(".")[0], rendered)


def _pod_containers(cluster: Cluster) -> dict[str, tuple[str, str]]:
    """The pod's containers on the host's engine (sandbox included): name -> (id, StartedAt)."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={LABEL_NODE}={cluster.agent.name}"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert ids, f"no container of node {cluster.agent.name} on the host's engine"
    inspected = json.loads(
        subprocess.run(
            ["docker", "inspect", *ids], check=True, capture_output=True, text=True
        ).stdout
    )
    out = {}
    for c in inspected:
        assert c["State"]["Running"], f"{c['Name']} is not running: {c['State']}"
        out[c["Name"]] = (c["Id"], c["State"]["StartedAt"])
    return out


def _pod_running(cluster: Cluster) -> dict[str, Any] | None:
    pod = cluster.pod()
    statuses = pod["status"].get("containerStatuses") or []
    ready = statuses and all(s.get("ready") for s in statuses)
    return pod if pod["status"].get("phase") == "Running" and ready else None


def _restart_counts(pod: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {
        s["name"]: (s["containerID"], s["restartCount"]) for s in pod["status"]["containerStatuses"]
    }


@pytest.fixture(scope="module")
def running_pod(cluster: Cluster) -> dict[str, Any]:
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "namespace": "default"},
        "spec": {
            "nodeName": cluster.agent.name,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": TEST_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                }
            ],
        },
    }
    cluster.master.write("/root/pod.json", json.dumps(manifest))
    cluster.nodectl("apply", "-f", "/root/pod.json")
    return wait_for(lambda: _pod_running(cluster), timeout_s=NODE_TIMEOUT_S, what="pod Running")


def test_cloud_init_installs_the_agent_which_joins_with_a_token(cluster: Cluster) -> None:
    agent = cluster.agent
    assert (
        agent.run("dpkg-query", "-W", "-f", "${Version}", "node-agent").stdout == cluster.n.version
    )
    status = agent.run("systemctl", "status", "--no-pager", "node-agent.service").stdout
    assert "Active: active (running)" in status, status
    assert agent.run("systemctl", "is-enabled", "node-agent.service").stdout.strip() == "enabled"
    # What cloud-init wrote: the master, the pin and the token file (0600), nothing else needed.
    toml = agent.read("/etc/node-agent/agent.toml")
    assert f'master = "https://{cluster.master.ip()}:{MASTER_PORT}"' in toml
    assert cluster.ca_pin in toml
    assert agent.run("stat", "-c", "%a", "/etc/node-agent/join-token").stdout.strip() == "600"

    def ready_node() -> dict[str, Any] | None:
        node = cluster.node()
        return node if _ready(node) else None

    node = wait_for(ready_node, timeout_s=NODE_TIMEOUT_S, what="node Ready on the master")
    registration = node["status"]["registration"]
    assert (registration["phase"], registration["admittedBy"]) == ("Approved", "token")
    assert cluster.token_id in registration["reason"]
    labels = node["metadata"]["labels"]
    assert labels.get("pool") == "systest", "the token's label is not on the node"
    assert labels.get("zone") == "test", "cloud-init's node_labels are not on the node"
    assert "registered with the master" in agent.journal("node-agent.service")
    # The installed doctor on this node: every check passes (systemd's among them) but the
    # image filesystem's, which needs the engine's root dir and this test host only has the
    # engine's socket (its engine is the machine's); doctor says so and names the fix.
    doctor = agent.run("node-agent", "doctor", check=False)
    lines = doctor.stdout.splitlines()
    failed = [line for line in lines if line.startswith("✗")]
    assert [line.split(":")[0] for line in failed] == ["✗ image fs"], doctor.stdout
    assert "fix: run doctor on the engine's host" in doctor.stdout
    assert "1 of " in lines[-1] and doctor.returncode == 1, doctor.stdout
    systemd_line = next(line for line in lines if line.startswith("✓ systemd:"))
    assert "active (running)" in systemd_line and "watchdog" in systemd_line, systemd_line


def test_pod_runs_on_the_hosts_engine(cluster: Cluster, running_pod: dict[str, Any]) -> None:
    containers = _pod_containers(cluster)
    # The sandbox and the app container, siblings of the agent's host container.
    assert len(containers) == 2, containers
    (main_id, restarts) = _restart_counts(running_pod)["main"]
    assert main_id.removeprefix("docker://") in {cid for cid, _ in containers.values()}
    assert restarts == 0


def test_a_used_up_token_is_refused_with_its_reason(
    cluster: Cluster, boot_host: HostFactory
) -> None:
    """A second host bootstrapped with the same user-data: the token had one use, so the
    master refuses it; the agent logs why and its doctor shows it."""
    second = boot_host("agent2", docker_socket=True)
    second.put(cluster.n.agent, "/root/")
    _cloud_init(second, cluster.user_data)
    reason = f"join token {cluster.token_id} is used up"
    wait_for(
        lambda: reason in second.journal("node-agent.service"),
        timeout_s=NODE_TIMEOUT_S,
        what="the refusal in the second agent's journal",
    )
    doctor = second.run("node-agent", "doctor", check=False)
    registration = [
        line for line in doctor.stdout.splitlines() if line[2:].startswith("registration:")
    ]
    assert doctor.returncode == 1 and registration, doctor.stdout
    assert registration[0].startswith("✗ registration: denied") and reason in registration[0]
    assert "fix: give the node a valid join token" in doctor.stdout, doctor.stdout
    listed = json.loads(cluster.nodectl("get", "nodes", "-o", "json"))["items"]
    assert second.name not in {n["metadata"]["name"] for n in listed}
    second.close()


def test_a_deleted_token_leaves_the_node_that_joined_with_it(cluster: Cluster) -> None:
    master, agent = cluster.master, cluster.agent
    listed = master.run(
        "node-master", "token", "list", "-o", "json", "--data-dir", "/var/lib/node-master"
    ).stdout
    assert cluster.token_id in listed
    master.run(
        "node-master", "token", "delete", cluster.token_id, "--data-dir", "/var/lib/node-master"
    )
    assert (
        cluster.token_id
        not in master.run(
            "node-master", "token", "list", "-o", "json", "--data-dir", "/var/lib/node-master"
        ).stdout
    )
    # The agent restarted: it comes back with its own certificate, not the token.
    pid = agent.main_pid("node-agent.service")
    agent.run("systemctl", "restart", "node-agent.service")
    assert agent.main_pid("node-agent.service") != pid
    wait_for(
        lambda: (
            "connected to the master"
            in agent.run(
                "journalctl",
                "--no-pager",
                "-u",
                "node-agent.service",
                f"_PID={agent.main_pid('node-agent.service')}",
            ).stdout
        ),
        timeout_s=NODE_TIMEOUT_S,
        what="the restarted agent connected",
    )
    node = cluster.node()
    assert _ready(node) and node["status"]["registration"]["phase"] == "Approved"


def test_watchdog_restarts_a_frozen_agent_and_the_pod_is_untouched(
    cluster: Cluster, running_pod: dict[str, Any]
) -> None:
    agent = cluster.agent
    before = _active_running(agent, "node-agent.service")
    assert before, "node-agent is not active (running)"
    containers = _pod_containers(cluster)
    counts = _restart_counts(cluster.pod())

    agent.run("kill", "-STOP", before["MainPID"])

    def restarted() -> dict[str, str] | None:
        now = _active_running(agent, "node-agent.service")
        return now if now and int(now["NRestarts"]) == int(before["NRestarts"]) + 1 else None

    after = wait_for(
        restarted, timeout_s=WATCHDOG_RESTART_TIMEOUT_S, interval_s=0.5, what="watchdog restart"
    )
    assert after["MainPID"] != before["MainPID"]
    journal = agent.journal("node-agent.service")
    assert "Watchdog timeout" in journal, journal[-3000:]
    # The restarted agent adopted the pod: same containers, started once, no restart counted.
    wait_for(lambda: _pod_running(cluster), timeout_s=NODE_TIMEOUT_S, what="pod Running again")
    assert _pod_containers(cluster) == containers
    assert _restart_counts(cluster.pod()) == counts


def test_upgrade_restarts_the_agent_and_leaves_config_and_pod(
    cluster: Cluster, running_pod: dict[str, Any]
) -> None:
    agent = cluster.agent
    before = _active_running(agent, "node-agent.service")
    assert before, "node-agent is not active (running)"
    config = agent.run(
        "sha256sum", "/etc/node-agent/agent.toml", "/etc/node-agent/join-token"
    ).stdout
    containers = _pod_containers(cluster)
    counts = _restart_counts(cluster.pod())

    agent.put(cluster.n1.agent, "/root/")
    agent.run("apt-get", "install", "-y", f"/root/{cluster.n1.agent.name}")

    assert (
        agent.run("dpkg-query", "-W", "-f", "${Version}", "node-agent").stdout == cluster.n1.version
    )
    assert agent.run("node-agent", "version").stdout.split()[-1] == cluster.n1.version
    after = wait_for(
        lambda: _active_running(agent, "node-agent.service"), what="node-agent active again"
    )
    assert after["MainPID"] != before["MainPID"], "the upgrade did not restart the agent"
    assert f"version={cluster.n1.version}" in agent.journal("node-agent.service")
    config_after = agent.run(
        "sha256sum", "/etc/node-agent/agent.toml", "/etc/node-agent/join-token"
    ).stdout
    assert config_after == config
    wait_for(lambda: _pod_running(cluster), timeout_s=NODE_TIMEOUT_S, what="pod Running after")
    assert _pod_containers(cluster) == containers
    assert _restart_counts(cluster.pod()) == counts
    wait_for(lambda: _ready(cluster.node()), timeout_s=NODE_TIMEOUT_S, what="node Ready after")


def test_remove_keeps_pods_state_and_config_purge_removes_state(
    cluster: Cluster, running_pod: dict[str, Any]
) -> None:
    agent = cluster.agent
    containers = _pod_containers(cluster)

    agent.run("apt-get", "remove", "-y", "node-agent")
    assert agent.show("node-agent.service", "ActiveState")["ActiveState"] == "inactive"
    assert agent.run("test", "-e", "/usr/bin/node-agent", check=False).returncode != 0
    # Removal: the daemon is gone, pods keep running, state and config stay.
    assert _pod_containers(cluster) == containers
    agent.run("test", "-s", "/var/lib/node-agent/checkpoint.json")
    agent.run("test", "-f", "/etc/node-agent/agent.toml")

    purged = agent.run("apt-get", "purge", "-y", "node-agent").stdout
    assert "left to Docker" in purged, purged
    for gone in ("/var/lib/node-agent", "/etc/node-agent/agent.toml"):
        assert agent.run("test", "-e", gone, check=False).returncode != 0, f"{gone} survived purge"
    # Purge leaves the pods' containers to Docker (running), and says how to remove them.
    assert _pod_containers(cluster) == containers


def test_master_remove_keeps_its_state_purge_removes_it(cluster: Cluster) -> None:
    master = cluster.master
    master.run("apt-get", "remove", "-y", "node-master")
    assert master.show("node-master.service", "ActiveState")["ActiveState"] == "inactive"
    assert master.run("test", "-e", "/usr/bin/node-master", check=False).returncode != 0
    # The cluster CA, store and master.toml stay: reinstalling resumes where it stopped.
    for kept in ("pki/ca.crt", "pki/ca.key", "master.toml"):
        master.run("test", "-s", f"/var/lib/node-master/{kept}")
    master.run("apt-get", "purge", "-y", "node-master")
    assert master.run("test", "-e", "/var/lib/node-master", check=False).returncode != 0
