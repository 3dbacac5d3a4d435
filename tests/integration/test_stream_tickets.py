"""Direct streams with the master's tickets (issue 20 item 3, docs/streaming.md), against a real
master, agent and dockerd over real TLS: the master issues a ticket for one request as it would
authorize the request itself (a viewer never gets one for exec), the node accepts it once, for
its pod, action and parameters, on its user's connection, within its lifetime, signed by the
master's proxy identity only, and audits the user; ``nodectl port-forward`` goes by ticket by
default, through the relay with ``--relay`` or when the cluster turns tickets off."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.aio.h2conn import H2Connection, connect
from agent.pki.core import certs_from_pem, generate_key, issue, key_from_pem
from agent.pki.names import MASTERS_GROUP, VIEWERS_GROUP
from agent.pki.tickets import mint
from agent.proto.tickets import HEADER
from tests.helpers import (
    REPO_ROOT,
    AgentProcess,
    MasterProcess,
    node_ready,
    pod_manifest,
    running_phase,
    wait_for,
)

pytestmark = pytest.mark.docker

ECHO = {"name": "echo", "command": ["nc", "-ll", "-p", "7000", "-e", "cat"]}
FORWARD = "/v1/namespaces/default/pods/{pod}/portforward?port=7000"
EXEC = "/v1/namespaces/default/pods/{pod}/exec?command=true&container=echo"


def conf_files(conf: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    data = tomllib.loads(conf.read_text())
    paths = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    paths[0].write_text(data["client_cert"])
    paths[1].write_text(data["client_key"])
    return paths


def context(ca: Path, cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.load_cert_chain(*cert)
    return ctx


async def call(
    conn: H2Connection, method: str, path: str, *, headers: Any = (), body: bytes | None = None
) -> tuple[int, Any]:
    forward = "portforward" in path  # its body: one echo, then half-close
    stream = await conn.request(method, path, list(headers), end_stream=not (body or forward))
    if body is not None:
        await stream.write(body)
        await stream.end()
    await stream.response()
    if forward and stream.status == 200:
        await stream.write(b"ping\n")
    if forward and not stream.local_ended:
        await stream.end()
    data = await stream.read_all(1 << 16)
    try:
        return stream.status, json.loads(data)
    except ValueError:
        return stream.status, data


async def ticket_for(conn: H2Connection, method: str, target: str) -> tuple[int, Any]:
    body = json.dumps({"method": method, "target": target}).encode()
    return await call(
        conn, "POST", "/v1/tickets", headers=[("content-type", "application/json")], body=body
    )


def message(answer: Any) -> str:
    return str(answer["error"]["message"]) if isinstance(answer, dict) else repr(answer)


def test_tickets_direct_streams_and_their_refusals(
    make_master: Callable[..., MasterProcess],
    make_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = make_agent(
        f"tickets-{uuid.uuid4().hex[:8]}",
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
    )
    agent.write_manifest("pods.json", pod_manifest("box", [ECHO], grace_s=0))
    agent.start()
    node = agent.node_name
    box = f"box-{node}"  # the static pod's mirror, as nodectl names it
    wait_for(lambda: running_phase(agent, "box"), what="box Running")
    wait_for(lambda: node_ready(master, node), what="node Ready")
    wait_for(lambda: box in master.pods(), what="mirror pod on the master")
    endpoint = wait_for(
        lambda: (
            (master.node(node) or {}).get("status", {}).get("daemonEndpoints", {}).get("nodeApi")
        ),
        what="node API endpoint reported",
    )
    node_host, node_port = endpoint.rsplit(":", 1)
    pki = master.root / "pki"
    ca = pki / "ca.crt"
    from agent.cli import node_master

    viewer_conf = tmp_path / "alice.conf"
    args = ["issue-user", "alice", "--data-dir", str(master.root), "--out", str(viewer_conf)]
    assert node_master.main(args) == 0
    admin = conf_files(master.admin_conf, tmp_path, "admin")
    viewer = conf_files(viewer_conf, tmp_path, "alice")
    proxy_key = key_from_pem((pki / "proxy.key").read_bytes())
    proxy_der = certs_from_pem((pki / "proxy.crt").read_bytes())[0].public_bytes(Encoding.DER)
    ca_key = key_from_pem((pki / "ca.key").read_bytes())
    ca_cert = certs_from_pem(ca.read_bytes())[0]
    admin_name = certs_from_pem(admin[0].read_bytes())[0].subject.rfc4514_string()
    admin_cn = re.search(r"CN=([^,]+)", admin_name)[1]  # type: ignore[index]

    def forged(
        *, key: Any = proxy_key, der: bytes = proxy_der, now: float | None = None, **claims: Any
    ) -> str:
        values: dict[str, Any] = {
            "user": admin_cn, "groups": [MASTERS_GROUP], "node": node, "namespace": "default",
            "pod": box, "action": "portforward", "query": {"port": ["7000"]},
        }  # fmt: skip
        values.update(claims)
        token, _ = mint(signer_key=key, signer_der=der, now=now or time.time(), **values)
        return token

    async def scenario() -> dict[str, tuple[int, str]]:
        got: dict[str, tuple[int, str]] = {}
        m_admin = await connect(master.host, master.port, context(ca, admin), server_hostname="")
        m_viewer = await connect(master.host, master.port, context(ca, viewer), server_hostname="")
        n_admin = await connect(node_host, int(node_port), context(ca, admin), server_hostname="")
        n_viewer = await connect(node_host, int(node_port), context(ca, viewer), server_hostname="")
        try:
            status, grant = await ticket_for(m_admin, "POST", FORWARD.format(pod=box))
            assert status == 200, grant
            assert (grant["node"], grant["endpoint"]) == (node, endpoint), grant
            ticket = [(HEADER, grant["ticket"])]
            status, echoed = await call(n_admin, "POST", FORWARD.format(pod=box), headers=ticket)
            assert (status, echoed) == (200, b"ping\n"), echoed
            status, answer = await call(n_admin, "POST", FORWARD.format(pod=box), headers=ticket)
            got["replay"] = (status, message(answer))
            # A ticket for pod A used for pod B (and the same pod with another port).
            status, grant = await ticket_for(m_admin, "POST", FORWARD.format(pod=box))
            status, answer = await call(
                n_admin, "POST", FORWARD.format(pod="other"), headers=[(HEADER, grant["ticket"])]
            )
            got["pod B"] = (status, message(answer))
            status, grant = await ticket_for(m_admin, "POST", FORWARD.format(pod=box))
            status, answer = await call(
                n_admin,
                "POST",
                FORWARD.format(pod=box).replace("7000", "22"),
                headers=[(HEADER, grant["ticket"])],
            )
            got["another port"] = (status, message(answer))
            # The admin's ticket on the viewer's connection.
            status, grant = await ticket_for(m_admin, "POST", FORWARD.format(pod=box))
            status, answer = await call(
                n_viewer, "POST", FORWARD.format(pod=box), headers=[(HEADER, grant["ticket"])]
            )
            got["another user's connection"] = (status, message(answer))
            # A viewer never gets an exec (or port-forward) ticket; a logs ticket, yes.
            status, answer = await ticket_for(m_viewer, "POST", EXEC.format(pod=box))
            got["viewer exec ticket"] = (status, message(answer))
            status, answer = await ticket_for(m_viewer, "POST", FORWARD.format(pod=box))
            got["viewer port-forward ticket"] = (status, message(answer))
            logs = f"/v1/namespaces/default/pods/{box}/logs?tailLines=1"
            status, grant = await ticket_for(m_viewer, "GET", logs)
            assert status == 200, grant
            status, _ = await call(n_viewer, "GET", logs, headers=[(HEADER, grant["ticket"])])
            got["viewer logs by ticket"] = (status, "")
            # Signed by the master's proxy key, but expired; for another node; a viewer's for exec.
            for name, token, conn, path in (
                ("expired", forged(now=time.time() - 60), n_admin, FORWARD.format(pod=box)),
                ("another node", forged(node="elsewhere"), n_admin, FORWARD.format(pod=box)),
                (
                    "viewer exec ticket forged",
                    forged(
                        user="alice",
                        groups=[VIEWERS_GROUP],
                        action="exec",
                        query={"command": ["true"], "container": ["echo"]},
                    ),
                    n_viewer,
                    EXEC.format(pod=box),
                ),
            ):
                status, answer = await call(conn, "POST", path, headers=[(HEADER, token)])
                got[name] = (status, message(answer))
            # Not signed by the master: another key with the proxy's certificate; a key the
            # cluster CA certified as an administrator.
            other = generate_key()
            admin_signer = issue(
                ca_key, ca_cert, other.public_key(), common_name="root",
                groups=[MASTERS_GROUP], lifetime_s=600,
            ).public_bytes(Encoding.DER)  # fmt: skip
            for name, token in (
                ("another key", forged(key=other)),
                ("an admin's key", forged(key=other, der=admin_signer)),
                ("garbage", "nat1.e30.AAAA.AAAA"),
            ):
                status, answer = await call(
                    n_admin, "POST", FORWARD.format(pod=box), headers=[(HEADER, token)]
                )
                got[name] = (status, message(answer))
        finally:
            for conn in (m_admin, m_viewer, n_admin, n_viewer):
                await conn.shutdown()
        return got

    got = asyncio.run(scenario())
    want = {
        "replay": "already used",
        "pod B": f"is for pod default/{box}, not default/other",
        "another port": "other portforward parameters",
        "another user's connection": f"was issued to '{admin_cn}', not 'alice'",
        "viewer exec ticket": "'alice' may read logs but not exec",
        "viewer port-forward ticket": "'alice' may read logs but not portforward",
        "viewer logs by ticket": "",
        "expired": "expired",
        "another node": f"is for node 'elsewhere', not '{node}'",
        "viewer exec ticket forged": "may read logs but not exec",
        "another key": "signature is not the master's",
        "an admin's key": "not the master's proxy identity",
        "garbage": "ticket",
    }
    for name, text in want.items():
        status, words = got[name]
        assert (status == 200) if name == "viewer logs by ticket" else (status == 403), (name, got)
        assert text in words, (name, words)

    # The node's audit line names the user, and the ticket; the master logged the issue.
    assert any(
        re.fullmatch(rf"{re.escape(admin_cn)} \(ticket [0-9a-f]{{12}} from the master\)", who)
        for who in forwarded_by(agent)
    ), forwarded_by(agent)
    issued = [
        json.loads(line)
        for line in master.log_path.read_text().splitlines()
        if '"stream ticket issued"' in line
    ]
    assert {e["who"] for e in issued} >= {admin_cn, "alice"}, issued

    # nodectl port-forward: by ticket by default, through the relay with --relay, and through
    # the relay by default once the cluster turns tickets off (SIGHUP reload).
    assert forward_once(master, agent, box, []).startswith(f"{admin_cn} (ticket ")
    assert forward_once(master, agent, box, ["--relay"]) == f"{admin_cn} (via system:node-proxy)"
    master.master_settings["direct_tickets"] = "never"
    master.configure(trust=["open"])
    master.sighup()
    wait_for(lambda: "policy reloaded" in master.log_path.read_text(), what="policy reloaded")
    assert forward_once(master, agent, box, []) == f"{admin_cn} (via system:node-proxy)"


def forwarded_by(agent: AgentProcess) -> list[str]:
    """The users of the node's port-forward sessions, from its audit lines, oldest first."""
    lines = [json.loads(x) for x in agent.log_path.read_text().splitlines() if x]
    return [str(e["who"]) for e in lines if e.get("msg") == "port-forward session"]


def forward_once(master: MasterProcess, agent: AgentProcess, pod: str, flags: list[str]) -> str:
    """One echo through ``nodectl port-forward`` (with ``flags``); the user of that session
    as the node's audit line names it."""
    before = len(forwarded_by(agent))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli.nodectl_control",
            "--config",
            str(master.admin_conf),
            "port-forward",
            *flags,
            pod,
            "0:7000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = proc.stdout.readline()
        found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 7000", line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None else "")
        data = b""
        with socket.create_connection(("127.0.0.1", int(found[1])), timeout=30) as sock:
            sock.sendall(b"hello\n")
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(1 << 16):
                data += chunk
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
    stderr = proc.stderr.read()
    assert data == b"hello\n", stderr
    assert proc.returncode == 0, stderr
    assert "through the master from now on" not in stderr, stderr
    wait_for(lambda: len(forwarded_by(agent)) > before, what="the session's audit line")
    return forwarded_by(agent)[-1]
