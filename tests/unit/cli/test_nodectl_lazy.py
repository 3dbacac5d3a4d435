"""``nodectl get pods`` stays lean (issue 17: start-up within 10 % of before): in a fresh
interpreter, the whole path of ``get pods`` — the entry point, the parser, the TLS context with
the master check, the request, the table — imports none of the heavy or other commands' modules.
Only the answer of the master is stood in for (the one thing a unit test cannot have); the wall
time itself is bench/nodectl_get.py's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent.cli.nodectl_info import toml_document
from agent.pki.core import cert_to_pem, create_ca, generate_key, issue, key_to_pem
from tests.helpers import REPO_ROOT

# Libraries nodectl get must not load (each costs tens of milliseconds), and the modules of the
# other commands, which their own commands import.
HEAVY = {"aiohttp", "asyncio", "cryptography", "docker", "h2", "uvloop", "yaml"}
OTHER_COMMANDS = {
    "agent.manifest",
    "agent.cli.jsonpath",
    "agent.cli.nodectl_drain",
    "agent.cli.nodectl_events",
    "agent.cli.nodectl_explain",
    "agent.cli.nodectl_info",
    "agent.cli.nodectl_session",
    "agent.cli.nodectl_stream",
    "agent.cli.nodectl_top",
    "agent.cli.nodectl_verbs",
    "agent.cli.nodectl_watch",
}

SCRIPT = """
import json, sys
from agent.cli import nodectl, nodectl_control

POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "p", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i"}]},
    "status": {"phase": "Running", "containerStatuses": [
        {"name": "c", "ready": True, "restartCount": 0, "state": {"running": {}}}]},
}

def call(self, method, path, body=None):
    self.context  # the TLS context with the master check, as a real call builds it
    import http.client  # what a real call imports
    if path.startswith("/v1/nodes"):
        return {"apiVersion": "v1", "kind": "NodeList", "items": []}
    return {"apiVersion": "v1", "kind": "PodList", "items": [POD]}

nodectl.Client.call = call
code = nodectl_control.main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def admin_config(path: Path) -> Path:
    ca_key, ca = create_ca()
    key = generate_key()
    cert = issue(
        ca_key,
        ca,
        key.public_key(),
        common_name="admin",
        groups=["system:masters"],
        lifetime_s=3600,
    )
    path.write_text(
        toml_document(
            {
                "server": "https://127.0.0.1:1",
                "ca": cert_to_pem(ca).decode(),
                "client_cert": cert_to_pem(cert).decode(),
                "client_key": key_to_pem(key).decode(),
            }
        )
    )
    return path


def test_get_pods_imports_nothing_heavy(tmp_path: Path) -> None:
    conf = admin_config(tmp_path / "config")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, "--config", str(conf), "get", "pods"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    report = json.loads(done.stderr.splitlines()[-1])
    assert report["code"] == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[:3] == ["p", "1/1", "Running"]
    modules = set(report["modules"])
    assert "agent.aio.tls" in modules  # the path did build the master's TLS context
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    assert not modules & OTHER_COMMANDS


EXEC_SCRIPT = """
import atexit, json, sys
from agent.cli import nodectl_control

atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.exit(nodectl_control.main(sys.argv[1:]))
"""
# What a cold `nodectl exec` needs is asyncio, ssl and h2; not the daemons' libraries, nor the
# daemons' logging set-up (logging.handlers, queue, pickle: agent.aio.logfields, issue 20), nor
# ctypes (port-forward's malloc tuning).
EXEC_MUST_NOT_LOAD = {"aiohttp", "cryptography", "docker", "yaml", "uvloop"}


def test_a_cold_exec_imports_no_daemon_library(tmp_path: Path) -> None:
    conf = admin_config(tmp_path / "config")  # a master on port 1: nobody answers
    argv = ["--config", str(conf), "--no-session", "exec", "p", "--", "true"]
    done = subprocess.run(
        [sys.executable, "-c", EXEC_SCRIPT, *argv],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    *_, message, report = done.stderr.splitlines()
    assert done.returncode == 1 and "cannot connect to 127.0.0.1:1" in message, done.stderr
    modules = set(json.loads(report))
    assert {"agent.cli.nodectl_stream", "agent.aio.h2conn", "h2.connection"} <= modules
    assert not {m for m in modules if m.split(".")[0] in EXEC_MUST_NOT_LOAD}
    assert not modules & {"logging.handlers", "agent.aio.logs", "ctypes"}
