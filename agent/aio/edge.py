"""The HTTP edge of the master's API and of the node's API: one set of framework-neutral
handlers, served over HTTP/1.1 (aiohttp) and HTTP/2 (``agent.aio.h2conn``) by two thin
front-ends, so that a request gets the same answer whichever protocol the client negotiated.

Every request goes through the same steps, in this order, on both protocols: the route
(``agent.proto.routes``: 404, 405 with ``Allow``, 400 for a bad path parameter); the caller
(its certificate mapped to a principal by the API's ``Gate``, then to its column of the
authorization table); the decision (``agent.proto.authz``: 401, 403); the protocol (a stream
route over HTTP/1.1: 426, it needs HTTP/2); the body (at most ``MAX_BODY_BYTES``, else 413);
its type (a JSON route reads ``application/json`` only, else 415: :mod:`agent.proto.jsonbody`);
then the handler, which decodes a JSON body through ``ApiRequest.json`` (nesting bounded, else
400). A JSON handler takes an ``ApiRequest`` and returns an ``ApiResponse`` (a
whole body, or chunks from an async iterator for the pod watch); a stream handler gets the
HTTP/2 stream itself. Errors are ``{"error": {"code", "message", "details"}}`` on both.

``EdgeListener`` serves an edge on one TLS port, the protocol chosen per connection by ALPN,
and stops it in order (no new connections, GOAWAY to HTTP/2 clients, a grace, then close):
the master's API and the node's API are each one of these.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from aiohttp import web

from agent.aio.h2conn import (
    HANDSHAKE_TIMEOUT_S,
    AlpnSwitch,
    H2Connection,
    H2Stream,
    serve_factory,
)
from agent.aio.logs import kv
from agent.errors import (
    AgentError,
    ConnectionClosedError,
    ForbiddenError,
    InternalError,
    ManifestError,
    MethodNotAllowedError,
    NeedsHttp2Error,
    PayloadTooLargeError,
    RuntimeUnavailableError,
    StreamingError,
    TooManyRequestsError,
    UnauthenticatedError,
)
from agent.proto.authz import (
    Caller,
    Decision,
    Principal,
    Role,
    caller_of,
    decide,
    needs_subject,
    refusal,
)
from agent.proto.jsonbody import JSON_MEDIA_TYPE, check_content_type, decode_object
from agent.proto.routes import RouteMatch, RouteTable, Subject
from agent.proto.tickets import check_request

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
JSON_TYPE = JSON_MEDIA_TYPE
# 426 must name a protocol to upgrade to (RFC 9110 §15.5.22); the client reconnects with ALPN
# h2 over TLS (HTTP/2 has no in-band upgrade over TLS, RFC 9113 §3.1).
_UPGRADE = ("upgrade", "HTTP/2.0")
ALPN_PROTOCOLS = ("h2", "http/1.1")  # preferred first
DEFAULT_BACKLOG = 100  # asyncio's own default
SHUTDOWN_GRACE_S = 2.0


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One authorized request, whichever protocol carried it."""

    match: RouteMatch
    caller: Caller
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    peer_ip: str = ""

    @property
    def principal(self) -> Principal:
        return self.caller.principal

    def param(self, name: str) -> str:
        return self.match.param(name)

    def query(self, name: str, default: str | None = None) -> str | None:
        return self.match.query_value(name, default)

    def json(self, *, optional: bool = False) -> dict[str, Any]:
        """The body as a JSON object (:func:`agent.proto.jsonbody.decode_object`: nested at
        most ``MAX_JSON_DEPTH`` deep, else 400; the edge checked its type before the handler
        ran); ``optional``: an empty body is ``{}``."""
        if optional and not self.body:
            return {}
        return decode_object(self.body)


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    stream: AsyncIterator[bytes] | None = None  # the body, chunk by chunk, instead of ``body``


JsonHandler = Callable[[ApiRequest], Awaitable[ApiResponse]]
StreamHandler = Callable[[H2Stream, ApiRequest], Awaitable[None]]


def json_response(obj: object, status: int = 200) -> ApiResponse:
    return ApiResponse(status, json.dumps(obj).encode())


def text_response(text: str, content_type: str = "text/plain; charset=utf-8") -> ApiResponse:
    return ApiResponse(200, text.encode(), content_type)


def error_body(status: int, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "details": details or {}}}


def error_response(exc: AgentError) -> ApiResponse:
    details: dict[str, Any] = {}
    if isinstance(exc, ManifestError):
        # Every error of the document, as Kubernetes' Status.details.causes.
        causes = [{"field": field, "message": problem} for field, problem in exc.causes]
        details = {"field": exc.field, "causes": causes}
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, MethodNotAllowedError):
        headers = (("allow", ", ".join(exc.allow)),)
    elif isinstance(exc, NeedsHttp2Error):
        headers = (_UPGRADE,)
    elif isinstance(exc, TooManyRequestsError):
        headers = (("retry-after", str(exc.retry_after_s)),)
    body = json.dumps(error_body(exc.http_status, str(exc), details)).encode()
    return ApiResponse(exc.http_status, body, headers=headers)


class Gate(Protocol):
    """What the edge asks the API it serves about callers."""

    def principal(self, peer_der: bytes | None, headers: Mapping[str, str]) -> Principal:
        """Who the peer's certificate (DER, or None) says it is."""
        ...

    def is_current(self, principal: Principal) -> bool:
        """Whether a node's record accepts the key it presented."""
        ...

    async def pod_node(self, namespace: str, pod: str) -> str | None:
        """The node the pod is bound to (None: unbound); NotFoundError when there is none."""
        ...


async def _bounded(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"request body larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _h2_chunks(stream: H2Stream) -> AsyncIterator[bytes]:
    while chunk := await stream.read():
        yield chunk


class Edge:
    """Serves one API's route table: ``handlers`` by JSON route name, ``streams`` for the
    stream routes (HTTP/2 only; None: they answer 503). ``owner``: the node whose API this is
    (None for the master), for messages and for ``Subject.API``."""

    def __init__(
        self,
        table: RouteTable,
        handlers: Mapping[str, JsonHandler],
        *,
        gate: Gate,
        streams: StreamHandler | None = None,
        owner: str | None = None,
    ) -> None:
        self.table = table
        self.handlers = handlers
        self.gate = gate
        self.streams = streams
        self.owner = owner

    # -- the steps every request goes through ------------------------------------------------

    async def _caller(self, match: RouteMatch, principal: Principal) -> Caller:
        route = match.route
        if principal.role is not Role.NODE or not needs_subject(route.name):
            return caller_of(principal, None, current=False)
        node: str | None
        if route.subject is Subject.PATH:
            node = match.param("node")
        elif route.subject is Subject.CALLER:
            node = principal.node
        elif route.subject is Subject.API:
            node = self.owner
        else:  # Subject.POD (NONE never needs a subject: tests/unit/proto/test_authz.py)
            node = await self.gate.pod_node(match.param("namespace"), match.param("pod"))
        return caller_of(principal, node, self.gate.is_current(principal))

    async def _admit(
        self,
        method: str,
        target: str,
        peer_der: bytes | None,
        headers: Mapping[str, str],
        peer_ip: str,
        *,
        http2: bool,
    ) -> ApiRequest:
        match = self.table.match(method, target)
        principal = self.gate.principal(peer_der, headers)
        if principal.ticket is not None:  # a master's ticket: for its one request only
            check_request(principal.ticket, match, self.owner)
        caller = await self._caller(match, principal)
        decision = decide(match.route.name, caller.kind)
        if decision is Decision.UNAUTHENTICATED:
            raise UnauthenticatedError(refusal(match, caller, self.owner))
        if decision is Decision.FORBIDDEN:
            raise ForbiddenError(refusal(match, caller, self.owner))
        if match.route.stream and not http2:
            raise NeedsHttp2Error(
                f"{method} {match.path} streams over HTTP/2: connect with ALPN h2 "
                f"(nodectl does), not HTTP/1.1"
            )
        return ApiRequest(match, caller, headers, b"", peer_ip)

    async def _handle(self, admitted: ApiRequest, body: bytes) -> ApiResponse:
        """The handler of a JSON route, given its body (any body: JSON, or 415)."""
        if body:
            check_content_type(admitted.headers.get("content-type"))
        request = replace(admitted, body=body)
        return await self.handlers[request.match.route.name](request)

    # -- HTTP/1.1 (aiohttp) ------------------------------------------------------------------

    def aiohttp_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        # Every path, a decoded newline included (``.`` would not match one, and aiohttp would
        # answer its own plain-text 404): the route table is ours to apply.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._serve_http1)
        return app

    async def _serve_http1(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        der = (
            ssl_object.getpeercert(binary_form=True)
            if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket)
            else None
        )
        peer = transport.get_extra_info("peername") if transport else None
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            admitted = await self._admit(
                request.method,
                request.raw_path,
                der,
                headers,
                str(peer[0]) if peer else "",
                http2=False,
            )
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                raise PayloadTooLargeError(f"request body larger than {MAX_BODY_BYTES} bytes")
            try:
                body = await _bounded(request.content.iter_any(), MAX_BODY_BYTES)
            except ConnectionResetError as exc:  # the client went away mid-body: not a bug
                raise ConnectionClosedError(f"request body cut off: {exc}") from exc
            response = await self._handle(admitted, body)
        except Exception as exc:
            response = error_response(_ours(request.method, request.path, exc))
        headers_out = {"Content-Type": response.content_type, **dict(response.headers)}
        if response.stream is None:
            return web.Response(status=response.status, body=response.body, headers=headers_out)
        out = web.StreamResponse(status=response.status, headers=headers_out)
        try:
            await out.prepare(request)  # inside: a client gone by now still closes the stream
            async for chunk in response.stream:
                await out.write(chunk)
        except ConnectionResetError:
            # The client went away (a node restarting, a partition healed onto a new
            # connection): a watch resumes from the resource version it saw last.
            log.info("stream response ended by the client", extra=kv(path=request.path))
        except AgentError as exc:
            _ended_early(request.path, exc)
        finally:
            await _close(response.stream)
        return out

    # -- HTTP/2 (agent.aio.h2conn) -----------------------------------------------------------

    async def serve_h2(self, stream: H2Stream) -> None:
        """The ``serve_factory`` handler."""
        headers = {k: v for k, v in stream.headers if not k.startswith(":")}
        try:
            admitted = await self._admit(
                stream.method,
                stream.path,
                stream.conn.peer_cert_der,
                headers,
                stream.conn.peer_address,
                http2=True,
            )
            if admitted.match.route.stream:
                if self.streams is None:
                    raise RuntimeUnavailableError("this node serves no streams (no runtime)")
                await self.streams(stream, admitted)
                return
            body = await _bounded(_h2_chunks(stream), MAX_BODY_BYTES)
            response = await self._handle(admitted, body)
        except Exception as exc:
            error = _ours(stream.method, stream.path, exc)
            if stream.responded or stream.local_ended or stream.failed:
                await stream.respond_error(error.http_status, str(error))  # resets if it must
                return
            response = error_response(error)
        try:
            await stream.respond(
                response.status, [("content-type", response.content_type), *response.headers]
            )
        except BaseException:
            if response.stream is not None:  # never started: closed all the same (a watch's slot)
                await _close(response.stream)
            raise
        if response.stream is None:
            if response.body:
                await stream.write(response.body)
        else:
            try:
                async for chunk in response.stream:
                    await stream.write(chunk)
            except StreamingError:
                raise  # this stream is gone (reset, connection closed): nothing to end
            except AgentError as exc:
                _ended_early(stream.path, exc)
            finally:
                await _close(response.stream)
        await stream.end()


def _ours(method: str, path: str, exc: Exception) -> AgentError:
    """The error to answer with: ours as it is; a foreign one is a bug in a handler, logged
    with its traceback and answered 500 with our error body (never the framework's page)."""
    if isinstance(exc, AgentError):
        return exc
    log.error("request handler failed", exc_info=exc, extra=kv(method=method, path=path))
    return InternalError(f"internal error handling {method} {path}: {type(exc).__name__}")


def _ended_early(path: str, exc: AgentError) -> None:
    """A streamed body failed after its headers were sent (the master stopping under a watch,
    its store gone): the response ends there and the client resumes, as after a disconnect."""
    log.info("stream response ended early", extra=kv(path=path, error=str(exc)))


async def _close(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


# -- the listener: one TLS port, both protocols -----------------------------------------------


class EdgeListener:
    """Serves an ``Edge`` on one TLS port: HTTP/1.1 (aiohttp) and HTTP/2 (``agent.aio.h2conn``)
    chosen per connection by ALPN (``AlpnSwitch``). ``backlog``: the listen queue (the kernel
    caps it at somaxconn). ``shutdown_grace_s``: what running requests get at ``stop()``
    before they are closed — HTTP/1.1 ones (aiohttp fixes it when the runner is built) and,
    unless ``stop()`` says otherwise, HTTP/2 connections after their GOAWAY."""

    def __init__(
        self,
        edge: Edge,
        tls: ssl.SSLContext,
        host: str,
        port: int,
        *,
        name: str,
        backlog: int = DEFAULT_BACKLOG,
        shutdown_grace_s: float = SHUTDOWN_GRACE_S,
    ) -> None:
        self.edge = edge
        self.tls = tls
        self._host = host
        self._port = port
        self._name = name
        self._backlog = backlog
        self._shutdown_grace_s = shutdown_grace_s
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        # Kept so stop() can send each one GOAWAY (aiohttp tracks its own connections).
        self._h2_connections: set[H2Connection] = set()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        """The port listened on (the kernel's pick when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def h2_connections(self) -> int:
        """How many HTTP/2 connections are open."""
        return len(self._h2_connections)

    async def start(self) -> None:
        # AlpnSwitch needs the client to be offered both (the context may come without ALPN).
        self.tls.set_alpn_protocols(list(ALPN_PROTOCOLS))
        runner = web.AppRunner(
            self.edge.aiohttp_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._shutdown_grace_s,
        )
        await runner.setup()
        http1 = runner.server
        assert http1 is not None  # set by setup()
        make_h2 = serve_factory(self.edge.serve_h2, name=self._name)

        def h2_connection() -> H2Connection:
            conn: H2Connection = make_h2()
            self._h2_connections.add(conn)
            conn.closed.add_done_callback(lambda _: self._h2_connections.discard(conn))
            return conn

        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: AlpnSwitch(h2_connection, http1),
                self._host,
                self._port,
                ssl=self.tls,
                reuse_address=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
                backlog=self._backlog,
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self, reason: str, *, h2_grace_s: float | None = None) -> None:
        """No new connections; GOAWAY (with ``reason``) to every HTTP/2 client, whose running
        streams get ``h2_grace_s`` (default: the listener's grace) while HTTP/1.1 requests get
        theirs, both at once; then everything left is closed. Safe to call when not started."""
        server, self._server = self._server, None
        runner, self._runner = self._runner, None
        if server is not None:
            server.close()
        grace_s = self._shutdown_grace_s if h2_grace_s is None else h2_grace_s
        await asyncio.gather(
            *(conn.shutdown(reason, grace_s=grace_s) for conn in list(self._h2_connections)),
            *([runner.cleanup()] if runner is not None else []),
        )
