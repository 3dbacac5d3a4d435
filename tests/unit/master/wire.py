"""The master's API on loopback for unit tests: an ``Edge`` served over TLS by both real
front-ends on one port (ALPN picks aiohttp for HTTP/1.1, ``agent.aio.h2conn`` for HTTP/2, as
``node-master`` does), client certificates issued in the test from the cluster CA, and one
small client per protocol that answers the same ``Reply`` whichever protocol carried it.

TLS contexts read files: build them outside the event loop (sync fixtures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agent.aio.edge import Edge
from agent.aio.h2conn import AlpnSwitch, H2Connection, H2Stream, connect, serve_factory
from agent.aio.tls import client_context, server_context
from agent.master.pki_files import ClusterPki, issue_user_cert
from agent.pki.core import PrivateKey, cert_to_pem, issue, key_to_pem
from agent.pki.names import MASTERS_GROUP, NODE_CN_PREFIX, NODES_GROUP, VIEWERS_GROUP

HOST = "127.0.0.1"
H1 = "http/1.1"
H2 = "h2"
PROTOCOLS = (H1, H2)
CERT_LIFETIME_S = 3600.0
READ_LIMIT_BYTES = 8 << 20
# What a response still running at the end of a test (a watch) gets before it is cancelled.
SHUTDOWN_GRACE_S = 0.5


@dataclass(frozen=True, slots=True)
class Credentials:
    """A client certificate and its key on disk; both None: no certificate (anonymous)."""

    cert: Path | None = None
    key: Path | None = None


ANONYMOUS = Credentials()


def _write(directory: Path, name: str, key: PrivateKey, cert_pem: bytes) -> Credentials:
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(key_to_pem(key))
    cert_path.write_bytes(cert_pem)
    return Credentials(cert_path, key_path)


def user_credentials(pki: ClusterPki, directory: Path, name: str, *groups: str) -> Credentials:
    """A user certificate from the cluster CA (``system:masters``: admin by default)."""
    key, cert = issue_user_cert(pki.ca_key, pki.ca_cert, name, groups or (MASTERS_GROUP,))
    return _write(directory, name, key, cert_to_pem(cert))


def viewer_credentials(pki: ClusterPki, directory: Path, name: str = "viewer") -> Credentials:
    return user_credentials(pki, directory, name, VIEWERS_GROUP)


def node_credentials(
    pki: ClusterPki,
    directory: Path,
    node: str,
    key: PrivateKey,
    *,
    server: bool = False,
    common_name: str | None = None,
) -> Credentials:
    """A node certificate for ``key`` (``CN=system:node:<node>``, ``O=system:nodes``), as the
    master issues at registration; ``server``: also good for serving (a node's API)."""
    cert = issue(
        pki.ca_key,
        pki.ca_cert,
        key.public_key(),
        common_name=common_name if common_name is not None else NODE_CN_PREFIX + node,
        groups=[NODES_GROUP],
        sans=[HOST] if server else (),
        lifetime_s=CERT_LIFETIME_S,
        client=True,
        server=server,
    )
    return _write(directory, f"node-{node}", key, cert_to_pem(cert))


@dataclass(frozen=True, slots=True)
class TlsSet:
    """The master's serving context and client contexts by (identity, protocol) for the
    identities ``admin``, ``viewer``, ``node`` (node ``n1`` with the given key) and
    ``anonymous`` (no certificate)."""

    master: ssl.SSLContext
    clients: Mapping[tuple[str, str], ssl.SSLContext]

    def client(self, who: str, protocol: str) -> ssl.SSLContext:
        return self.clients[who, protocol]


def tls_set(pki: ClusterPki, directory: Path, node_key: PrivateKey) -> TlsSet:
    """Blocking (writes and reads files): from a sync fixture."""
    who = {
        "admin": user_credentials(pki, directory, "admin"),
        "viewer": viewer_credentials(pki, directory),
        "node": node_credentials(pki, directory, "n1", node_key),
        "anonymous": ANONYMOUS,
    }
    clients = {
        (name, protocol): client_tls(pki, creds, protocol)
        for name, creds in who.items()
        for protocol in PROTOCOLS
    }
    return TlsSet(master_tls(pki), clients)


def master_tls(pki: ClusterPki) -> ssl.SSLContext:
    """The master's serving context: client certificates optional, from the cluster CA."""
    return server_context(
        pki.serving_cert_path,
        pki.serving_key_path,
        client_ca_pems=[cert_to_pem(pki.ca_cert)],
        require_client_cert=False,
        alpn=(H2, H1),
    )


def client_tls(pki: ClusterPki, who: Credentials, protocol: str) -> ssl.SSLContext:
    return client_context(
        cert_to_pem(pki.ca_cert), cert_file=who.cert, key_file=who.key, alpn=(protocol,)
    )


@contextlib.asynccontextmanager
async def serve(
    edge: Edge, tls: ssl.SSLContext, connections: list[H2Connection] | None = None
) -> AsyncIterator[int]:
    """``edge`` on a loopback port (yielded) over both protocols, as node-master serves it;
    ``connections`` collects the HTTP/2 connections it accepts."""
    runner = web.AppRunner(
        edge.aiohttp_app(),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    await runner.setup()
    http1 = runner.server
    assert http1 is not None
    make_h2 = serve_factory(edge.serve_h2, name="test-master")

    def h2() -> H2Connection:
        conn: H2Connection = make_h2()
        if connections is not None:
            connections.append(conn)
        return conn

    server = await asyncio.get_running_loop().create_server(
        lambda: AlpnSwitch(h2, http1), HOST, 0, ssl=tls
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for conn in connections or ():
            await conn.shutdown("test over", grace_s=SHUTDOWN_GRACE_S)
        await runner.cleanup()
        await server.wait_closed()


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The error body's ``error`` object (``{"code", "message", "details"}``)."""
        error: dict[str, Any] = self.json()["error"]
        assert error["code"] == self.status
        return error


def _encode(body: object) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return json.dumps(body).encode()


@dataclass
class Client:
    """One client of the served API over one protocol with one identity."""

    protocol: str
    port: int
    tls: ssl.SSLContext
    _session: aiohttp.ClientSession | None = None
    _conn: H2Connection | None = None
    _opened: list[Any] = field(default_factory=list)

    async def _h2(self) -> H2Connection:
        if self._conn is None or self._conn.closed.done():
            self._conn = await connect(HOST, self.port, self.tls, name="test-client")
        return self._conn

    def _h1(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                f"https://{HOST}:{self.port}", connector=aiohttp.TCPConnector(ssl=self.tls)
            )
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request, its whole answer; ``body``: bytes as they are, else JSON. A body goes
        as ``application/json`` (what the API reads) unless ``headers`` name another type."""
        data = _encode(body)
        extra = dict(headers or {})
        if data and not any(k.lower() == "content-type" for k in extra):
            extra["content-type"] = "application/json"
        if self.protocol == H1:
            async with self._h1().request(method, path, data=data, headers=extra) as resp:
                raw = await resp.read()
                return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, raw)
        stream = await self.request_h2(method, path, data, extra)
        raw = await stream.read_all(READ_LIMIT_BYTES)
        return Reply(stream.status, _h2_headers(await stream.response()), raw)

    async def open_h2(
        self, method: str, path: str, *, end_stream: bool = False, **headers: str
    ) -> H2Stream:
        """An HTTP/2 request stream, its body left to the caller (exec, port-forward)."""
        conn = await self._h2()
        return await conn.request(method, path, list(headers.items()), end_stream=end_stream)

    async def request_h2(
        self, method: str, path: str, data: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> H2Stream:
        stream = await self.open_h2(method, path, end_stream=not data, **(headers or {}))
        if data:
            await stream.write(data)
            await stream.end()
        await stream.response()
        return stream

    async def watch(self, path: str) -> Watch:
        """A streamed response read line by line (the pod watch's NDJSON)."""
        if self.protocol == H1:
            resp = await self._h1().get(path)
            self._opened.append(resp)
            headers = {k.lower(): v for k, v in resp.headers.items()}
            return Watch(resp.status, headers, _h1_lines(resp), resp.close)
        stream = await self.request_h2("GET", path)
        headers = _h2_headers(await stream.response())
        return Watch(stream.status, headers, _h2_lines(stream), stream.reset)

    async def close(self) -> None:
        for resp in self._opened:
            resp.close()
        if self._session is not None:
            await self._session.close()
        if self._conn is not None:
            await self._conn.shutdown("test over", grace_s=0.5)


def _h2_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers if not k.startswith(":")}


async def _h1_lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    while line := await resp.content.readline():
        yield line


async def _h2_lines(stream: H2Stream) -> AsyncIterator[bytes]:
    pending = b""
    while chunk := await stream.read():
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line + b"\n"
    if pending:
        yield pending


@dataclass
class Watch:
    status: int
    headers: Mapping[str, str]
    lines: AsyncIterator[bytes]
    stop: Any  # closes the response (the client going away)

    async def next(self) -> dict[str, Any]:
        """The next event; fails if the stream ends first."""
        line = await anext(self.lines)
        event: dict[str, Any] = json.loads(line)
        return event

    async def rest(self) -> bytes:
        """Everything until the server ends the response."""
        return b"".join([line async for line in self.lines])
