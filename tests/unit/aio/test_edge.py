"""``agent.aio.edge`` on loopback: one ``Edge`` with stub handlers and a stub ``Gate`` served by
both real front-ends on one TLS port (ALPN: aiohttp for HTTP/1.1, ``agent.aio.h2conn`` for
HTTP/2; the serving and client pieces are tests/unit/master/wire.py's), with certificates from a
test CA.

What is held here: the order of the steps (route → caller → decision → protocol → body →
handler: each refusal comes from the first step that refuses), every refusal's status and
error body — the same on both protocols —, streamed (NDJSON) responses, a failure after the
response started, and a foreign exception in a handler (500 with our error body, logged).
Then ``EdgeListener``, what both daemons serve their API with: both protocols on the one port
whatever ALPN the context came with, its listen options, a stop that sends GOAWAY and ends
what outlives the grace on both protocols, a failed start that leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.aio.edge import (
    ALPN_PROTOCOLS,
    DEFAULT_BACKLOG,
    MAX_BODY_BYTES,
    ApiRequest,
    ApiResponse,
    Edge,
    EdgeListener,
    JsonHandler,
    json_response,
    text_response,
)
from agent.aio.h2conn import HANDSHAKE_TIMEOUT_S, H2Stream, connect
from agent.aio.tls import server_context
from agent.errors import (
    BadGatewayError,
    ConnectionClosedError,
    ManifestError,
    NotFoundError,
    NotRunningError,
    StreamingError,
    StreamResetError,
    TaskEndedError,
)
from agent.master.pki_files import ClusterPki
from agent.pki.core import cert_to_pem, generate_key, principal_of
from agent.proto.authz import Principal
from agent.proto.jsonbody import MAX_JSON_DEPTH
from agent.proto.routes import Route, RouteTable, Subject
from tests.unit.master import wire
from tests.unit.master.rig import make_cluster_pki
from tests.unit.master.wire import (
    ANONYMOUS,
    H1,
    H2,
    HOST,
    PROTOCOLS,
    Client,
    Credentials,
    Reply,
    Watch,
)
from tests.unit.node.asyncwait import until

pytestmark = pytest.mark.usefixtures("blockbuster")

OWNER = "n1"  # the node whose API this edge serves (for Subject.API)
NDJSON = "application/x-ndjson"
LINES = [b'{"n": 1}\n', b'{"n": 2}\n', b'{"n": 3}\n']
_POD = ("v1", "namespaces", "{namespace}", "pods", "{pod}")

# Route names come from the authorization table; each route exercises one thing.
TABLE = RouteTable(
    "test",
    [
        Route("healthz", "GET", ("healthz",)),  # anyone; plain text
        Route("pods.create", "POST", ("v1", "pods")),  # admins; echoes the request
        Route("pods.list", "GET", ("v1", "pods")),  # readers; a handler bug (KeyError)
        Route("nodes.list", "GET", ("v1", "nodes")),  # readers; NDJSON stream
        Route("events.list", "GET", ("v1", "events")),  # readers; a stream that fails midway
        Route("nodes.approve", "POST", ("v1", "nodes", "{node}", "approve")),  # admins; echo
        Route("nodes.lease", "PUT", ("v1", "nodes", "{node}", "lease"), subject=Subject.PATH),
        Route("registrations.create", "POST", ("v1", "registrations"), subject=Subject.CALLER),
        Route("pods.status", "PUT", (*_POD, "status"), subject=Subject.POD),
        Route("nodes.get", "GET", ("v1", "self"), subject=Subject.API),
        Route("pods.delete", "DELETE", _POD),  # admins; a manifest error with its field
        Route("pods.exec", "POST", (*_POD, "exec"), stream=True),
        Route("pods.portforward", "POST", (*_POD, "portforward"), stream=True),
        Route("pods.logs", "GET", (*_POD, "logs"), stream=True),
    ],
)


class StubGate:
    """The cluster CA's certificates mapped as the master maps them; which nodes are current
    and where pods are bound, as a test sets them."""

    def __init__(self, pki: ClusterPki) -> None:
        self.pki = pki
        self.current = {"n1", "n2"}
        self.bound: dict[tuple[str, str], str | None] = {("default", "p"): "n1"}

    def principal(self, peer_der: bytes | None, headers: Mapping[str, str]) -> Principal:
        return principal_of(peer_der, [self.pki.ca_cert])

    def is_current(self, principal: Principal) -> bool:
        return principal.node in self.current

    async def pod_node(self, namespace: str, pod: str) -> str | None:
        if (namespace, pod) not in self.bound:
            raise NotFoundError(f"pod {namespace}/{pod} not found")
        return self.bound[namespace, pod]


@dataclass
class Stubs:
    """The handlers, and what they saw."""

    seen: list[ApiRequest] = field(default_factory=list)
    streams_closed: asyncio.Event = field(default_factory=asyncio.Event)
    closed_count: int = 0  # endless streams closed so far

    def handlers(self) -> dict[str, JsonHandler]:
        echoing = ("pods.create", "nodes.approve", "nodes.lease", "registrations.create")
        found: dict[str, JsonHandler] = {name: self.echo for name in echoing}
        found.update(
            {
                "pods.status": self.echo,
                "nodes.get": self.echo,
                "healthz": self.healthz,
                "pods.list": self.bug,
                "nodes.list": self.ndjson,
                "events.list": self.fails_midway,
                "pods.delete": self.bad_manifest,
            }
        )
        return found

    async def echo(self, request: ApiRequest) -> ApiResponse:
        self.seen.append(request)
        return json_response(
            {
                "route": request.match.route.name,
                "params": dict(request.match.params),
                "x": request.query("x"),
                "absent": request.query("absent", "default"),
                "caller": request.caller.kind.value,
                "principal": request.principal.name,
                "body": request.json(optional=True),
                "header": request.headers.get("x-test"),
                "peer": request.peer_ip,
            },
            201,
        )

    async def healthz(self, request: ApiRequest) -> ApiResponse:
        return text_response("ok")

    async def bug(self, request: ApiRequest) -> ApiResponse:
        return json_response({}["missing"])

    async def bad_manifest(self, request: ApiRequest) -> ApiResponse:
        raise ManifestError("spec.containers[0].image", "must not be empty")

    async def ndjson(self, request: ApiRequest) -> ApiResponse:
        if request.query("forever") is not None:
            return ApiResponse(200, content_type=NDJSON, stream=self._forever())
        return ApiResponse(200, content_type=NDJSON, stream=_chunks(LINES))

    async def fails_midway(self, request: ApiRequest) -> ApiResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield LINES[0]
            raise TaskEndedError("the store went away under the watch")

        return ApiResponse(200, content_type=NDJSON, stream=chunks())

    async def _forever(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield LINES[0]
                await asyncio.sleep(0.001)  # a paced producer, as a watch with events is
        finally:
            self.closed_count += 1
            self.streams_closed.set()

    async def stream(self, stream: H2Stream, request: ApiRequest) -> None:
        """The stream routes (HTTP/2 only): exec answers, port-forward fails after answering,
        logs refuses before answering; a ``bug`` query fails with a foreign exception."""
        route = request.match.route.name
        if route == "pods.logs":
            raise NotRunningError("container main is not running")
        await stream.respond(200, [("content-type", "application/octet-stream")])
        await stream.write(b"hello\n")
        if route == "pods.portforward":
            if request.query("bug") is not None:
                raise RuntimeError("a bug after the response started")
            raise BadGatewayError("the pod's port closed")
        await stream.end()


async def _chunks(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@dataclass(frozen=True, slots=True)
class Identities:
    admin: Credentials
    viewer: Credentials
    n1: Credentials
    n2: Credentials


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPki:
    return make_cluster_pki(tmp_path_factory.mktemp("edge-ca"))


@pytest.fixture(scope="module")
def contexts(pki: ClusterPki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Client TLS contexts by "identity/protocol" and the server's under "server" (built off
    the event loop: they read files)."""
    directory: Path = tmp_path_factory.mktemp("edge-identities")
    who = {
        "anonymous": ANONYMOUS,
        "admin": wire.user_credentials(pki, directory, "admin"),
        "viewer": wire.viewer_credentials(pki, directory),
        "n1": wire.node_credentials(pki, directory, "n1", generate_key()),
        "n2": wire.node_credentials(pki, directory, "n2", generate_key()),
    }
    found: dict[str, Any] = {
        f"{name}/{proto}": wire.client_tls(pki, creds, proto)
        for name, creds in who.items()
        for proto in PROTOCOLS
    }
    found["server"] = wire.master_tls(pki)
    return found


@dataclass
class Served:
    port: int
    contexts: dict[str, Any]
    gate: StubGate
    stubs: Stubs
    clients: list[Client] = field(default_factory=list)

    def client(self, who: str, protocol: str) -> Client:
        client = Client(protocol, self.port, self.contexts[f"{who}/{protocol}"])
        self.clients.append(client)
        return client


async def _served(
    pki: ClusterPki, contexts: dict[str, Any], *, streams: bool = True
) -> AsyncIterator[Served]:
    gate, stubs = StubGate(pki), Stubs()
    edge = Edge(
        TABLE,
        stubs.handlers(),
        gate=gate,
        streams=stubs.stream if streams else None,
        owner=OWNER,
    )
    async with wire.serve(edge, contexts["server"]) as port:
        served = Served(port, contexts, gate, stubs)
        try:
            yield served
        finally:
            for client in served.clients:
                await client.close()


@pytest.fixture
async def served(pki: ClusterPki, contexts: dict[str, Any]) -> AsyncIterator[Served]:
    async for one in _served(pki, contexts):
        yield one


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def refused(reply: Reply, status: int, *words: str) -> dict[str, Any]:
    """The error of a refusal: its status, our body (``error.code`` the status), words in it."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"] == "application/json"
    error = reply.error
    assert set(error) == {"code", "message", "details"}
    for word in words:
        assert word in error["message"], error
    return error


# -- the handler gets the request --------------------------------------------------------------


async def test_an_admitted_request_reaches_its_handler_whole(served: Served, protocol: str) -> None:
    admin = served.client("admin", protocol)
    reply = await admin.call(
        "POST", "/v1/nodes/n%2D7/approve?x=1&x=2", {"force": True}, headers={"X-Test": "yes"}
    )
    assert reply.status == 201, reply.body
    assert reply.json() == {
        "route": "nodes.approve",
        "params": {"node": "n-7"},  # percent-decoded
        "x": "2",  # the last value
        "absent": "default",
        "caller": "admin",
        "principal": "admin",
        "body": {"force": True},
        "header": "yes",  # header names lower-case on both protocols
        "peer": "127.0.0.1",
    }
    empty = await admin.call("POST", "/v1/nodes/n1/approve")
    assert empty.json()["body"] == {}  # an optional body may be absent
    health = await served.client("anonymous", protocol).call("GET", "/healthz")
    assert (health.status, health.body) == (200, b"ok")
    assert health.headers["content-type"].startswith("text/plain")


# -- the order of the steps, and each refusal ----------------------------------------------


async def test_the_route_comes_before_the_caller(served: Served, protocol: str) -> None:
    anonymous = served.client("anonymous", protocol)
    refused(await anonymous.call("GET", "/v1/nothing/here"), 404, "no such route", "/v1/nothing")
    not_allowed = await anonymous.call("DELETE", "/v1/pods")
    refused(not_allowed, 405, "DELETE", "GET, POST")
    assert not_allowed.headers["allow"] == "GET, POST"
    # A control character in a path parameter: 400, before anyone is asked who calls.
    refused(await anonymous.call("PUT", "/v1/nodes/a%01b/lease"), 400, "a\\x01b", "DNS-1123")
    refused(await anonymous.call("PUT", "/v1/nodes/a%0Ab/lease"), 400, "a\\nb", "DNS-1123")
    refused(await anonymous.call("GET", "/v1/%ff"), 400, "request target")
    assert served.stubs.seen == []


async def test_the_caller_and_the_decision(served: Served, protocol: str) -> None:
    anonymous, viewer = served.client("anonymous", protocol), served.client("viewer", protocol)
    n1, n2 = served.client("n1", protocol), served.client("n2", protocol)
    refused(await anonymous.call("POST", "/v1/pods", {}), 401, "client certificate")
    refused(await viewer.call("POST", "/v1/pods", {}), 403, "viewer", "POST /v1/pods")
    # Subject.PATH: a node on its own node, then on another's.
    assert (await n1.call("PUT", "/v1/nodes/n1/lease", {})).json()["caller"] == "node-self"
    refused(await n2.call("PUT", "/v1/nodes/n1/lease", {}), 403, "node 'n2'", "use node 'n1'")
    # Subject.CALLER: the node its certificate names.
    assert (await n2.call("POST", "/v1/registrations", {})).json()["caller"] == "node-self"
    # Subject.POD: the node the pod is bound to, as the gate says; an unknown pod is 404.
    status = "/v1/namespaces/default/pods/p/status"
    assert (await n1.call("PUT", status, {})).json()["caller"] == "node-self"
    refused(await n2.call("PUT", status, {}), 403, "node 'n2'")
    refused(await n1.call("PUT", "/v1/namespaces/default/pods/ghost/status", {}), 404, "ghost")
    # Subject.API: the node whose API this is.
    assert (await n1.call("GET", "/v1/self")).json()["caller"] == "node-self"
    refused(await n2.call("GET", "/v1/self"), 403, "node 'n2'")
    # A node whose record no longer takes its key is refused, saying why.
    served.gate.current.discard("n1")
    refused(await n1.call("PUT", "/v1/nodes/n1/lease", {}), 403, "no longer")
    # A node is not an administrator (no subject needed to say so).
    refused(await n1.call("POST", "/v1/pods", {}), 403, "node 'n1'")


async def test_a_stream_route_over_http1_needs_http2_after_the_decision(served: Served) -> None:
    anonymous, admin = served.client("anonymous", H1), served.client("admin", H1)
    exec_path = "/v1/namespaces/default/pods/p/exec"
    refused(await anonymous.call("POST", exec_path), 401)
    reply = await admin.call("POST", exec_path)
    refused(reply, 426, "HTTP/2", "ALPN h2")
    assert reply.headers["upgrade"] == "HTTP/2.0"


async def test_the_body_is_bounded_after_the_decision(served: Served, protocol: str) -> None:
    too_big = b"x" * (MAX_BODY_BYTES + 1)
    refused(await served.client("anonymous", protocol).call("POST", "/v1/pods", too_big), 401)
    admin = served.client("admin", protocol)
    refused(await admin.call("POST", "/v1/pods", too_big), 413, str(MAX_BODY_BYTES))
    just = json.dumps({"pad": "x" * (MAX_BODY_BYTES - 20)}).encode()
    assert len(just) <= MAX_BODY_BYTES
    assert (await admin.call("POST", "/v1/pods", just)).status == 201
    assert len(served.stubs.seen) == 1


async def test_a_body_without_a_length_is_bounded_too(served: Served) -> None:
    """HTTP/1.1 chunked: no Content-Length to refuse on, so the edge counts as it reads."""
    admin = served.client("admin", H1)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY_BYTES // (64 << 10) + 1):
            yield b"x" * (64 << 10)

    session = admin._h1()
    async with session.post("/v1/pods", data=chunked()) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == 413


async def test_a_body_that_is_not_a_json_object_is_400(served: Served, protocol: str) -> None:
    admin = served.client("admin", protocol)
    refused(await admin.call("POST", "/v1/pods", b"{not json"), 400, "not JSON", "line 1 column 2")
    refused(await admin.call("POST", "/v1/pods", b"\xff\xfe"), 400, "not JSON", "not UTF-8")
    refused(await admin.call("POST", "/v1/pods", [1, 2]), 400, "JSON object")
    refused(await admin.call("POST", "/v1/pods", b'{"a": NaN}'), 400, "NaN is not a JSON number")


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # past the decoder's recursion limit (was a RecursionError: a 500)
        b'{"a": ' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1),  # just past
        b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",  # well-formed, 400 KB
    ],
    ids=["unclosed", "one-too-deep", "deep-and-well-formed"],
)
async def test_a_body_nested_past_the_bound_is_400_naming_it(
    served: Served, protocol: str, body: bytes
) -> None:
    reply = await served.client("admin", protocol).call("POST", "/v1/pods", body)
    refused(reply, 400, f"more than {MAX_JSON_DEPTH} deep", "nesting")


async def test_a_body_nested_to_the_bound_is_read(served: Served, protocol: str) -> None:
    """Brackets inside strings (escaped quotes and backslashes among them) are not nesting."""
    inner: object = {"s": '[[{{\\"\\', "t": "\\"}
    for _ in range(MAX_JSON_DEPTH - 2):  # 1 + 62 + the outer object: 64 deep, the bound
        inner = [inner]
    reply = await served.client("admin", protocol).call("POST", "/v1/pods", {"deep": inner})
    assert reply.status == 201, reply.body
    assert reply.json()["body"] == {"deep": inner}


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        (None, ["without a Content-Type", "application/json"]),
        ("text/plain", ['"text/plain"', "application/json only"]),
        ("application/x-www-form-urlencoded", ["x-www-form-urlencoded"]),
        ("application/jsonx", ["jsonx"]),
        ("application/json; charset=latin-1", ["charset=utf-8"]),
        ("application/json; boundary=x", ["takes no parameter"]),
        ("text/plain\u202e", ['"text/plain\\u202e"']),  # quoted escaped
    ],
)
async def test_a_body_of_another_type_is_415(
    served: Served, protocol: str, content_type: str | None, words: list[str]
) -> None:
    """Even a body that would parse as JSON: nothing is guessed (a form or ``text/plain`` is
    what a browser sends cross-site without asking)."""
    admin = served.client("admin", protocol)
    body = b'{"a": 1}'
    if content_type is not None:
        reply = await admin.call("POST", "/v1/pods", body, headers={"content-type": content_type})
    elif protocol == H2:
        stream = await admin.request_h2("POST", "/v1/pods", body)  # no header but the path's
        reply = Reply(stream.status, dict(await stream.response()), await stream.read_all(4096))
    else:  # aiohttp would label raw bytes application/octet-stream unless told not to
        async with admin._h1().post("/v1/pods", data=body, skip_auto_headers=["content-type"]) as r:
            reply = Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())
    refused(reply, 415, *words)
    assert served.stubs.seen == []  # refused before the handler


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        'application/json;charset="UTF-8"',
        "application/json ; charset=utf8",
    ],
)
async def test_json_with_or_without_its_charset_is_read(
    served: Served, protocol: str, content_type: str
) -> None:
    admin = served.client("admin", protocol)
    reply = await admin.call(
        "POST", "/v1/pods", b'{"a": 1}', headers={"content-type": content_type}
    )
    assert reply.status == 201, reply.body
    assert reply.json()["body"] == {"a": 1}
    # No body at all needs no type: an optional body may be absent.
    assert (await admin.call("POST", "/v1/nodes/n1/approve")).json()["body"] == {}


async def test_error_bodies_and_headers_are_the_same_on_both_protocols(served: Served) -> None:
    cases = [
        ("anonymous", "GET", "/v1/nothing", None),
        ("anonymous", "PATCH", "/v1/pods", None),
        ("anonymous", "PUT", "/v1/nodes/a%7fb/lease", None),
        ("anonymous", "PUT", "/v1/nodes/a%0Ab/lease", None),  # a newline: ours, not aiohttp's 404
        ("anonymous", "GET", "/v1/nothing%0A/here", None),
        ("anonymous", "POST", "/v1/pods", {}),
        ("viewer", "POST", "/v1/pods", {}),
        ("n2", "PUT", "/v1/nodes/n1/lease", {}),
        ("n1", "PUT", "/v1/namespaces/default/pods/ghost/status", {}),
        ("admin", "POST", "/v1/pods", b"x" * (MAX_BODY_BYTES + 1)),
        ("admin", "POST", "/v1/pods", b"[]"),
        ("admin", "DELETE", "/v1/namespaces/default/pods/p", None),  # 422 with its field
        ("viewer", "GET", "/v1/pods", None),  # 500: a handler's bug
    ]
    for who, method, path, body in cases:
        one, two = [await served.client(who, proto).call(method, path, body) for proto in PROTOCOLS]
        assert (one.status, one.json()) == (two.status, two.json()), (who, method, path)
        for header in ("allow", "content-type", "upgrade"):
            assert one.headers.get(header) == two.headers.get(header), (path, header)
    manifest = await served.client("admin", H2).call("DELETE", "/v1/namespaces/default/pods/p")
    details = refused(manifest, 422)["details"]
    assert details["field"] == "spec.containers[0].image"
    assert [c["field"] for c in details["causes"]] == ["spec.containers[0].image"]


# -- streamed responses ----------------------------------------------------------------------


async def test_a_streamed_response_arrives_chunk_by_chunk(served: Served, protocol: str) -> None:
    watch = await served.client("viewer", protocol).watch("/v1/nodes")
    assert watch.status == 200
    assert watch.headers["content-type"] == NDJSON
    assert [json.loads(line) for line in (await watch.rest()).splitlines()] == [
        {"n": 1},
        {"n": 2},
        {"n": 3},
    ]


async def test_a_stream_that_fails_after_it_started_ends_there(
    served: Served, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.aio.edge")
    watch = await served.client("viewer", protocol).watch("/v1/events")
    assert watch.status == 200  # the headers went out before the failure
    assert await watch.rest() == LINES[0]  # then the body ends, as after a disconnect
    assert "stream response ended early" in caplog.text


async def test_a_client_going_away_closes_the_stream_it_read(served: Served, protocol: str) -> None:
    watch = await served.client("viewer", protocol).watch("/v1/nodes?forever=1")
    assert await watch.next() == {"n": 1}
    watch.stop()
    await until(served.stubs.streams_closed.is_set, "the endless stream closed")


async def test_a_foreign_exception_in_a_handler_is_500_with_our_body(
    served: Served, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    reply = await served.client("viewer", protocol).call("GET", "/v1/pods")
    refused(reply, 500, "internal error", "GET /v1/pods", "KeyError")
    failed = [r for r in caplog.records if r.getMessage() == "request handler failed"]
    assert len(failed) == 1
    assert failed[0].exc_info is not None and failed[0].exc_info[0] is KeyError
    # The server goes on serving.
    assert (await served.client("viewer", protocol).call("GET", "/healthz")).status == 200


# -- stream routes (HTTP/2) ------------------------------------------------------------------


async def test_a_stream_route_gets_the_http2_stream(served: Served) -> None:
    admin = served.client("admin", H2)
    stream = await admin.request_h2("POST", "/v1/namespaces/default/pods/p/exec")
    assert stream.status == 200
    assert await stream.read_all(1 << 10) == b"hello\n"


async def test_a_stream_route_refusing_before_it_answers_sends_our_error_body(
    served: Served,
) -> None:
    reply = await served.client("viewer", H2).call("GET", "/v1/namespaces/default/pods/p/logs")
    refused(reply, 409, "not running")


@pytest.mark.parametrize("query", ["", "?bug=1"])
async def test_a_stream_route_failing_after_it_answered_is_reset(
    served: Served, query: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await served.client("admin", H2).request_h2(
        "POST", f"/v1/namespaces/default/pods/p/portforward{query}"
    )
    assert stream.status == 200
    assert await stream.read() == b"hello\n"
    with pytest.raises(StreamResetError):
        await stream.read_all(1 << 10)
    if query:  # a foreign exception: logged with its traceback too
        assert "request handler failed" in caplog.text


async def test_without_a_stream_handler_stream_routes_are_unavailable(
    pki: ClusterPki, contexts: dict[str, Any]
) -> None:
    async for served in _served(pki, contexts, streams=False):
        reply = await served.client("admin", H2).call("POST", "/v1/namespaces/default/pods/p/exec")
        refused(reply, 503, "no streams")


async def test_an_http1_client_that_disconnects_mid_body_leaves_the_server_serving(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """The request's body never completes: the read fails, no handler runs, and a client
    going away is not logged as a bug."""
    admin = served.client("admin", H1)

    async def stalls() -> AsyncIterator[bytes]:
        yield b'{"partial": '
        raise aiohttp.ClientPayloadError("client gave up")

    with pytest.raises(aiohttp.ClientError):
        async with admin._h1().post("/v1/pods", data=stalls()):
            pass
    health = await served.client("anonymous", H1).call("GET", "/healthz")
    assert health.status == 200
    assert served.stubs.seen == []
    assert "request handler failed" not in caplog.text


# -- the listener both daemons serve with ------------------------------------------------------


@pytest.fixture(scope="module")
def http1_only_tls(pki: ClusterPki) -> ssl.SSLContext:
    """A serving context that offers only HTTP/1.1 by ALPN (the listener must offer both)."""
    return server_context(
        pki.serving_cert_path,
        pki.serving_key_path,
        client_ca_pems=[cert_to_pem(pki.ca_cert)],
        alpn=(H1,),
    )


@contextlib.asynccontextmanager
async def listening(
    pki: ClusterPki, contexts: dict[str, Any], tls: ssl.SSLContext | None = None, **options: Any
) -> AsyncIterator[tuple[EdgeListener, Served]]:
    """The stub edge served by an ``EdgeListener`` on a port the kernel picks."""
    gate, stubs = StubGate(pki), Stubs()
    edge = Edge(TABLE, stubs.handlers(), gate=gate, streams=stubs.stream, owner=OWNER)
    listener = EdgeListener(
        edge, tls or contexts["server"], HOST, 0, name="test-listener", **options
    )
    await listener.start()
    served = Served(listener.port, contexts, gate, stubs)
    try:
        yield listener, served
    finally:
        for client in served.clients:
            await client.close()
        await listener.stop("test over")


async def ended(watch: Watch) -> None:
    """Read a streamed response until the server ends it, cleanly or not."""
    with contextlib.suppress(StreamingError, aiohttp.ClientError):
        async for _ in watch.lines:
            pass


async def test_the_listener_serves_both_protocols_on_one_port_whatever_alpn_it_got(
    pki: ClusterPki, contexts: dict[str, Any], http1_only_tls: ssl.SSLContext
) -> None:
    async with listening(pki, contexts, http1_only_tls) as (listener, served):
        assert listener.running
        assert listener.port != 0  # the kernel's pick, as bound
        for protocol in PROTOCOLS:
            health = await served.client("anonymous", protocol).call("GET", "/healthz")
            assert (health.status, health.body) == (200, b"ok"), protocol
        admin = served.client("admin", H2)
        stream = await admin.request_h2("POST", "/v1/namespaces/default/pods/p/exec")
        assert await stream.read_all(1 << 10) == b"hello\n"  # a stream route: HTTP/2 it is
        assert listener.h2_connections == 2  # tracked, to be sent GOAWAY at stop


async def test_the_listener_listens_with_its_options(
    pki: ClusterPki, contexts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    real = loop.create_server
    seen: list[dict[str, Any]] = []

    async def create_server(*args: Any, **kwargs: Any) -> asyncio.Server:
        seen.append(kwargs)
        return await real(*args, **kwargs)

    monkeypatch.setattr(loop, "create_server", create_server)
    async with listening(pki, contexts):
        pass
    async with listening(pki, contexts, backlog=4096):
        pass
    assert [options["backlog"] for options in seen] == [DEFAULT_BACKLOG, 4096]
    for options in seen:
        assert options["ssl"] is contexts["server"]
        assert options["ssl_handshake_timeout"] == HANDSHAKE_TIMEOUT_S
        assert options["reuse_address"] is True
    assert ALPN_PROTOCOLS == (H2, H1)


async def test_stop_sends_goaway_and_ends_what_outlives_the_grace_on_both_protocols(
    pki: ClusterPki, contexts: dict[str, Any]
) -> None:
    async with listening(pki, contexts, shutdown_grace_s=0.2) as (listener, served):
        h2_client, h1_client = served.client("viewer", H2), served.client("viewer", H1)
        watches = [await c.watch("/v1/nodes?forever=1") for c in (h2_client, h1_client)]
        for watch in watches:
            assert await watch.next() == {"n": 1}
        conn = await h2_client._h2()
        stopping = asyncio.get_running_loop().create_task(listener.stop("listener stopping"))
        await until(lambda: conn.mux.closed, "GOAWAY received")
        await stopping
        assert not listener.running
        assert listener.h2_connections == 0
        for watch in watches:
            await ended(watch)
        await until(lambda: served.stubs.closed_count == 2, "both endless streams closed")
        with pytest.raises(ConnectionClosedError):  # nothing listens any more
            await connect(HOST, served.port, contexts["anonymous/h2"], name="late")
        await listener.stop("again")  # a second stop is harmless


async def test_stop_gives_http2_its_own_grace_when_told(
    pki: ClusterPki, contexts: dict[str, Any]
) -> None:
    """The node gives sessions a shorter grace than requests: ``stop(h2_grace_s=)``. A grace
    far beyond the test's deadline shows which one is used: the stop returns anyway."""
    async with listening(pki, contexts, shutdown_grace_s=3600.0) as (listener, served):
        watch = await served.client("viewer", H2).watch("/v1/nodes?forever=1")
        assert await watch.next() == {"n": 1}
        async with asyncio.timeout(30.0):
            await listener.stop("node stopping", h2_grace_s=0.1)
        await ended(watch)
        assert served.stubs.closed_count == 1


async def test_a_listener_that_cannot_listen_raises_and_is_not_running(
    pki: ClusterPki, contexts: dict[str, Any]
) -> None:
    async with listening(pki, contexts) as (first, _):
        edge = Edge(TABLE, {}, gate=StubGate(pki))
        second = EdgeListener(edge, contexts["server"], HOST, first.port, name="second")
        with pytest.raises(OSError):
            await second.start()
        assert not second.running
        assert second.port == first.port  # the one it was asked for
        await second.stop("never started")  # safe
