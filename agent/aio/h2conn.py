"""The asyncio driver of ``agent.proto.h2mux``: one protocol object per HTTP/2 connection, used
by the node's streaming server, the master's proxy and nodectl alike.

What it adds to the sans-IO multiplexer: the transport (TLS with ALPN ``h2``, TCP_NODELAY,
write back-pressure through ``pause_writing``/``resume_writing``), per-stream read and write
with awaitables, handler tasks for incoming requests, PING keepalive (an unanswered PING closes
the connection), preface, idle and zero-window timeouts, and graceful GOAWAY on shutdown.

Credit is returned on consumption: ``H2Stream.read()`` acknowledges the previous chunk when it
is called again, that is after the caller finished writing it wherever it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import h2.errors

from agent.aio import hops
from agent.aio.logfields import kv  # not agent.aio.logs: nodectl imports this module
from agent.errors import (
    ConnectionClosedError,
    ProtocolViolation,
    StreamingError,
    StreamResetError,
)
from agent.proto import h2mux
from agent.proto.h2mux import CLIENT_LIMITS, Headers, Limits, StreamMux

log = logging.getLogger(__name__)

PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
PREFACE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 300.0
STALL_TIMEOUT_S = 60.0
HANDSHAKE_TIMEOUT_S = 10.0
TICK_S = 1.0
SHUTDOWN_GRACE_S = 5.0

Handler = Callable[["H2Stream"], Awaitable[None]]


class StreamSink(Protocol):
    """Takes a stream's inbound data in the connection's read callback, as it arrives, instead
    of a task awaiting ``read()`` (``agent/aio/splice.py``): one loop iteration and two task
    switches less per message on an interactive path. The sink returns the credit with
    ``H2Stream.ack`` once it has passed the data on."""

    def stream_data(self, data: bytes, length: int) -> None: ...

    def stream_ended(self) -> None: ...

    def stream_failed(self, error: Exception) -> None: ...


@dataclass(frozen=True, slots=True)
class Timeouts:
    ping_interval_s: float = PING_INTERVAL_S
    ping_timeout_s: float = PING_TIMEOUT_S
    preface_s: float = PREFACE_TIMEOUT_S
    idle_s: float = IDLE_TIMEOUT_S
    stall_s: float = STALL_TIMEOUT_S
    tick_s: float = TICK_S


class H2Stream:
    """One request/response exchange; both directions can stream and half-close."""

    def __init__(self, conn: H2Connection, stream_id: int, headers: Headers) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self._inbox: deque[tuple[bytes, int]] = deque()
        self._arrived = asyncio.Event()
        self._remote_ended = False
        self._error: Exception | None = None
        self._to_ack = 0
        self._writable = asyncio.Event()
        self._writable.set()
        self._response: asyncio.Future[Headers] = conn.loop.create_future()
        self.trailers: Headers | None = None
        self.local_ended = False
        self.responded = False  # server side: response headers sent (no error response now)
        self._sink: StreamSink | None = None
        self._on_writable: Callable[[], None] | None = None

    # -- headers -------------------------------------------------------------------------

    def header(self, name: str) -> str | None:
        return h2mux.header(self.headers, name)

    @property
    def path(self) -> str:
        return self.header(":path") or ""

    @property
    def method(self) -> str:
        return self.header(":method") or ""

    async def respond(
        self, status: int, headers: Iterable[tuple[str, str]] = (), *, end: bool = False
    ) -> None:
        self.conn.send_headers(self.id, ((":status", str(status)), *headers), end_stream=end)
        self.responded = True
        if end:
            self.local_ended = True

    async def respond_json(self, status: int, body: object) -> None:
        """A whole JSON response (headers, body, end of stream)."""
        await self.respond(status, [("content-type", "application/json")])
        await self.write(json.dumps(body).encode())
        await self.end()

    async def respond_error(self, status: int, message: str) -> None:
        """The project's error body; a stream that already answered is reset instead (its
        response cannot change now), one that failed or ended is left alone."""
        if self.local_ended or self.failed:
            return
        if self.responded:
            self.reset()
            return
        with contextlib.suppress(StreamingError):
            await self.respond_json(
                status, {"error": {"code": status, "message": message, "details": {}}}
            )

    async def response(self) -> Headers:
        """Client side: the response headers."""
        return await self._response

    @property
    def status(self) -> int:
        """Client side, once ``response()`` returned."""
        return int(h2mux.header(self._response.result(), ":status") or 0)

    # -- data ----------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The next chunk of the body; ``b""`` once the peer ended the stream."""
        if self._to_ack:
            self.conn.consumed(self.id, self._to_ack)
            self._to_ack = 0
        while not self._inbox:
            if self._error is not None:
                raise self._error
            if self._remote_ended:
                return b""
            self._arrived.clear()
            await self._arrived.wait()
        data, length = self._inbox.popleft()
        self._to_ack = length
        return data

    async def read_all(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while chunk := await self.read():
            total += len(chunk)
            if total > limit:
                raise ProtocolViolation(f"body larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def write(self, data: bytes) -> None:
        """Queue ``data``; returns once the stream's buffer and the transport accept more."""
        if self._error is not None:
            raise self._error
        if not self.conn.send_data(self.id, data):
            self._writable.clear()
        # Both must hold: the stream's buffer drained (StreamWritable) and the transport
        # accepts more (resume_writing). A failure sets both, so neither wait can hang.
        while not self._writable.is_set() or not self.conn.can_write.is_set():
            if self._error is not None:
                raise self._error
            await self._writable.wait()
            await self.conn.can_write.wait()
        if self._error is not None:  # reset while we waited: this data was dropped
            raise self._error

    # -- callbacks instead of tasks (agent/aio/splice.py) -----------------------------------

    def attach(self, sink: StreamSink) -> None:
        """From now on, inbound data goes to ``sink`` as it arrives (what is queued first)."""
        if self._to_ack:
            self.conn.consumed(self.id, self._to_ack)
            self._to_ack = 0
        self._sink = sink
        while self._inbox:
            sink.stream_data(*self._inbox.popleft())
        if self._error is not None:
            sink.stream_failed(self._error)
        elif self._remote_ended:
            sink.stream_ended()

    def ack(self, length: int) -> None:
        """A sink passed on data of this flow-controlled length: return the credit."""
        if length:
            self.conn.consumed(self.id, length)

    def write_nowait(self, data: bytes) -> bool:
        """Queue ``data`` from a callback; False when the writer should pause until the
        ``on_writable`` callback (the stream's buffer or the transport is full)."""
        if self._error is not None:
            raise self._error
        if not self.conn.send_data(self.id, data):
            self._writable.clear()
        return self.writable

    @property
    def writable(self) -> bool:
        return self._writable.is_set() and self.conn.can_write.is_set()

    def on_writable(self, callback: Callable[[], None]) -> None:
        """``callback`` runs whenever the stream may take more after ``write_nowait`` said no."""
        self._on_writable = callback

    def _notify_writable(self) -> None:
        if self._on_writable is not None and self.writable and self._error is None:
            self._on_writable()

    async def end(self, trailers: Iterable[tuple[str, str]] | None = None) -> None:
        """Half-close our side after everything written (HTTP/2 END_STREAM)."""
        self.end_nowait(trailers)

    def end_nowait(self, trailers: Iterable[tuple[str, str]] | None = None) -> None:
        """``end`` from a callback."""
        if not self.local_ended:
            self.local_ended = True
            self.conn.end_stream(self.id, tuple(trailers) if trailers is not None else None)

    def reset(self, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(self.id, error_code)
        self._fail(StreamResetError(self.id, error_code, remote=False))

    @property
    def remote_ended(self) -> bool:
        return self._remote_ended and not self._inbox

    @property
    def failed(self) -> bool:
        return self._error is not None

    # -- from the connection -------------------------------------------------------------

    def _data(self, data: bytes, length: int) -> None:
        if self._sink is not None:
            self._sink.stream_data(data, length)
            return
        self._inbox.append((data, length))
        self._arrived.set()

    def _ended(self) -> None:
        self._remote_ended = True
        self._arrived.set()
        if self._sink is not None:
            self._sink.stream_ended()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
            if self._sink is not None:
                self._sink.stream_failed(error)
        if not self._response.done():
            self._response.set_exception(error)
            self._response.exception()  # retrieved: a stream nobody awaits is not an error
        self._arrived.set()
        self._writable.set()


class H2Connection(asyncio.Protocol):
    def __init__(
        self,
        *,
        client_side: bool,
        handler: Handler | None = None,
        limits: Limits | None = None,
        name: str = "h2",
        timeouts: Timeouts | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeouts = timeouts or Timeouts()
        self.mux = StreamMux(client_side=client_side, limits=limits)
        self.client_side = client_side
        self.name = name
        self._handler = handler
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.closed = self.loop.create_future()
        self._last_activity = time.monotonic()
        self._received_any = False
        self._goaway_sent = False  # by shutdown(): the peer's frames in flight are expected
        self._ping_sent_at: float | None = None
        self._idle_since: float | None = time.monotonic()
        self._no_streams = asyncio.Event()
        self._no_streams.set()
        self._ticker: asyncio.Task[None] | None = None
        self.peer_cert_der: bytes | None = None
        # The verified peer's subject commonName, from ssl's own parse: a client that only
        # needs the name (nodectl --direct) does not pay cryptography's import for it.
        self.peer_common_name = ""
        self.peer_address: str = ""
        self._hop_side = hops.Side.CLIENT if client_side else hops.Side.SERVER

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.peer_cert_der = ssl_object.getpeercert(binary_form=True)
            self.peer_common_name = _common_name(ssl_object.getpeercert() or {})
        peer = transport.get_extra_info("peername")
        self.peer_address = str(peer[0]) if peer else ""
        self.mux.initiate()
        self._flush()
        self._ticker = self.loop.create_task(self._tick())

    def data_received(self, data: bytes) -> None:
        if hops.RECORDER is not None:
            hops.RECORDER.mark(hops.Point.TLS_READ, self._hop_side, len(data))
        self._last_activity = time.monotonic()
        self._received_any = True
        self._ping_sent_at = None  # any traffic proves the peer is alive
        try:
            events = self.mux.receive_data(data, self._last_activity)
        except ProtocolViolation as exc:
            # After our own GOAWAY, h2 refuses every frame, also the DATA the peer sent before
            # it read the GOAWAY (an exec whose reader went away, ``| head``): our close, no
            # violation to report on a user's terminal.
            level = logging.DEBUG if self._goaway_sent else logging.WARNING
            log.log(
                level,
                "HTTP/2 connection ended: protocol violation",
                extra=kv(conn=self.name, peer=self.peer_address, error=str(exc)),
            )
            self._abort(ConnectionClosedError(str(exc)))
            return
        for event in events:
            self._dispatch(event)
        self._flush()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()
        for stream in list(self.streams.values()):
            stream._notify_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionClosedError(f"connection closed: {exc or 'by peer'}")
        for stream in list(self.streams.values()):
            stream._fail(error)
        self.streams.clear()
        self.can_write.set()
        if self._ticker is not None:
            self._ticker.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    # -- events --------------------------------------------------------------------------

    def _dispatch(self, event: h2mux.Event) -> None:
        if type(event) is h2mux.DataReceived:  # the interactive path's event: tested first
            target = self.streams.get(event.stream_id)
            if target is not None:
                target._data(event.data, event.flow_controlled_length)
            else:
                self.mux.consumed(event.stream_id, event.flow_controlled_length)
            return
        if isinstance(event, h2mux.RequestReceived):
            stream = H2Stream(self, event.stream_id, event.headers)
            self.streams[event.stream_id] = stream
            self._idle_since = None
            self._no_streams.clear()
            if self._handler is not None:
                task = self.loop.create_task(self._serve(stream))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        stream_id = getattr(event, "stream_id", None)
        target = self.streams.get(stream_id) if stream_id is not None else None
        self._deliver(event, target)

    def _deliver(self, event: h2mux.Event, stream: H2Stream | None) -> None:
        if isinstance(event, h2mux.ResponseReceived) and stream is not None:
            if not stream._response.done():
                stream._response.set_result(event.headers)
        elif isinstance(event, h2mux.TrailersReceived) and stream is not None:
            stream.trailers = event.headers
        elif isinstance(event, h2mux.StreamEnded) and stream is not None:
            stream._ended()
            self._maybe_forget(stream)
        elif isinstance(event, h2mux.StreamReset) and stream is not None:
            stream._fail(StreamResetError(event.stream_id, event.error_code, event.remote))
            self._forget(stream.id)
        elif isinstance(event, h2mux.StreamWritable) and stream is not None:
            stream._writable.set()
            stream._notify_writable()
        elif isinstance(event, h2mux.PingAcknowledged):
            self._ping_sent_at = None
        elif isinstance(event, h2mux.ConnectionEnded):
            # GOAWAY: streams above last_stream_id were never processed; the others finish.
            last = event.last_stream_id or 0
            for sid, other in list(self.streams.items()):
                if sid > last or event.error_code:
                    other._fail(ConnectionClosedError(f"GOAWAY (error code {event.error_code})"))
                    self._forget(sid)

    async def _serve(self, stream: H2Stream) -> None:
        assert self._handler is not None
        try:
            await self._handler(stream)
        except (StreamResetError, ConnectionClosedError):
            pass
        except Exception as exc:
            log.exception(
                "stream handler failed", extra=kv(conn=self.name, path=stream.path, error=str(exc))
            )
            stream.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            if not stream.local_ended and not stream.failed:
                await stream.end()
        finally:
            self._maybe_forget(stream)
            self._flush()

    def _maybe_forget(self, stream: H2Stream) -> None:
        if stream.local_ended and stream._remote_ended:
            self._forget(stream.id)

    def _forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        if not self.streams:
            self._idle_since = time.monotonic()
            self._no_streams.set()

    # -- sending -------------------------------------------------------------------------

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        pieces = self.mux.pending_output()
        if pieces:
            if hops.RECORDER is not None:  # before: the peer may read it before we return
                hops.RECORDER.mark(hops.Point.TLS_WRITE, self._hop_side, sum(map(len, pieces)))
            self.transport.writelines(pieces)
        try:
            self.mux.check_unsent(self.transport.get_write_buffer_size())
        except ProtocolViolation as exc:
            log.warning(
                "HTTP/2 connection ended: peer does not read",
                extra=kv(conn=self.name, peer=self.peer_address, error=str(exc)),
            )
            self._abort(ConnectionClosedError(str(exc)))

    def send_headers(self, stream_id: int, headers: Headers, *, end_stream: bool) -> None:
        self.mux.send_headers(stream_id, headers, end_stream=end_stream)
        self._flush()

    def send_data(self, stream_id: int, data: bytes) -> bool:
        ok = self.mux.send_data(stream_id, data, time.monotonic())
        self._flush()
        return ok

    def end_stream(self, stream_id: int, trailers: Headers | None) -> None:
        self.mux.end_stream(stream_id, time.monotonic(), trailers)
        self._flush()
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._maybe_forget(stream)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        self.mux.reset_stream(stream_id, error_code)
        self._forget(stream_id)
        self._flush()

    def consumed(self, stream_id: int, nbytes: int) -> None:
        self.mux.consumed(stream_id, nbytes)
        self._flush()

    # -- client side ---------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        authority: str = "",
        end_stream: bool = False,
        scheme: str = "https",
    ) -> H2Stream:
        if self.closed.done():
            raise ConnectionClosedError("connection closed")
        request_headers: Headers = (
            (":method", method),
            (":scheme", scheme),
            (":authority", authority or "node"),
            (":path", path),
            *headers,
        )
        try:
            stream_id = self.mux.open_stream(request_headers, end_stream=end_stream)
        except ProtocolViolation as exc:
            raise ConnectionClosedError(str(exc)) from exc
        stream = H2Stream(self, stream_id, request_headers)
        stream.local_ended = end_stream
        self.streams[stream_id] = stream
        self._idle_since = None
        self._no_streams.clear()
        self._flush()
        return stream

    # -- timers and shutdown -------------------------------------------------------------

    async def _tick(self) -> None:
        started = time.monotonic()
        while True:
            t = self.timeouts
            await asyncio.sleep(t.tick_s)
            now = time.monotonic()
            if not self.client_side and not self._received_any:
                if now - started > t.preface_s:
                    self._abort(ConnectionClosedError("no HTTP/2 preface in time"))
                    return
                continue
            if self._ping_sent_at is not None and now - self._ping_sent_at > t.ping_timeout_s:
                log.warning("HTTP/2 peer did not answer PING", extra=kv(conn=self.name))
                self._abort(ConnectionClosedError("keepalive PING unanswered"))
                return
            if self._ping_sent_at is None and now - self._last_activity > t.ping_interval_s:
                self._ping_sent_at = now
                self.mux.ping(os.urandom(8))
                self._flush()
            if (
                not self.client_side
                and self._idle_since is not None
                and now - self._idle_since > t.idle_s
            ):
                await self.shutdown("idle")
                return
            for stream_id in self.mux.stream_ids():
                since = self.mux.stalled_since(stream_id)
                if since is not None and now - since > t.stall_s:
                    stream = self.streams.get(stream_id)
                    log.warning(
                        "HTTP/2 stream stalled on a zero window; reset",
                        extra=kv(conn=self.name, stream=stream_id),
                    )
                    if stream is not None:
                        stream.reset(h2.errors.ErrorCodes.CANCEL)
                    else:
                        self.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)

    async def shutdown(self, reason: str = "shutdown", grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """GOAWAY, let running streams finish for ``grace_s``, then close."""
        if self.transport is None or self.closed.done():
            return
        self._goaway_sent = True
        self.mux.close(0, reason)
        self._flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_streams.wait(), grace_s)
        for task in list(self._tasks):
            task.cancel()
        self.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), grace_s)

    def _abort(self, error: Exception) -> None:
        for stream in list(self.streams.values()):
            stream._fail(error)
        if self.transport is not None:
            with contextlib.suppress(Exception):
                data = self.mux.data_to_send()  # GOAWAY, if one was queued
                if data:
                    self.transport.write(data)
            self.transport.close()
        for task in list(self._tasks):
            task.cancel()


class AlpnSwitch(asyncio.Protocol):
    """Serves HTTP/2 and HTTP/1.1 on one TLS port: after the handshake, hands the transport to
    the protocol the client chose with ALPN (docs/architecture.md §1: the node API speaks both)."""

    def __init__(
        self,
        h2_factory: Callable[[], asyncio.Protocol],
        http1_factory: Callable[[], asyncio.BaseProtocol],
    ) -> None:
        self._h2_factory = h2_factory
        self._http1_factory = http1_factory

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        inner = self._h2_factory() if chosen == "h2" else self._http1_factory()
        transport.set_protocol(inner)
        inner.connection_made(transport)


async def connect(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    server_hostname: str | None = None,
    limits: Limits | None = None,
    name: str = "h2-client",
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> H2Connection:
    """An HTTP/2 client connection over TLS (ALPN ``h2`` required)."""
    loop = asyncio.get_running_loop()
    ssl_context.set_alpn_protocols(["h2"])
    try:
        transport, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: H2Connection(client_side=True, limits=limits or CLIENT_LIMITS, name=name),
                host,
                port,
                ssl=ssl_context,
                server_hostname=server_hostname if server_hostname is not None else host,
                ssl_handshake_timeout=timeout_s,
            ),
            timeout_s,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise ConnectionClosedError(f"cannot connect to {host}:{port}: {exc}") from exc
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
        transport.close()
        raise ConnectionClosedError(f"{host}:{port} does not speak HTTP/2 (ALPN)")
    assert isinstance(protocol, H2Connection)
    return protocol


def serve_factory(
    handler: Handler,
    *,
    limits: Limits | None = None,
    name: str,
    timeouts: Timeouts | None = None,
) -> Any:
    """A protocol factory for ``loop.create_server`` that serves HTTP/2 with ``handler``."""

    def make() -> H2Connection:
        return H2Connection(
            client_side=False, handler=handler, limits=limits, name=name, timeouts=timeouts
        )

    return make


def _common_name(peer: dict[str, Any]) -> str:
    """The subject's commonName in ssl's parsed form (empty unless the chain was verified)."""
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""
