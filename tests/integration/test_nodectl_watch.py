"""``nodectl get pods -w`` against a real master and agent (issue 17 item 3): a line per change
as a pod is created, becomes Running and is deleted, through a master restart (stopped, started
again on the same data directory and port: the watch reconnects, resumes, and prints the next
change); ``apply`` says created / unchanged / configured; ``get events --for pod/NAME`` shows
the node's events about the pod; Ctrl-C ends the watch quietly, as kubectl's does (status 1).
First, the real master keeps the watch wire contract (tests/contracts/watch_wire.py) through
nodectl's own transport, as the fake of the watch's unit tests does."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.cli.nodectl import Client, load_config
from agent.cli.nodectl_watch import HttpTransport, Transport
from tests.contracts.watch_wire import check_watch_wire
from tests.helpers import (
    REPO_ROOT,
    AgentProcess,
    MasterProcess,
    free_port,
    node_ready,
    pod_manifest,
    sleeper,
    wait_for,
)

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]


class Watch:
    """``nodectl get pods -w --output-watch-events`` in the background, its lines collected."""

    def __init__(self, master: MasterProcess, kind: str = "pods") -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.cli.nodectl",
                "--config",
                str(master.admin_conf),
                "get",
                kind,
                "-w",
                "--output-watch-events",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        )
        self.lines: queue.Queue[list[str]] = queue.Queue()
        self.seen: list[list[str]] = []
        self.err = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.split())

    def next_row(
        self, event: str, name: str, status: str | None = None, column: int = 3
    ) -> list[str]:
        """Wait for the row of this event (and STATUS, in ``column``), skipping others."""

        def found() -> list[str] | None:
            while True:
                try:
                    row = self.lines.get_nowait()
                except queue.Empty:
                    return None
                self.seen.append(row)
                if row[:2] == [event, name] and (status is None or row[column] == status):
                    return row

        return wait_for(found, timeout_s=60, what=f"{event} {name} {status}: seen {self.seen}")

    def latest(self, name: str) -> list[str]:
        """The last row printed for ``name`` so far."""
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return [row for row in self.seen if row[1:2] == [name]][-1]


@dataclass
class RealWatchWorld:
    """tests/contracts/watch_wire.py's world: a real master through nodectl's own transport;
    pods bound to a node that does not exist, so nothing but the test changes them."""

    client: Client

    def transport(self) -> Transport:
        return HttpTransport(self.client)

    def unreachable(self) -> Transport:
        url = f"https://127.0.0.1:{free_port()}"
        config = dataclasses.replace(self.client.config, server=url, servers=(url,))
        return HttpTransport(Client(config))

    def create(self, name: str, namespace: str = "default") -> None:
        manifest = pod_manifest(name, [sleeper()], namespace=namespace)
        manifest["spec"]["nodeName"] = "nowhere"
        self.client.call("POST", "/v1/pods", manifest)

    def remove(self, name: str, namespace: str = "default") -> None:
        self.client.call("DELETE", f"/v1/namespaces/{namespace}/pods/{name}")


def test_get_pods_watch_through_a_master_restart(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    master = make_master().start()
    # The wire the watch relies on, as the fake master of its unit tests keeps it.
    check_watch_wire(RealWatchWorld(Client(load_config(str(master.admin_conf)))), "wire")
    agent = make_agent(
        f"watch-{uuid.uuid4().hex[:8]}",
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
    ).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    nodes = Watch(master, "nodes")
    nodes.next_row("ADDED", agent.node_name)
    assert nodes.latest(agent.node_name)[2].split(",")[0] == "Ready"
    watch = Watch(master)
    try:
        web = pod_manifest("web", [sleeper()], grace_s=0)
        path = tmp_path / "web.json"
        path.write_text(json.dumps(web))
        created = master.nodectl("apply", "-f", str(path))
        assert (created.returncode, created.stdout) == (0, "pod/web created\n"), created.stderr
        # The header, then the pod's lines: added, then Running.
        watch.next_row("ADDED", "web")
        assert watch.seen[0][:3] == ["EVENT", "NAME", "READY"]
        watch.next_row("MODIFIED", "web", "Running")
        unchanged = master.nodectl("apply", "-f", str(path))
        assert unchanged.stdout == "pod/web unchanged\n", unchanged.stderr

        # The node's events about the pod, at the master.
        def events() -> str | None:
            done = master.nodectl("get", "events", "--for", "pod/web")
            assert done.returncode == 0, done.stderr
            return done.stdout if "node-agent" in done.stdout or "Started" in done.stdout else None

        shown = wait_for(events, what="the node's events about web")
        header = shown.splitlines()[0].split()
        assert header == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
        assert all(" pod/web " in line for line in shown.splitlines()[1:])

        # The master goes away and comes back on the same data directory and port.
        master.stop()
        master.start()
        wait_for(lambda: node_ready(master, agent.node_name), what="node Ready again")
        changed = dict(web)
        changed["metadata"] = {**web["metadata"], "labels": {"after": "restart"}}
        path.write_text(json.dumps(changed))
        configured = master.nodectl("apply", "-f", str(path))
        assert configured.stdout == "pod/web configured\n", configured.stderr
        # The node watch lived through the restart: its last line shows the node Ready (it
        # may have shown it Unknown while the master was starting).
        wait_for(
            lambda: nodes.latest(agent.node_name)[2].split(",")[0] == "Ready",
            what="the node Ready in the watch",
        )
        deleted = master.nodectl("delete", "pod", "web")
        assert deleted.returncode == 0, deleted.stderr
        watch.next_row("DELETED", "web")
        assert watch.proc.poll() is None  # the watch went on through the restart
    finally:
        for each in (watch, nodes):
            each.proc.send_signal(signal.SIGINT)
            each.err = each.proc.communicate(timeout=30)[1]
    for each in (watch, nodes):
        assert each.proc.returncode == 1  # kubectl get -w's status on Ctrl-C
        assert "Traceback" not in each.err
        # One line about the outage, at most (the restart may fall between two events).
        assert each.err.count("reconnecting") <= 1, each.err
    assert nodes.seen[0][:3] == ["EVENT", "NAME", "STATUS"]
