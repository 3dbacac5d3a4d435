"""The master's streaming proxy (``agent.master.proxy``) between a user and a fake node on
loopback: the user's HTTP/2 stream goes through the master's edge (as node-master serves it)
and the proxy to an HTTP/2 server presenting a node certificate from the cluster CA.

Covered: relaying both directions with flow control end to end (a reader that does not read
stalls the writer at the far end, and only its own stream), the user's identity sent upstream
under the proxy's certificate, the answers when the node cannot be reached, is not the node
asked for, or the pod is on no node, one link per node reused and opened again after it
closed, resets crossing the proxy both ways, and ``close()``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.aio.edge import Edge
from agent.aio.h2conn import H2Connection, H2Stream, serve_factory
from agent.aio.tls import server_context
from agent.errors import BadGatewayError, NotFoundError, StreamResetError
from agent.master.api import MasterApi
from agent.master.pki_files import ClusterPki, write_proxy_identity
from agent.master.proxy import StreamingProxy
from agent.pki.core import cert_to_pem
from agent.pki.names import MASTERS_GROUP, VIEWERS_GROUP
from agent.proto.authz import GROUPS_HEADER, USER_HEADER
from agent.proto.h2mux import Limits
from agent.proto.routes import MASTER_ROUTES
from tests.unit.master import wire
from tests.unit.master.rig import MasterRig, NodeKey
from tests.unit.master.wire import H2, HOST, Client
from tests.unit.node.asyncwait import until

pytestmark = pytest.mark.usefixtures("blockbuster")

EXEC = "/v1/namespaces/default/pods/web/exec"
PORTFORWARD = "/v1/namespaces/default/pods/web/portforward?port=8080"
LOGS = "/v1/namespaces/default/pods/web/logs"
# The fake node's receive window is small, so an upstream that stops reading stalls soon.
NODE_LIMITS = Limits(stream_window_bytes=64 << 10)
# More than every window and buffer on the way (4 MiB per hop, 256 KiB send buffers, sockets).
BULK_BYTES = 24 << 20
CHUNK_BYTES = 64 << 10
LOG_LINES = 200


def _pod(name: str, *, node: str | None = None, cpu: str | None = None) -> dict[str, object]:
    container: dict[str, object] = {"name": "main", "image": "busybox:1"}
    if cpu is not None:
        container["resources"] = {"requests": {"cpu": cpu}}
    spec: dict[str, object] = {"containers": [container]}
    if node is not None:
        spec["nodeName"] = node
    metadata = {"name": name, "namespace": "default"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


@dataclass
class FakeNode:
    """A node's streaming API: exec echoes (after ``release`` when ``hold`` is set), logs
    writes ``log_body``, port-forward writes ``bulk`` without reading. Records every request
    and connection."""

    tls: ssl.SSLContext
    hold: bool = False
    bulk: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[H2Stream] = field(default_factory=list)
    connections: list[H2Connection] = field(default_factory=list)
    ended: list[BaseException] = field(default_factory=list)  # how handlers' reads ended
    written: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def log_body(self) -> bytes:
        return b"".join(f"line {i}\n".encode() for i in range(LOG_LINES))

    async def handle(self, stream: H2Stream) -> None:
        self.requests.append(stream)
        if stream.path.startswith(LOGS):
            await stream.respond(200, [("content-type", "text/plain")])
            body = self.log_body
            for i in range(0, len(body), 100):
                await stream.write(body[i : i + 100])
            await stream.end()
            return
        await stream.respond(200, [("content-type", "application/octet-stream"), ("x-drop", "1")])
        if stream.path.startswith("/v1/namespaces/default/pods/web/portforward"):
            chunk = b"p" * CHUNK_BYTES
            while self.written < self.bulk:
                await stream.write(chunk)
                self.written += len(chunk)
            await stream.end()
            return
        if self.hold:
            await self.release.wait()
        try:
            while chunk := await stream.read():
                await stream.write(chunk)
        except StreamResetError as exc:
            self.ended.append(exc)
            raise
        await stream.end([("exit-code", "0")])

    async def start(self) -> FakeNode:
        make = serve_factory(self.handle, limits=NODE_LIMITS, name="fake-node")

        def factory() -> H2Connection:
            conn: H2Connection = make()
            self.connections.append(conn)
            return conn

        self._server = await asyncio.get_running_loop().create_server(
            factory, HOST, self.port, ssl=self.tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(c.shutdown("node stopping", grace_s=0.5) for c in self.connections))
        if self._server is not None:
            await self._server.wait_closed()


@dataclass(frozen=True, slots=True)
class Files:
    """Certificates made once per session: the proxy's identity, two node serving identities,
    the users'."""

    proxy_cert: Path
    proxy_key: Path
    node_tls: ssl.SSLContext  # n1's certificate: the node the pod is bound to
    impostor_tls: ssl.SSLContext  # a real node certificate, of n2
    users: wire.TlsSet


def _node_tls(pki: ClusterPki, directory: Path, node: str) -> ssl.SSLContext:
    creds = wire.node_credentials(pki, directory, node, NodeKey(node).key, server=True)
    assert creds.cert is not None and creds.key is not None
    return server_context(
        creds.cert,
        creds.key,
        client_ca_pems=[cert_to_pem(pki.ca_cert)],
        require_client_cert=True,
        alpn=(H2,),
    )


@pytest.fixture(scope="session")
def files(cluster_pki: ClusterPki, tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("proxy")
    proxy_cert, proxy_key = write_proxy_identity(cluster_pki, directory)
    return Files(
        proxy_cert,
        proxy_key,
        _node_tls(cluster_pki, directory / "n1", "n1"),
        _node_tls(cluster_pki, directory / "n2", "n2"),
        wire.tls_set(cluster_pki, directory / "users", NodeKey("n1").key),
    )


@dataclass
class Setup:
    rig: MasterRig
    node: FakeNode
    proxy_port: int  # the master's API, where users connect
    endpoints: dict[str, tuple[str, int]]
    users: wire.TlsSet
    close_proxy: Callable[[], Awaitable[None]]
    clients: list[Client] = field(default_factory=list)

    def user(self, who: str = "admin") -> Client:
        client = Client(H2, self.proxy_port, self.users.client(who, H2))
        self.clients.append(client)
        return client


async def _pod_node(api: MasterApi, namespace: str, name: str) -> str:
    # What node-master gives the proxy (agent/master/app.py): NotFound for an unbound pod.
    node = await api.pod_node(namespace, name)
    if node is None:
        raise NotFoundError(f"pod {namespace}/{name} is not bound to a node yet")
    return node


@pytest.fixture
async def setup(rig: MasterRig, files: Files) -> AsyncIterator[Setup]:
    api = MasterApi(rig.registry, rig.pods, ())
    await rig.ready_node("n1")
    await rig.pods.apply(_pod("web", node="n1"))
    await rig.pods.apply(_pod("pending", cpu="64"))  # more than any node has: unbound
    endpoints: dict[str, tuple[str, int]] = {}

    async def node_endpoint(node: str) -> tuple[str, int]:
        if node not in endpoints:
            raise BadGatewayError(f"node {node} has not reported its API endpoint")
        return endpoints[node]

    proxy = StreamingProxy(
        pod_node=lambda ns, name: _pod_node(api, ns, name),
        node_endpoint=node_endpoint,
        proxy_cert=files.proxy_cert,
        proxy_key=files.proxy_key,
        ca_file=rig.registry.pki.ca_cert_path,
    )
    node = await FakeNode(files.node_tls).start()
    endpoints["n1"] = (HOST, node.port)
    edge = Edge(MASTER_ROUTES, api.handlers, gate=api, streams=proxy.handle)
    async with wire.serve(edge, files.users.master) as port:
        state = Setup(rig, node, port, endpoints, files.users, proxy.close)
        try:
            yield state
        finally:
            for client in state.clients:
                await client.close()
            await proxy.close()
            await node.stop()


async def read_all(stream: H2Stream) -> bytes:
    return await stream.read_all(BULK_BYTES * 2)


async def error_of(stream: H2Stream) -> tuple[int, str]:
    await stream.response()
    body = json.loads(await read_all(stream))
    return stream.status, str(body["error"]["message"])


# -- relaying ----------------------------------------------------------------------------------


async def test_exec_is_relayed_both_ways_with_the_users_identity(setup: Setup) -> None:
    user = await setup.user().open_h2("POST", EXEC)
    await user.write(b"hello ")
    await user.write(b"node")
    await user.end()
    await user.response()
    assert user.status == 200
    assert dict(await user.response())["content-type"] == "application/octet-stream"
    assert "x-drop" not in dict(await user.response())  # only content-type is forwarded
    assert await read_all(user) == b"hello node"
    assert user.trailers == (("exit-code", "0"),)
    [seen] = setup.node.requests
    assert seen.path == EXEC and seen.method == "POST"
    assert seen.header(USER_HEADER) == "admin"
    assert seen.header(GROUPS_HEADER) == MASTERS_GROUP
    assert seen.conn.peer_common_name == "system:node-proxy"


async def test_a_viewers_logs_carry_the_viewers_identity(setup: Setup) -> None:
    logs = await setup.user("viewer").open_h2("GET", LOGS + "?follow=0", end_stream=True)
    assert await read_all(logs) == setup.node.log_body
    [seen] = setup.node.requests
    assert seen.path == LOGS + "?follow=0"  # the query reaches the node as sent
    assert (seen.header(USER_HEADER), seen.header(GROUPS_HEADER)) == ("viewer", VIEWERS_GROUP)


async def test_a_node_that_does_not_read_stalls_the_user_not_the_proxy(setup: Setup) -> None:
    setup.node.hold = True
    client = setup.user()
    user = await client.open_h2("POST", EXEC)
    sent = 0

    async def send() -> None:
        nonlocal sent
        chunk = b"u" * CHUNK_BYTES
        while sent < BULK_BYTES:
            await user.write(chunk)
            sent += len(chunk)
        await user.end()

    sender = asyncio.create_task(send())
    try:
        conn = await client._h2()
        # The user's own stream runs out of window: nothing between buffers the rest.
        await until(lambda: conn.mux.stalled_since(user.id) is not None, "the user to stall")
        assert sent < BULK_BYTES // 2
        setup.node.release.set()
        echoed = await read_all(user)
        await sender
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    assert echoed == b"u" * BULK_BYTES


async def test_a_user_that_does_not_read_stalls_the_node_and_only_its_stream(
    setup: Setup,
) -> None:
    setup.node.bulk = BULK_BYTES
    client = setup.user()
    forward = await client.open_h2("POST", PORTFORWARD)
    await forward.response()
    await until(lambda: setup.node.requests, "the node to get the request")
    [upstream] = setup.node.requests
    await until(
        lambda: upstream.conn.mux.stalled_since(upstream.id) is not None, "the node to stall"
    )
    assert setup.node.written < BULK_BYTES // 2
    # The same link still carries other streams: the stall is per stream.
    logs = await client.open_h2("GET", LOGS, end_stream=True)
    assert await read_all(logs) == setup.node.log_body
    assert len(setup.node.connections) == 1
    received = 0
    while chunk := await forward.read():
        received += len(chunk)
    assert received == setup.node.written == BULK_BYTES
    await forward.end()


# -- failures ----------------------------------------------------------------------------------


async def test_an_unreachable_node_is_502(setup: Setup) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind((HOST, 0))
        setup.endpoints["n1"] = (HOST, probe.getsockname()[1])
    user = await setup.user().open_h2("POST", EXEC, end_stream=True)
    status, message = await error_of(user)
    assert status == 502 and "unreachable" in message and "n1" in message


async def test_a_node_without_an_endpoint_is_502(setup: Setup) -> None:
    del setup.endpoints["n1"]
    user = await setup.user().open_h2("POST", EXEC, end_stream=True)
    assert await error_of(user) == (502, "node n1 has not reported its API endpoint")


async def test_a_peer_with_another_nodes_certificate_is_502(setup: Setup, files: Files) -> None:
    impostor = await FakeNode(files.impostor_tls).start()
    try:
        setup.endpoints["n1"] = (HOST, impostor.port)
        user = await setup.user().open_h2("POST", EXEC, end_stream=True)
        status, message = await error_of(user)
        assert status == 502
        assert message == f"{HOST}:{impostor.port} is 'system:node:n2', not node 'n1'"
        assert impostor.requests == []  # nothing was sent to it
        await until(lambda: impostor.connections[0].closed.done(), "the link to be dropped")
    finally:
        await impostor.stop()


async def test_a_pod_on_no_node_or_no_pod_is_404(setup: Setup) -> None:
    client = setup.user()
    pending = await client.open_h2("POST", EXEC.replace("/web/", "/pending/"), end_stream=True)
    assert await error_of(pending) == (404, "pod default/pending is not bound to a node yet")
    missing = await client.open_h2("POST", EXEC.replace("/web/", "/nope/"), end_stream=True)
    assert await error_of(missing) == (404, "pod default/nope not found")
    assert setup.node.requests == []


# -- links -------------------------------------------------------------------------------------


async def test_one_link_per_node_reused_and_reopened_after_it_closed(setup: Setup) -> None:
    client = setup.user()
    for _ in range(2):
        logs = await client.open_h2("GET", LOGS, end_stream=True)
        assert await read_all(logs) == setup.node.log_body
    assert len(setup.node.connections) == 1
    [link] = setup.node.connections
    await link.shutdown("node restarting", grace_s=0.5)
    logs = await client.open_h2("GET", LOGS, end_stream=True)
    assert await read_all(logs) == setup.node.log_body
    assert len(setup.node.connections) == 2


async def test_concurrent_first_requests_open_one_link(setup: Setup) -> None:
    client = setup.user()

    async def logs() -> bytes:
        return await read_all(await client.open_h2("GET", LOGS, end_stream=True))

    bodies = await asyncio.gather(*(logs() for _ in range(5)))
    assert bodies == [setup.node.log_body] * 5
    assert len(setup.node.connections) == 1


# -- resets ------------------------------------------------------------------------------------


async def test_a_user_reset_reaches_the_node(setup: Setup) -> None:
    user = await setup.user().open_h2("POST", EXEC)
    await user.write(b"ping")
    await user.response()
    assert await user.read() == b"ping"
    user.reset()
    await until(lambda: setup.node.ended, "the node's stream to be reset")
    assert isinstance(setup.node.ended[0], StreamResetError)


async def test_a_node_reset_reaches_the_user(setup: Setup) -> None:
    user = await setup.user().open_h2("POST", EXEC)
    await user.write(b"ping")
    await user.response()
    assert await user.read() == b"ping"
    [upstream] = setup.node.requests
    upstream.reset()
    with pytest.raises(StreamResetError):
        await read_all(user)


async def test_close_ends_every_link(setup: Setup) -> None:
    logs = await setup.user().open_h2("GET", LOGS, end_stream=True)
    assert await read_all(logs) == setup.node.log_body
    [link] = setup.node.connections
    await setup.close_proxy()
    await until(lambda: link.closed.done(), "the node to see the link closed")
    # A later request opens a new link (close() leaves the proxy usable).
    logs = await setup.user().open_h2("GET", LOGS, end_stream=True)
    assert await read_all(logs) == setup.node.log_body
    assert len(setup.node.connections) == 2


# -- the relay's two directions -----------------------------------------------------------------


async def test_a_user_gone_while_the_node_does_not_read_ends_the_nodes_side(
    setup: Setup,
) -> None:
    """The relay runs in the connections' callbacks (agent.aio.splice.StreamRelay), no task
    awaiting a read on either side: the user going away resets the node's side at once,
    though the node neither reads nor writes, and the relay leaves nothing behind."""
    setup.node.hold = True
    user = await setup.user().open_h2("POST", EXEC)
    await user.response()
    await user.write(b"ping")
    [upstream] = setup.node.requests
    user.reset()
    await until(lambda: upstream.failed, "the node's stream to be reset")
    setup.node.release.set()
    await until(lambda: setup.node.ended, "the node's handler to see the reset")
    assert isinstance(setup.node.ended[0], StreamResetError)
    [link] = setup.node.connections
    await until(lambda: not link.streams, "no stream left on the node's link")


async def test_a_users_request_trailers_do_not_reach_the_node(setup: Setup) -> None:
    """Only the body and the headers the proxy sets go upstream (the relay ends the node's
    request stream without the user's trailers)."""
    user = await setup.user().open_h2("POST", EXEC)
    await user.write(b"ping")
    await user.end([(USER_HEADER, "mallory")])
    assert await read_all(user) == b"ping"
    [upstream] = setup.node.requests
    assert upstream.remote_ended and upstream.trailers is None
    assert upstream.header(USER_HEADER) == "admin"
