"""The node API server (``agent.node.streaming.server.NodeApi``) on loopback with TLS, serving
the streaming API on the FakeRuntime through the real pod manager (``managerrig``), and
clients of both protocols with certificates from a CA made here.

Port-forward cannot enter a pod's network namespace in a unit test: the API gets a connector
that reaches the test's own loopback instead (the FakeRuntime's containers "run" in the test's
namespaces), and records the pid it was asked for.

TLS contexts read files: they are built in the bridge, never in the loop.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from agent.aio.h2conn import H2Connection, H2Stream, connect
from agent.aio.tls import client_context
from agent.node.runtime.fake import Script
from agent.node.streaming.server import NodeApi
from agent.pki.core import cert_to_pem, create_ca, generate_key, issue, key_to_pem
from agent.pki.names import (
    MASTERS_GROUP,
    NODE_CN_PREFIX,
    NODES_GROUP,
    PROXIES_GROUP,
    VIEWERS_GROUP,
)
from agent.proto import execframe
from agent.proto.execframe import Channel
from agent.types import Pod
from tests.unit.node.pods.managerrig import IMAGE, ManagerRig, manager_rig, static_pod
from tests.unit.node.pods.rig import NODE, TracingRuntime

HOST = "127.0.0.1"
CERT_LIFETIME_S = 3600.0
READ_LIMIT_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class Credentials:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Pki:
    """A cluster CA, the node's serving certificate and a few clients' certificates."""

    ca_pem: bytes
    node: Credentials
    admin: Credentials
    viewer: Credentials
    other_node: Credentials
    proxy: Credentials  # the master's streaming proxy

    @classmethod
    def make(cls, directory: Path) -> Pki:
        """Blocking (writes files)."""
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, ca_cert = create_ca()

        def write(
            name: str, common_name: str, groups: list[str], *, server: bool = False
        ) -> Credentials:
            key = generate_key()
            cert = issue(
                ca_key,
                ca_cert,
                key.public_key(),
                common_name=common_name,
                groups=groups,
                sans=[HOST] if server else (),
                lifetime_s=CERT_LIFETIME_S,
                client=True,
                server=server,
            )
            creds = Credentials(directory / f"{name}.crt", directory / f"{name}.key")
            creds.cert.write_bytes(cert_to_pem(cert))
            creds.key.write_bytes(key_to_pem(key))
            return creds

        return cls(
            ca_pem=cert_to_pem(ca_cert),
            node=write("node", NODE_CN_PREFIX + NODE, [NODES_GROUP], server=True),
            admin=write("admin", "admin", [MASTERS_GROUP]),
            viewer=write("viewer", "viewer", [VIEWERS_GROUP]),
            other_node=write("other", NODE_CN_PREFIX + "n2", [NODES_GROUP]),
            proxy=write("proxy", "system:node-proxy", [PROXIES_GROUP]),
        )

    def client(self, who: Credentials, *, alpn: tuple[str, ...] = ("h2",)) -> ssl.SSLContext:
        """Blocking (reads files)."""
        return client_context(self.ca_pem, cert_file=who.cert, key_file=who.key, alpn=alpn)


def free_port() -> int:
    """Blocking: a loopback port free right now (the node API takes no port 0)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class WatchedSocket(socket.socket):
    """A port-forward's pod-side socket that notes, when it is closed, whether TCP_NODELAY was
    set on it (by the node's splice: the connector here does not set it): None while open."""

    nodelay_at_close: int | None = None

    def close(self) -> None:
        if self.nodelay_at_close is None and self.fileno() != -1:
            self.nodelay_at_close = self.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        super().close()


class LoopbackConnector:
    """The port-forward connector of the tests: a connection to the test's own loopback."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.sockets: list[WatchedSocket] = []

    def __call__(self, pid: int, port: int, timeout_s: float) -> socket.socket:
        self.pids.append(pid)
        plain = socket.create_connection((HOST, port), timeout=timeout_s)
        sock = WatchedSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        sock.setblocking(False)
        self.sockets.append(sock)
        return sock


# The pods every streaming test finds on the node.
WEB = static_pod("web", {"name": "main", "image": IMAGE, "command": ["serve"]})
DUO = static_pod(
    "duo",
    {"name": "a", "image": IMAGE, "command": ["serve"]},
    {"name": "b", "image": IMAGE, "command": ["serve"]},
)
DONE = static_pod(
    "done", {"name": "main", "image": IMAGE, "command": ["finish"]}, restartPolicy="Never"
)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    trailers: Mapping[str, str] = field(default_factory=dict)

    @property
    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = json.loads(self.body)["error"]
        assert error["code"] == self.status
        return error

    def frames(self) -> list[tuple[Channel, bytes]]:
        """The exec frames of the body."""
        decoder = execframe.FrameDecoder()
        return [(f.channel, f.payload) for f in decoder.feed(self.body)]

    def output(self, channel: Channel) -> bytes:
        return b"".join(p for c, p in self.frames() if c is channel)


def path(pod: str, action: str, **query: Any) -> str:
    params: list[tuple[str, str]] = []
    for name, value in query.items():
        for each in value if isinstance(value, list) else [value]:
            params.append((name, str(each)))
    suffix = f"?{urlencode(params)}" if params else ""
    return f"/v1/namespaces/default/pods/{pod}/{action}{suffix}"


async def reply_of(stream: H2Stream) -> Reply:
    """The rest of a response: its headers, body and trailers."""
    headers = await stream.response()
    body = await stream.read_all(READ_LIMIT_BYTES)
    named = {k: v for k, v in headers if not k.startswith(":")}
    return Reply(stream.status, named, body, dict(stream.trailers or ()))


@dataclass
class StreamingRig:
    pods: ManagerRig
    api: NodeApi
    port: int
    pki: Pki
    connector: LoopbackConnector
    _conns: list[H2Connection] = field(default_factory=list)

    @property
    def runtime(self) -> TracingRuntime:
        return self.pods.runtime

    async def tls(self, who: Credentials, *, alpn: tuple[str, ...] = ("h2",)) -> ssl.SSLContext:
        return await self.pods.bridge.run(lambda: self.pki.client(who, alpn=alpn))

    async def connect(self, who: Credentials | None = None) -> H2Connection:
        """An HTTP/2 connection to the node API (closed at the end of the test)."""
        tls = await self.tls(who or self.pki.admin)
        conn = await connect(HOST, self.port, tls, name="test-client")
        self._conns.append(conn)
        return conn

    async def open(
        self,
        target: str,
        *,
        method: str = "POST",
        body: bytes = b"",
        end: bool = True,
        conn: H2Connection | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> H2Stream:
        """A request; ``end``: the request body ends after ``body`` (else it stays open)."""
        conn = conn or await self.connect()
        extra = list((headers or {}).items())
        stream = await conn.request(method, target, extra, end_stream=end and not body)
        if body:
            await stream.write(body)
            if end:
                await stream.end()
        return stream

    async def call(self, target: str, *, method: str = "POST", body: bytes = b"") -> Reply:
        return await reply_of(await self.open(target, method=method, body=body))

    def app(self, pod: Pod, name: str = "main") -> str:
        """The id of ``pod``'s newest container ``name``."""
        return self.pods.runtime.one(pod.uid, name).id

    async def close(self) -> None:
        for conn in self._conns:
            await conn.shutdown("test over", grace_s=0.5)


@asynccontextmanager
async def streaming_rig(state_dir: Path, pki: Pki) -> AsyncIterator[StreamingRig]:
    async with manager_rig(state_dir) as pods:
        pods.runtime.script_command(["finish"], Script(stdout=b"finished\n", exit_code=0))
        await pods.apply(WEB, DUO, DONE)
        connector = LoopbackConnector()
        port = await pods.bridge.run(free_port)
        api = NodeApi(
            pods.pods,
            NODE,
            f"{HOST}:{port}",
            streaming_runtime=pods.runtime,
            run_blocking=pods.bridge.run,
            port_connector=connector,
        )
        tls = await pods.bridge.run(api.build_tls, pki.node.cert, pki.node.key, pki.ca_pem)
        await api.start(tls)
        rig = StreamingRig(pods, api, port, pki, connector)
        try:
            yield rig
        finally:
            await rig.close()
            await api.stop()
