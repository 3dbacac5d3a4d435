"""Issue 14, item 9 end to end: every hostile manifest of the shared corpus
(tests/hostile_manifests.py) as a static file in a real agent's manifest directory (present at
boot and written later) and through ``nodectl apply`` to a real master, plus the corpus's JSON
bodies posted to the master directly. Each is a clear error naming the field path; the agent
stays up and keeps its other pods; the master answers 4xx and stores nothing of them.

The time and memory of parsing each case are measured by bench/hostile_manifests.py (timing
targets live in bench/); here the subprocesses' own timeouts are the hang detector."""

from __future__ import annotations

import json
import ssl
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    AgentProcess,
    MasterProcess,
    node_ready,
    pod_manifest,
    running_phase,
    sleeper,
    wait_for,
)
from tests.hostile_manifests import BODIES, FILES, body_expectation

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]
MESSAGE_MAX_CHARS = 1000


def _post_body(master: MasterProcess, body: bytes, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """``POST /v1/pods`` with ``body`` as is, as the administrator."""
    admin = tomllib.loads(master.admin_conf.read_text())
    cert, key = tmp_path / "admin.crt", tmp_path / "admin.key"
    cert.write_text(admin["client_cert"])
    key.write_text(admin["client_key"])
    ctx = ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt"))
    ctx.load_cert_chain(cert, key)
    request = urllib.request.Request(
        master.url + "/v1/pods",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]


def _container_ids(agent: AgentProcess, name: str) -> list[str] | None:
    pod = running_phase(agent, name)
    if pod is None:
        return None
    return [c["containerID"] for c in pod["status"]["containerStatuses"]]


def test_hostile_manifests_as_files_and_through_nodectl(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    master = make_master().start()
    agent = make_agent(master=master.url, ca_cert_hash=[master.pin], master_backoff_max_s=1.0)
    agent.write_manifest("static.yaml", pod_manifest("static", [sleeper()]))
    for hostile in FILES:  # present when the agent starts
        (agent.manifest_dir / f"boot-{hostile.id}.yaml").write_text(hostile.text)
    agent.start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    api_pod = tmp_path / "api-pod.yaml"
    api_pod.write_text(json.dumps(pod_manifest("api-good", [sleeper()])))
    done = master.nodectl("apply", "-f", str(api_pod))
    assert done.returncode == 0, done.stderr

    def both_running() -> tuple[list[str], list[str]] | None:
        static, api = _container_ids(agent, "static"), _container_ids(agent, "api-good")
        return (static, api) if static and api else None

    running = wait_for(both_running, timeout_s=60, what="the static and the API pod Running")

    def reported(prefix: str) -> dict[str, str] | None:
        messages = {
            e["involvedObject"]["name"]: e["message"]
            for e in agent.events()
            if e["reason"] == "FailedToParse"
        }
        found = {h.id: messages.get(f"{prefix}-{h.id}.yaml") for h in FILES}
        return found if all(found.values()) else None  # type: ignore[return-value]

    def check(messages: dict[str, str]) -> None:
        for hostile in FILES:
            message = messages[hostile.id]
            assert f": {hostile.field}" in message, (hostile.id, message[:300])
            assert hostile.problem in message, (hostile.id, message[:300])
            assert len(message) < MESSAGE_MAX_CHARS, (hostile.id, message[:300])

    check(wait_for(lambda: reported("boot"), timeout_s=60, what="every boot file reported"))
    for hostile in FILES:  # and written while the agent runs
        (agent.manifest_dir / f"later-{hostile.id}.yaml").write_text(hostile.text)
    check(wait_for(lambda: reported("later"), timeout_s=60, what="every later file reported"))
    agent.assert_alive()

    for hostile in FILES:
        path = tmp_path / f"{hostile.id}.yaml"
        path.write_text(hostile.text)
        done = master.nodectl("apply", "-f", str(path))
        # Refused by nodectl's loader (exit 2) or by the master (its 4xx, exit 1).
        assert done.returncode in (1, 2), (hostile.id, done.returncode, done.stderr[:300])
        error = done.stderr
        assert hostile.field in error and hostile.problem in error, (hostile.id, error[:300])
        assert len(error) < MESSAGE_MAX_CHARS and "Traceback" not in error, error[:300]
        if done.returncode == 1:
            # kubectl's shape: Error from server (BadRequest|RequestEntityTooLarge…): …, or
            # for a manifest the master's parser refused (422), The Pod "x" is invalid: …
            assert "Error from server (" in error or " is invalid:" in error, (
                hostile.id,
                error[:300],
            )

    for hostile in BODIES:
        assert hostile.body is not None
        status, error = _post_body(master, hostile.body, tmp_path)
        assert 400 <= status < 500, (hostile.id, status, error)
        if status == 422:
            field, problem = body_expectation(hostile)
            assert error["details"]["field"].startswith(field), (hostile.id, error)
            assert problem in error["message"], (hostile.id, error)
        else:  # every JSON body's own depth rule came first (a 400 without a field)
            assert hostile.id == "5000-deep-nesting", (hostile.id, status, error)

    # Everyone is still there, and the pods never restarted.
    agent.assert_alive()
    assert master.nodectl("get", "nodes").returncode == 0
    assert set(master.pods()) >= {"api-good"} and "hostile" not in master.pods()
    assert (_container_ids(agent, "static"), _container_ids(agent, "api-good")) == running
    assert agent.get("/healthz") == (200, "ok")
