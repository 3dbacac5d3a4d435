"""Issue 19 items 3 and 7 with real processes on the test etcd: three masters (the first and
two replicas made from copies of its data dir, only ``listen`` changed), the default lease
renewal interval (10 s), a real agent listing the three and running a pod that serves HTTP and
writes lines.

* The agent's master is stopped with SIGSTOP (it accepts TCP connections and never answers):
  the agent's steady lease renewal times out (``SILENT_MASTER_TIMEOUT_S``) and it renews on
  another master; the figure from the stop to the agent's "connected" there is printed (issue
  19's target is 15 s; the bound is the unit test's budget, tests/unit/node/masterlink/
  test_silent_master.py, not a timed assert). nodectl with the stopped master first in its
  ``server`` list passes over it after the connect time-out.
* That master is then killed with SIGKILL: ``nodectl get nodes -o wide`` (the MASTER column
  naming the survivor), ``exec``, ``logs`` and ``port-forward``, each with the dead master
  first in the list, keep working against the survivors, one ``-v`` line per switch; the pod's
  container is the one it was, its restart count unchanged.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.node.masterlink.endpoints import preference
from tests.etcd.replicas import Replica, servers_conf
from tests.etcd.server import EtcdServer
from tests.etcd.test_agent_failover import agent_log, container_of
from tests.etcd.test_master_on_etcd import on_etcd
from tests.helpers import (
    REPO_ROOT,
    AgentProcess,
    MasterProcess,
    ensure_test_image,
    node_ready,
    pod_manifest,
    remove_node_containers,
    wait_for,
)

pytestmark = pytest.mark.docker

NODE = f"nodectl-ha-{uuid.uuid4().hex[:8]}"
WEB = {
    "name": "web",
    "command": [
        "sh",
        "-c",
        "mkdir -p /www && echo public > /www/index.html && httpd -p 8080 -h /www && "
        "i=0; while true; do echo line-$i; i=$((i+1)); sleep 1; done",
    ],
}


def nodectl(conf: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.nodectl", "--config", str(conf), "-v", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=timeout_s,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )


def switches(stderr: str, dead: str) -> list[str]:
    """nodectl -v's switch lines away from ``dead``; nothing else is on stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert all(line.startswith(f"nodectl: {dead}: ") for line in lines), stderr
    assert all("; switching to https://" in line for line in lines), stderr
    return lines


def log_time(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def port_forward_get(conf: Path, dead: str) -> str:
    """``nodectl port-forward`` to the pod's 8080 and one HTTP GET through it."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli.nodectl",
            "--config",
            str(conf),
            "-v",
            "port-forward",
            "web",
            "0:8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", line)
        assert found, f"{line!r} {proc.stderr.read() if proc.stderr else ''}"
        with urllib.request.urlopen(f"http://127.0.0.1:{found[1]}/", timeout=20) as answer:
            body: str = answer.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert len(switches(err, dead)) == 1
    return body


def test_nodectl_and_the_agent_carry_on_when_a_master_goes_silent_then_dies(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    prefix = "/" + etcd_prefix.strip("/").replace("[", "-").replace("]", "-") + "/"
    # The default renewal interval (the test helper's is 1 s): the silent-master figure is
    # the one a real cluster sees.
    m0 = MasterProcess(tmp_path / "m0", lease_renew_s=10.0, lease_grace_s=40.0)
    on_etcd(m0, etcd, prefix, [etcd.endpoint])
    masters = [m0, Replica(m0, tmp_path / "m1"), Replica(m0, tmp_path / "m2")]
    urls = [m.url for m in masters]
    by_url = {m.url: m for m in masters}
    first = by_url[preference(urls, NODE)[0]]
    survivors = [m for m in masters if m is not first]
    agent = AgentProcess(tmp_path / "node", NODE, master=urls, ca_cert_hash=[m0.pin])
    client = docker.from_env()
    ensure_test_image(client)
    stopped_at = 0.0
    try:
        for master in masters:
            master.start()
        agent.start()
        wait_for(lambda: node_ready(first, NODE), what="node Ready on its first master")
        manifest = tmp_path / "web.json"
        manifest.write_text(json.dumps(pod_manifest("web", [WEB])))
        applied = first.nodectl("apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        wait_for(lambda: container_of(first, "web"), what="web running")
        running = container_of(first, "web")

        # -- silent: SIGSTOP ---------------------------------------------------------------
        assert first.proc is not None
        first.proc.send_signal(signal.SIGSTOP)
        stopped_at = time.time()

        def moved() -> dict[str, Any] | None:
            return next(
                (
                    r
                    for r in agent_log(agent)
                    if r.get("msg") == "connected to the master"
                    and r.get("master") != first.url
                    and log_time(r) >= stopped_at
                ),
                None,
            )

        connected = wait_for(moved, what="the agent on another master", timeout_s=60)
        assert connected is not None
        figure = log_time(connected) - stopped_at
        print(f"silent master: the agent renewed on another master {figure:.1f} s after SIGSTOP")
        switch = next(
            r
            for r in agent_log(agent)
            if r.get("msg", "").startswith("master unreachable; switch")
            and r.get("master") == first.url
        )
        assert "no answer in time" in switch["error"], switch  # the short time-out noticed it
        survivor = by_url[connected["master"]]
        silent_first = servers_conf(m0, urls=[first.url, *(m.url for m in survivors)],
                                    path=tmp_path / "silent-first.conf")  # fmt: skip
        got = nodectl(silent_first, "get", "nodes", NODE, "-o", "wide")
        assert got.returncode == 0, got.stderr
        (line,) = switches(got.stderr, first.url)
        assert "timed out" in line, line  # the connect time-out, not a refusal

        # -- dead: SIGKILL -----------------------------------------------------------------
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=20)
        dead_first = silent_first  # the same list: the dead master first

        got = nodectl(dead_first, "get", "nodes", NODE, "-o", "wide")
        assert got.returncode == 0, got.stderr
        assert len(switches(got.stderr, first.url)) == 1
        header, row = got.stdout.splitlines()
        assert header.split()[-1] == "MASTER"
        assert row.split()[0] == NODE and row.split()[-1] == survivor.url

        executed = nodectl(dead_first, "exec", "web", "--", "echo", "hello from web")
        assert executed.returncode == 0, executed.stderr
        assert executed.stdout == "hello from web\n"
        assert len(switches(executed.stderr, first.url)) == 1

        logs = nodectl(dead_first, "logs", "web", "--tail", "3")
        assert logs.returncode == 0, logs.stderr
        assert re.fullmatch(r"(line-\d+\n){3}", logs.stdout), logs.stdout
        assert len(switches(logs.stderr, first.url)) == 1

        assert port_forward_get(dead_first, first.url) == "public\n"

        assert container_of(survivor, "web") == running  # the same container, no restart
        registered = [r for r in agent_log(agent) if r.get("msg") == "registered with the master"]
        assert len(registered) == 1
        agent.stop()
        for marker in ("BlockingError", "task died unexpectedly", "Traceback"):
            assert marker not in agent.log_path.read_text(), agent.log_tail(40)
    finally:
        if first.proc is not None and first.proc.poll() is None:
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=20)
        if agent.proc is not None:
            agent.stop()
        for master in survivors:
            master.stop()
        remove_node_containers(client, NODE)
        client.close()
