"""Join tokens end to end (issue 18, "Tokens"): a real master whose trust is ``["token"]``, the
``node-master token`` commands against it, and real agent processes over real mTLS. A node joins
with a token and carries the token's labels; expired, deleted, used-up and wrong tokens are
refused with the reason in the agent's log and in its registration state
(``<state_dir>/registration.json``), never with the secret; a node that joined keeps working
(certificate renewals, a restart) after its token is deleted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.jointoken import JoinToken, parse_token
from tests.helpers import REPO_ROOT, AgentProcess, MasterProcess, node_ready, wait_for

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]
# Short enough that the joined node renews its certificate (at 70-90 % of it) during the test.
CERT_LIFETIME_S = 12.0


def node_master(master: MasterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - callers check the exit status
        [sys.executable, "-m", "agent.cli.node_master", *args, "--data-dir", str(master.root)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )


def create_token(master: MasterProcess, *options: str) -> JoinToken:
    done = node_master(master, "token", "create", *options)
    assert done.returncode == 0, done.stderr
    [line] = [line.strip() for line in done.stdout.splitlines() if "node-agent run" in line]
    token = parse_token(line.split("--token ")[1])
    # The whole join line: the master's URL, its CA pin, the token.
    assert line == (
        f"node-agent run --master {master.url} --ca-cert-hash {master.pin} --token {token}"
    )
    return token


def tokens(master: MasterProcess) -> dict[str, dict[str, Any]]:
    done = node_master(master, "token", "list", "-o", "json")
    assert done.returncode == 0, done.stderr
    return {item["id"]: item for item in json.loads(done.stdout)}


def joining(make_agent: MakeAgent, master: MasterProcess, **config: Any) -> AgentProcess:
    return make_agent(
        master=master.url, ca_cert_hash=[master.pin], master_backoff_max_s=1.0, **config
    )


def state_of(agent: AgentProcess) -> dict[str, Any] | None:
    path = agent.state_dir / "registration.json"
    return json.loads(path.read_text()) if path.exists() else None


def refused_with(agent: AgentProcess, reason: str) -> bool:
    agent.assert_alive()
    state = state_of(agent)
    return state is not None and state["phase"] == "Denied" and reason in state["reason"]


def test_join_tokens_admit_label_and_refuse_with_reasons(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    master = make_master(node_cert_lifetime_s=CERT_LIFETIME_S)
    master.configure(trust=["token"])
    master.start()
    labelled = create_token(
        master, "--usages", "1", "--labels", "zone=b,tier=edge", "--description", "rack 4"
    )
    assert tokens(master)[labelled.id]["usesLeft"] == 1

    # Joins with the token (from a 0600 token_file) and carries its labels.
    token_file = tmp_path / "join-token"
    token_file.write_text(str(labelled) + "\n")
    token_file.chmod(0o600)
    joined = joining(make_agent, master, token_file=str(token_file), node_labels=["zone=a"])
    joined.start(wait_ready=False)
    node = wait_for(lambda: node_ready(master, joined.node_name), what="node joined and Ready")
    assert node["metadata"]["labels"] == {"zone": "b", "tier": "edge"}  # the token's win
    assert node["status"]["registration"]["admittedBy"] == "token"
    state = state_of(joined)
    assert state is not None and state["phase"] == "Registered" and state["master"] == master.url
    listed = tokens(master)[labelled.id]
    assert (listed["usesLeft"], listed["labels"]) == (0, {"zone": "b", "tier": "edge"})
    assert str(labelled) not in node_master(master, "token", "list").stdout

    # Refused: the used-up token, an expiring one once expired, a wrong secret, no token.
    expiring = create_token(master, "--ttl", "1s")
    wait_for(lambda: tokens(master)[expiring.id]["expired"], what="the 1 s token expired")
    wrong = JoinToken(labelled.id, "0" * 16 if labelled.secret != "0" * 16 else "1" * 16)
    refusals = {
        str(labelled): f"join token {labelled.id} is used up (1 uses allowed)",
        str(expiring): f"join token {expiring.id} expired at",
        str(wrong): f"join token {labelled.id} is unknown (deleted, or never made) or its secret",
    }
    refused = {
        secret: joining(make_agent, master, token=secret).start(wait_ready=False)
        for secret in refusals
    }
    tokenless = joining(make_agent, master).start(wait_ready=False)

    def wait_refused(key: str) -> None:
        agent = refused[key]
        wait_for(lambda: refused_with(agent, refusals[key]), what=f"refusal: {refusals[key]}")
        log = agent.log_path.read_text()
        assert refusals[key] in log and "registration refused by the master" in log

    for key in list(refused):
        wait_refused(key)
    wait_for(lambda: refused_with(tokenless, "no join token was presented"), what="no token")

    # The joined node's token deleted: refused to a new node, nothing changes for the joined one.
    assert node_master(master, "token", "delete", labelled.id).returncode == 0
    assert labelled.id not in tokens(master)
    key = str(labelled) + " (deleted)"
    refusals[key] = f"join token {labelled.id} is unknown (deleted"
    refused[key] = joining(make_agent, master, token=str(labelled)).start(wait_ready=False)
    wait_refused(key)
    for agent in [*refused.values(), tokenless]:
        assert master.node(agent.node_name) is None

    # The joined node renews its certificate with its own (no token) and survives a restart.
    expiry = master.node(joined.node_name)["status"]["registration"]["certificateExpiry"]  # type: ignore[index]
    wait_for(
        lambda: (
            master.node(joined.node_name)["status"]["registration"]["certificateExpiry"]  # type: ignore[index]
            != expiry
        ),
        timeout_s=3 * CERT_LIFETIME_S,
        what="a renewed certificate after the token was deleted",
    )
    joined.kill9()
    token_file.unlink()  # not even the file is needed any more
    joined.start(wait_ready=False)
    wait_for(lambda: node_ready(master, joined.node_name), what="joined node Ready again")
    assert node_ready(master, joined.node_name)["metadata"]["labels"]["zone"] == "b"  # type: ignore[index]

    # No secret in any agent's log or state, nor in the master's log.
    secrets = [labelled.secret, expiring.secret, wrong.secret]
    for agent in [joined, *refused.values(), tokenless]:
        text = agent.log_path.read_text() + json.dumps(state_of(agent))
        assert not any(secret in text for secret in secrets), agent.node_name
    assert not any(secret in master.log_path.read_text() for secret in secrets)
