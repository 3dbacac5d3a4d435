"""Every route of the master's API and of the node's API, for every caller kind, over HTTP/1.1 and
HTTP/2, against a real master and a real agent over real TLS: the status is the one the
authorization table (``agent.proto.authz``, docs/authorization.md) says, and the same over both
protocols (except that a stream route over HTTP/1.1 is 426 once authorized).

The matrix is driven by the route tables themselves: a route added to either table without a
decision (``decide`` raises KeyError) or without an entry in ``ALLOWED`` fails this test.
Requests that the table allows are made harmless: they name objects that do not exist, or carry
a body that is not a JSON object (400 before anything is changed)."""

from __future__ import annotations

import asyncio
import json
import ssl
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.aio.h2conn import connect
from agent.errors import StreamingError
from agent.pki.core import (
    cert_to_pem,
    certs_from_pem,
    create_ca,
    generate_key,
    issue,
    key_from_pem,
    key_to_pem,
)
from agent.pki.names import MASTERS_GROUP, NODE_CN_PREFIX, NODES_GROUP, VIEWERS_GROUP
from agent.proto.authz import (
    GROUPS_HEADER,
    USER_HEADER,
    CallerKind,
    Decision,
    decide,
    needs_subject,
)
from agent.proto.routes import MASTER_ROUTES, NODE_ROUTES, Route, RouteTable
from tests.helpers import AgentProcess, MasterProcess, node_ready, pod_manifest, sleeper, wait_for

pytestmark = pytest.mark.docker

REFUSED = -1  # the TLS handshake refused the client (the node API requires a cluster cert)
NOT_JSON_OBJECT = b"[]"  # a body every JSON handler refuses with 400 before it acts
GHOST = "ghost"  # an object that does not exist
BOUND_POD = "matrix"  # a pod bound to the agent's node (whose status the node may write)

# What an authorized request gets from the handler (stream routes: over HTTP/2; over HTTP/1.1
# they are 426). Missing entries fail the test: a new route needs its harmless request here.
ALLOWED: dict[str, dict[str, int]] = {
    "master": {
        "healthz": 200,
        "readyz": 200,
        "version": 200,
        "metrics": 200,
        "ca": 200,
        "registrations.create": 400,
        "registrations.get": 404,
        "nodes.list": 200,
        "nodes.get": 200,
        "nodes.delete": 404,
        "nodes.approve": 400,  # an optional body, but not a JSON object
        "nodes.deny": 400,
        "nodes.cordon": 404,
        "nodes.uncordon": 404,
        "nodes.lease": 400,
        "nodes.certificate": 400,
        "nodes.events": 400,
        "certificaterequests.list": 200,
        "servingnames.approve": 400,  # an optional body, but not a JSON object
        "servingnames.deny": 400,
        "nodes.pods": 200,
        "mirrorpods.put": 400,
        "mirrorpods.delete": 200,
        "pods.create": 400,
        "pods.list": 200,
        "events.list": 200,
        "pods.get": 200,
        "pods.delete": 404,
        "pods.evict": 400,  # an optional body, but not a JSON object
        "nodemetrics.list": 200,
        "podmetrics.list": 200,
        "pods.status": 400,
        "pods.exec": 404,
        "pods.portforward": 404,
        "pods.logs": 404,
        "tokens.create": 400,  # an optional body, but not a JSON object
        "tokens.list": 200,
        "tokens.delete": 404,
        "tickets.create": 400,  # a body, but not a JSON object
    },
    "node": {
        "healthz": 200,
        "pods.list": 200,
        "pods.exec": 404,
        "pods.portforward": 404,
        "pods.logs": 404,
    },
}
WITH_BODY = {"POST", "PUT"}
# A body is JSON and says so (another content type is 415 before any handler).
JSON_HEADERS = (("content-type", "application/json"),)


@dataclass(frozen=True)
class Who:
    label: str
    kind: CallerKind  # the column the table must answer from
    cert: tuple[Path, Path] | None = None
    headers: tuple[tuple[str, str], ...] = ()


def write_cert(
    directory: Path, name: str, ca_key: Any, ca: Any, cn: str, groups: list[str]
) -> tuple[Path, Path]:
    key = generate_key()
    cert = issue(ca_key, ca, key.public_key(), common_name=cn, groups=groups, lifetime_s=3600)
    paths = (directory / f"{name}.crt", directory / f"{name}.key")
    paths[0].write_bytes(cert_to_pem(cert))
    paths[1].write_bytes(key_to_pem(key))
    return paths


def conf_cert(directory: Path, name: str, conf: Path) -> tuple[Path, Path]:
    data = tomllib.loads(conf.read_text())
    paths = (directory / f"{name}.crt", directory / f"{name}.key")
    paths[0].write_text(data["client_cert"])
    paths[1].write_text(data["client_key"])
    return paths


def request_for(route: Route, node: str) -> tuple[str, bytes]:
    """A harmless target and body for ``route``: the agent's node where the table tells a node
    from another node, else objects that do not exist."""
    values = {
        "node": node if needs_subject(route.name) else f"{GHOST}-node",
        "namespace": "default",
        "pod": BOUND_POD if route.name in ("pods.status", "pods.get") else GHOST,
        "rid": "0" * 64,
        "token": "0" * 6,
    }
    path = "/" + "/".join(values[s[1:-1]] if s.startswith("{") else s for s in route.pattern)
    return path, NOT_JSON_OBJECT if route.method in WITH_BODY else b""


def expected(api: str, route: Route, kind: CallerKind, http2: bool) -> int:
    if api == "node" and kind in (CallerKind.ANONYMOUS, CallerKind.FLEET):
        return REFUSED
    decision = decide(route.name, kind)
    if decision is Decision.UNAUTHENTICATED:
        return 401
    if decision is Decision.FORBIDDEN:
        return 403
    if route.stream and not http2:
        return 426
    return ALLOWED[api][route.name]


def context(ca_file: Path, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = False  # a node's certificate names its addresses, not 127.0.0.1
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


async def over_h2(
    host: str, port: int, ca: Path, who: Who, requests: list[tuple[Route, str, bytes]]
) -> list[int]:
    try:
        conn = await connect(host, port, context(ca, who.cert), server_hostname="")
    except StreamingError:
        return [REFUSED] * len(requests)
    statuses = []
    try:
        for route, path, body in requests:
            try:
                headers = [*who.headers, *(JSON_HEADERS if body else ())]
                stream = await conn.request(route.method, path, headers, end_stream=not body)
                if body:
                    await stream.write(body)
                    await stream.end()
                await stream.response()
                await stream.read_all(1 << 20)
                if route.stream and stream.status == 200:
                    stream.reset()  # (not expected: every stream request names a ghost pod)
                statuses.append(stream.status)
            except StreamingError:
                statuses.append(REFUSED)
    finally:
        await conn.shutdown(grace_s=1.0)
    return statuses


async def over_http1(
    base: str, ca: Path, who: Who, requests: list[tuple[Route, str, bytes]]
) -> list[int]:
    statuses = []
    connector = aiohttp.TCPConnector(ssl=context(ca, who.cert))
    async with aiohttp.ClientSession(connector=connector) as session:
        for route, path, body in requests:
            try:
                headers = dict((*who.headers, *(JSON_HEADERS if body else ())))
                async with session.request(
                    route.method, base + path, data=body or None, headers=headers
                ) as resp:
                    await resp.read()
                    statuses.append(resp.status)
                    if resp.status >= 400:
                        error = json.loads(await resp.read())["error"]
                        assert error["code"] == resp.status, error
                    if resp.status == 405:
                        assert resp.headers["Allow"]
            except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
                statuses.append(REFUSED)
    return statuses


async def run_matrix(
    api: str, table: RouteTable, host: str, port: int, ca: Path, callers: list[Who], node: str
) -> list[str]:
    requests = [(route, *request_for(route, node)) for route in table.routes]
    problems = []
    for who in callers:
        h2 = await over_h2(host, port, ca, who, requests)
        h1 = await over_http1(f"https://{host}:{port}", ca, who, requests)
        for (route, path, _), got2, got1 in zip(requests, h2, h1, strict=True):
            want2 = expected(api, route, who.kind, http2=True)
            want1 = expected(api, route, who.kind, http2=False)
            if (got2, got1) != (want2, want1):
                problems.append(
                    f"{api} {route.name} ({route.method} {path}) as {who.label}: "
                    f"HTTP/2 {got2} (want {want2}), HTTP/1.1 {got1} (want {want1})"
                )
    return problems


def test_every_route_every_caller_both_protocols(
    make_master: Callable[..., MasterProcess],
    make_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    fleet_key, fleet_ca = create_ca("fleet provisioning CA")
    bundle = tmp_path / "fleet-ca.pem"
    bundle.write_bytes(cert_to_pem(fleet_ca))
    master = make_master()
    master.configure(trust=["open", "client-cert"], client_ca_file=str(bundle))
    master.start()
    agent = make_agent(
        f"matrix-{uuid.uuid4().hex[:8]}",
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
    ).start()
    node = agent.node_name
    wait_for(lambda: node_ready(master, node), what="node Ready")
    endpoint = wait_for(
        lambda: (
            (master.node(node) or {}).get("status", {}).get("daemonEndpoints", {}).get("nodeApi")
        ),
        what="node API endpoint reported",
    )
    manifest = tmp_path / "bound.json"
    manifest.write_text(json.dumps(pod_manifest(BOUND_POD, [sleeper()], nodeName=node)))
    applied = master.nodectl("apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr

    pki = master.root / "pki"
    ca_file = pki / "ca.crt"
    ca_key = key_from_pem((pki / "ca.key").read_bytes())
    ca = certs_from_pem(ca_file.read_bytes())[0]
    viewer_conf = tmp_path / "alice.conf"
    from agent.cli import node_master

    assert (
        node_master.main(
            ["issue-user", "alice", "--data-dir", str(master.root), "--out", str(viewer_conf)]
        )
        == 0
    )
    admin = conf_cert(tmp_path, "admin", master.admin_conf)
    viewer = conf_cert(tmp_path, "alice", viewer_conf)
    own = (agent.state_dir / "pki" / "node.crt", agent.state_dir / "pki" / "node.key")
    other = write_cert(tmp_path, "other", ca_key, ca, NODE_CN_PREFIX + "other", [NODES_GROUP])
    # The node's name with a key its record does not hold (revoked, replaced): another node.
    stale = write_cert(tmp_path, "stale", ca_key, ca, NODE_CN_PREFIX + node, [NODES_GROUP])
    fleet = write_cert(tmp_path, "fleet", fleet_key, fleet_ca, node, [])
    proxy = (pki / "proxy.crt", pki / "proxy.key")
    user = write_cert(tmp_path, "user", ca_key, ca, "someone", ["some-team"])
    as_admin = ((USER_HEADER, "root"), (GROUPS_HEADER, MASTERS_GROUP))
    as_viewer = ((USER_HEADER, "alice"), (GROUPS_HEADER, VIEWERS_GROUP))

    common = [
        Who("anonymous", CallerKind.ANONYMOUS),
        Who("fleet", CallerKind.FLEET, fleet),
        Who("node itself", CallerKind.NODE_SELF, own),
        Who("another node", CallerKind.NODE_OTHER, other),
        Who("node with a stale key", CallerKind.NODE_OTHER, stale),
        Who("viewer", CallerKind.VIEWER, viewer),
        Who("admin", CallerKind.ADMIN, admin),
        Who("user without a role", CallerKind.USER, user),
        # User headers are believed from the proxy only, and by nodes only.
        Who("viewer claiming to be an admin", CallerKind.VIEWER, viewer, as_admin),
        Who("node claiming to be an admin", CallerKind.NODE_OTHER, other, as_admin),
    ]
    master_callers = [
        *common,
        Who("proxy", CallerKind.PROXY, proxy),
        Who("proxy naming an admin", CallerKind.PROXY, proxy, as_admin),
    ]
    node_callers = [
        *common,
        Who("proxy naming nobody", CallerKind.PROXY, proxy),
        Who("proxy for a viewer", CallerKind.VIEWER, proxy, as_viewer),
        Who("proxy for an admin", CallerKind.ADMIN, proxy, as_admin),
        Who("proxy for a user", CallerKind.USER, proxy, ((USER_HEADER, "bob"),)),
    ]
    node_host, node_port = endpoint.rsplit(":", 1)

    async def both() -> list[str]:
        return [
            *await run_matrix(
                "master", MASTER_ROUTES, master.host, master.port, ca_file, master_callers, node
            ),
            *await run_matrix(
                "node", NODE_ROUTES, node_host, int(node_port), ca_file, node_callers, node
            ),
        ]

    problems = asyncio.run(both())
    assert not problems, "\n".join(problems)
    # Every column of the table was asked on both APIs.
    assert {w.kind for w in master_callers} == set(CallerKind)
    assert {w.kind for w in node_callers} == set(CallerKind)
    # The harmless requests left the cluster as it was.
    assert node_ready(master, node)
