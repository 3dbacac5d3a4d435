"""kubectl habits against a real master and agent (issue 17, items 1, 2 and 8): each row a
command as a kubectl user types it and the shape of what it must print, or its exit status;
scripts (``-o json | jq '.items | length'`` for 0, 1, 2 and 3 pods, ``-o name``, jsonpath,
custom-columns, ``-l``, ``--field-selector``); the STATUS rows a real node produces (Running,
Completed, Error, Terminating while a deleted pod's container stops, NodeLost once the node is
gone); and for every row, above all the bad-input ones, no Python traceback on stderr.

Shell rows run through ``bash -o pipefail -c`` so a pipe (``| jq``, ``| head -1``) is tested
as a user's shell runs it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from tests.helpers import (
    REPO_ROOT,
    AgentProcess,
    MasterProcess,
    node_ready,
    pod_manifest,
    sleeper,
    wait_for,
)

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]


@dataclass(frozen=True, slots=True)
class Row:
    command: str  # what follows ``nodectl`` (or a shell line with NODECTL in it)
    exit_code: int | tuple[int, ...]  # several: a race decides (a pipe closed early or not)
    check: Callable[[str, str], bool]  # (stdout, stderr) → as expected
    shell: bool = False
    stdin: str | None = None


def nodectl_line(master: MasterProcess) -> str:
    python = shlex.quote(sys.executable)
    return f"{python} -m agent.cli.nodectl_control --config {shlex.quote(str(master.admin_conf))}"


def run(master: MasterProcess, row: Row) -> subprocess.CompletedProcess[str]:
    prefix = nodectl_line(master)
    line = row.command.replace("NODECTL", prefix) if row.shell else f"{prefix} {row.command}"
    return subprocess.run(  # noqa: PLW1510 - the row's exit code is the check
        ["bash", "-o", "pipefail", "-c", line],
        capture_output=True,
        text=True,
        input=row.stdin if row.stdin is not None else "",
        cwd=REPO_ROOT,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )


def count_items(jq: bool) -> str:
    """The script's own way to count a List's items: jq where it is (bootstrap installs it)."""
    if jq:
        return "jq '.items | length'"
    python = shlex.quote(sys.executable)
    return f"{python} -c 'import json,sys; print(len(json.load(sys.stdin)[\"items\"]))'"


def table(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


def check_rows(master: MasterProcess, rows: list[Row]) -> None:
    failures = []
    for row in rows:
        done = run(master, row)
        problem = None
        if "Traceback" in done.stderr or "Exception ignored" in done.stderr:
            problem = "a Python traceback"
        elif done.returncode not in (
            row.exit_code if isinstance(row.exit_code, tuple) else (row.exit_code,)
        ):
            problem = f"exit {done.returncode}, expected {row.exit_code}"
        elif not row.check(done.stdout, done.stderr):
            problem = "unexpected output"
        if problem:
            failures.append(
                f"{row.command}: {problem}\n  stdout: {done.stdout[-600:]!r}\n"
                f"  stderr: {done.stderr[-600:]!r}"
            )
    assert not failures, "\n".join(failures)


def test_kubectl_habits(make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path) -> None:
    master = make_master().start()
    agent = make_agent(
        f"habits-{uuid.uuid4().hex[:8]}",
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
    ).start()
    node = agent.node_name
    wait_for(lambda: node_ready(master, node), what="node Ready")
    jq = shutil.which("jq") is not None
    count = count_items(jq)

    # No pods yet: a List of 0 items, "No resources found" on stderr.
    check_rows(
        master,
        [
            Row(f"NODECTL get pods -o json | {count}", 0, lambda o, e: o.strip() == "0", True),
            Row("get pods", 0, lambda o, e: o == "" and "No resources found" in e),
        ],
    )
    web = pod_manifest("web", [sleeper()], grace_s=0)
    web["metadata"]["labels"] = {"app": "web", "tier": "front"}
    done = pod_manifest("done", [{"name": "c", "command": ["true"]}], restart_policy="Never")
    done["metadata"]["labels"] = {"app": "batch"}
    failed = pod_manifest("failed", [{"name": "c", "command": ["false"]}], restart_policy="Never")
    paths = {}
    for manifest in (web, done, failed):
        name = manifest["metadata"]["name"]
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(manifest))
    assert master.nodectl("apply", "-f", str(paths["web"])).returncode == 0

    def phase(name: str) -> str | None:
        return master.pods().get(name, {}).get("status", {}).get("phase")

    wait_for(lambda: phase("web") == "Running", timeout_s=60, what="web Running")
    check_rows(
        master,
        [Row(f"NODECTL get pods -o json | {count}", 0, lambda o, e: o.strip() == "1", True)],
    )
    for name in ("done", "failed"):
        assert master.nodectl("apply", "-f", str(paths[name])).returncode == 0
    wait_for(lambda: phase("done") == "Succeeded", timeout_s=60, what="done Succeeded")
    wait_for(lambda: phase("failed") == "Failed", timeout_s=60, what="failed Failed")

    def status_of(stdout: str) -> dict[str, list[str]]:
        return {row[0]: row for row in table(stdout)[1:]}

    age = re.compile(r"^\d+(s|m\d*s?|h\d*m?|d\d*h?|y\d*d?)$")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        rows = [
            # STATUS, READY, AGE as kubectl prints them.
            Row(
                "get pods",
                0,
                lambda o, e: (
                    table(o)[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
                    and status_of(o)["web"][1:3] == ["1/1", "Running"]
                    and status_of(o)["done"][2] == "Completed"
                    and status_of(o)["failed"][2] == "Error"
                    and all(age.match(r[4]) for r in table(o)[1:])
                ),
            ),
            Row(
                "get pods -o wide",
                0,
                lambda o, e: table(o)[0][-2:] == ["IP", "NODE"] and status_of(o)["web"][-1] == node,
            ),
            Row(
                "get nodes -o wide",
                0,
                lambda o, e: (
                    "CONTAINER-RUNTIME" in table(o)[0] and status_of(o)[node][1] == "Ready"
                ),
            ),
            # Scripts.
            Row(f"NODECTL get pods -o json | {count}", 0, lambda o, e: o.strip() == "3", True),
            Row(
                f"NODECTL get pods -l app=web -o json | {count}",
                0,
                lambda o, e: o.strip() == "1",
                True,
            ),
            Row(
                f"NODECTL get pods -l app -o json | {count}",
                0,
                lambda o, e: o.strip() == "2",
                True,
            ),
            Row("get pod web -o json", 0, lambda o, e: json.loads(o)["kind"] == "Pod"),
            Row("get pod/web -o yaml", 0, lambda o, e: "kind: Pod\n" in o),
            Row("get pods web done -o json", 0, lambda o, e: json.loads(o)["kind"] == "List"),
            Row("get pods -o name", 0, lambda o, e: o == "pod/done\npod/failed\npod/web\n"),
            Row(
                "get all -o name",
                0,
                lambda o, e: o == f"node/{node}\npod/done\npod/failed\npod/web\n",
            ),
            Row(
                "get pods -o jsonpath='{.items[*].metadata.name}'",
                0,
                lambda o, e: o == "done failed web",
            ),
            Row(
                "get pods -o 'jsonpath={range .items[*]}{.metadata.name}={.status.phase}{\"\\n\"}{end}'",
                0,
                lambda o, e: o == "done=Succeeded\nfailed=Failed\nweb=Running\n",
            ),
            Row(
                "get pods -o custom-columns=NAME:.metadata.name,NODE:.spec.nodeName --no-headers",
                0,
                lambda o, e: table(o) == [["done", node], ["failed", node], ["web", node]],
            ),
            Row(
                "get pods -l 'app in (web,batch)' -o name",
                0,
                lambda o, e: o == "pod/done\npod/web\n",
            ),
            Row("get pods -l '!app' -o name", 0, lambda o, e: o == "pod/failed\n"),
            Row("get pods -l tier,app!=batch -o name", 0, lambda o, e: o == "pod/web\n"),
            Row(
                f"get pods --field-selector spec.nodeName={node},status.phase=Running -o name",
                0,
                lambda o, e: o == "pod/web\n",
            ),
            Row(
                "get pods --field-selector status.phase!=Running -o name",
                0,
                lambda o, e: o == "pod/done\npod/failed\n",
            ),
            Row("get pods --show-labels", 0, lambda o, e: "app=web,tier=front" in o),
            Row("get pods --no-headers", 0, lambda o, e: not o.startswith("NAME")),
            Row("get all", 0, lambda o, e: f"node/{node}" in o and "pod/web" in o),
            # A closed pipe: quiet (bash's pipefail sees SIGPIPE's 141, as for coreutils, when
            # head closed it before nodectl was done writing; 0 when nodectl was first).
            Row(
                "NODECTL get pods | head -1",
                (0, 141),
                lambda o, e: o.startswith("NAME") and e == "",
                True,
            ),
            Row(
                "NODECTL describe node " + node + " | head -3", (0, 141), lambda o, e: e == "", True
            ),
            Row(
                "NODECTL exec web -- seq 1 200000 | head -1",
                (0, 141),
                lambda o, e: o == "1\n" and e == "",
                True,
            ),
            # -t without a terminal: kubectl's words, then on without a TTY (never a hang).
            Row(
                "exec -it web -- cat",
                0,
                lambda o, e: o == "piped\n" and "Unable to use a TTY" in e,
                stdin="piped\n",
            ),
            # explain (the parser's subset, said per field), config view, version (the
            # master's GET /version).
            Row(
                "explain pod.spec.containers",
                0,
                lambda o, e: (
                    o.startswith(
                        "KIND:       Pod\nVERSION:    v1\n\nFIELD: containers <[]Container>"
                    )
                    and "\nFIELDS:\n  args\t<[]string>\n" in o
                    and "  envFrom\t<[]EnvFromSource> [not supported]\n" in o
                ),
            ),
            Row(
                "explain pod.spec.containers --recursive",
                0,
                lambda o, e: "  env\t<[]EnvVar>\n    name\t<string> -required-\n" in o,
            ),
            Row("explain pod.spec.dnsPolicy", 0, lambda o, e: '("ClusterFirst")' in o),
            Row("config view", 0, lambda o, e: "DATA+OMITTED" in o and "BEGIN" not in o),
            Row("config view --raw", 0, lambda o, e: "-----BEGIN CERTIFICATE-----" in o),
            Row(
                "version",
                0,
                lambda o, e: (
                    o == f"Client Version: v{__version__}\nServer Version: v{__version__}\n"
                ),
            ),
            Row(
                "version -o json",
                0,
                lambda o, e: json.loads(o)["serverVersion"]["gitVersion"] == f"v{__version__}",
            ),
            Row("version --client -o yaml", 0, lambda o, e: "serverVersion" not in o),
            Row("explain pod.spec.nope", 1, lambda o, e: "does not exist in PodSpec" in e),
            Row("explain deployments", 2, lambda o, e: "explain knows: pods" in e),
            Row("config edit", 2, lambda o, e: "usage:" in e),
            # Bad input: one line of kubectl's shape, the exit status, never a traceback.
            Row(
                "get pods nope",
                1,
                lambda o, e: e == 'Error from server (NotFound): pods "nope" not found\n',
            ),
            Row("describe pod nope", 1, lambda o, e: 'pods "nope" not found' in e),
            Row("delete pod nope", 1, lambda o, e: 'pods "nope" not found' in e),
            Row("describe node nope", 1, lambda o, e: 'nodes "nope" not found' in e),
            Row("cordon nope", 1, lambda o, e: 'nodes "nope" not found' in e),
            Row("get deployments", 2, lambda o, e: "known: nodes" in e),
            Row("get pod/", 2, lambda o, e: "resource/name" in e),
            Row("get pods -o bogus", 2, lambda o, e: "unknown output format" in e),
            Row("get pods -o 'jsonpath={.items['", 1, lambda o, e: "error parsing jsonpath" in e),
            Row("get pods -l 'app in (web'", 1, lambda o, e: "unable to parse requirement" in e),
            Row("get pods --field-selector spec.image=x", 1, lambda o, e: "not supported" in e),
            Row("get pods web -l app=web", 2, lambda o, e: "selector" in e),
            Row("apply -f /nonexistent.yaml", 2, lambda o, e: "nonexistent" in e),
            Row("logs nope", 1, lambda o, e: "nope" in e),
            Row("exec nope -- true", 1, lambda o, e: "nope" in e),
            Row(
                f"port-forward web {busy_port}:80",
                1,
                lambda o, e: (
                    f"Unable to listen on port {busy_port}:" in e and "address already in use" in e
                ),
            ),
            Row("port-forward web notaport", 2, lambda o, e: "notaport" in e),
            Row("describe pods,nodes web", 2, lambda o, e: "one resource type" in e),
            # describe's kubectl layout; top and drain with bad input (issue 17 items 4, 5).
            Row(
                "describe pod web",
                0,
                lambda o, e: o.startswith("Name:") and "\nContainers:\n" in o and "\nEvents:" in o,
            ),
            Row("top pod nope", 1, lambda o, e: 'pods "nope" not found' in e),
            Row("top services", 2, lambda o, e: "known: nodes" in e),
            Row("top nodes --sort-by name", 2, lambda o, e: "usage:" in e),
            Row(
                "drain nope",
                1,
                lambda o, e: e == 'Error from server (NotFound): nodes "nope" not found\n',
            ),
            Row(f"drain {node} --timeout soon", 2, lambda o, e: "--timeout" in e and o == ""),
            Row("get", 2, lambda o, e: "usage:" in e),
        ]
        check_rows(master, rows)

    # Terminating: a deleted pod whose container ignores SIGTERM stays, Terminating, for its
    # grace period (the node kills it then, and says so), then is gone.
    slow = pod_manifest(
        "slow", [{"name": "c", "command": ["sh", "-c", "trap '' TERM; sleep 3600"]}], grace_s=4
    )
    paths["slow"] = tmp_path / "slow.json"
    paths["slow"].write_text(json.dumps(slow))
    assert master.nodectl("apply", "-f", str(paths["slow"])).returncode == 0
    wait_for(lambda: phase("slow") == "Running", timeout_s=60, what="slow Running")
    check_rows(
        master,
        [
            # --wait=false: kubectl's delete waits until the pod is gone (nodectl's too).
            Row("delete pod slow --wait=false", 0, lambda o, e: "deleted" in o),
            Row("get pod slow", 0, lambda o, e: status_of(o)["slow"][2] == "Terminating"),
            Row(
                "get pod slow -o jsonpath={.metadata.deletionTimestamp}",
                0,
                lambda o, e: o.endswith("Z"),
            ),
        ],
    )
    wait_for(lambda: "slow" not in master.pods(), timeout_s=30, what="slow gone")

    # NodeLost: the node is gone (killed, its lease runs out); its running pod's STATUS says
    # so, the finished ones keep theirs.
    agent.kill9()
    wait_for(lambda: node_ready(master, node) is None, timeout_s=60, what="node NotReady")
    check_rows(
        master,
        [
            Row(
                "get pods",
                0,
                lambda o, e: (
                    status_of(o)["web"][2] == "NodeLost" and status_of(o)["done"][2] == "Completed"
                ),
            ),
        ],
    )
