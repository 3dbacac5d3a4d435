"""One HTTP/2 stream joined to one TCP socket, both directions in the loop's callbacks: a
port-forward's pod socket on the node, its local client's socket in ``nodectl``.

Why no tasks (issue 20; BENCHMARKS.md, "a 1-byte round trip hop by hop"): handing a message
from a socket's read callback to a task that then writes it on the other side cost 65-90 µs
per hand-off on this machine, more than a TLS crossing between two processes. Here a socket
read is queued on the stream (and framed and written to TLS) in the socket protocol's
``data_received``, and a stream's DATA is written to the socket in the HTTP/2 connection's
``data_received`` (:class:`agent.aio.h2conn.StreamSink`): one read and one write system call
per message per hop, no loop iteration in between. The socket stays registered with the loop
for the session (no reader added and removed per read, as ``loop.sock_recv`` does).

Flow control is unchanged end to end: the stream's credit is returned once its data went into
the socket's transport, or — when the transport paused writing — once it resumes; the socket
is read only while the stream takes more (``write_nowait`` / ``on_writable``), so a slow side
slows its own session only. Half-close both ways: the socket's EOF ends the stream; the
stream's end shuts the socket's write side; the socket closes once both happened, or at once
when either side fails (a reset stream, a reset socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from typing import cast

from agent.aio import hops
from agent.aio.h2conn import H2Stream
from agent.errors import StreamingError

READ_CHUNK_BYTES = 1 << 20  # as large as a frame: bulk costs each hop per read and per frame


@functools.cache
def _shared_read_buffer() -> memoryview:
    """One receive buffer for every splice of the process: a read is copied out of it in the
    same callback (``buffer_updated``), before the loop reads any other socket into it, so
    an idle connection holds no buffer (the loop's own would be 256 KiB reads)."""
    return memoryview(bytearray(READ_CHUNK_BYTES))


class SocketSplice(asyncio.BufferedProtocol):
    """The socket side's protocol. ``send_from_socket(stream)`` starts the socket → stream
    direction, ``deliver_to_socket()`` the stream → socket one (a client sends before the
    response; the response's body goes to the socket only once it is known to be 200);
    ``done`` resolves when the socket is closed."""

    def __init__(self, *, read_point: hops.Point, write_point: hops.Point) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.from_socket = 0  # bytes read from the socket (sent on the stream)
        self.to_socket = 0  # bytes written to the socket (received on the stream)
        self.error = ""
        self._read_point = read_point
        self._write_point = write_point
        self._transport: asyncio.Transport | None = None
        self._stream: H2Stream | None = None
        self._held = 0  # credit of data in a transport that paused writing
        self._write_paused = False
        self._read_paused = False
        self._socket_eof = False
        self._stream_ended = False
        # Read before there was a stream (see data_received); one read at most.
        self._early = b""

    # -- starting ------------------------------------------------------------------------

    def send_from_socket(self, stream: H2Stream) -> None:
        self._stream = stream
        stream.on_writable(self._resume_reading)
        early, self._early = self._early, b""
        if early:
            self._forward(early)
        if self._socket_eof and not stream.failed:  # the client half-closed already
            stream.end_nowait()
        self._resume_reading()

    def deliver_to_socket(self) -> None:
        assert self._stream is not None
        self._stream.attach(self)

    def close(self) -> None:
        """Ends the socket now if it is still open (a session cancelled or refused); the
        stream is reset unless it ended both ways."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()
        stream = self._stream
        if (
            stream is not None
            and not stream.failed
            and not (stream.local_ended and self._stream_ended)
        ):
            stream.reset()

    # -- the socket ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._stream is None or not self._stream.writable:
            self._pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _shared_read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_shared_read_buffer()[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if hops.RECORDER is not None:
            hops.RECORDER.mark(self._read_point, hops.Side.NONE, len(data))
        if self._stream is None:
            # uvloop starts reading an accepted socket after connection_made, whatever that
            # paused: an eager client's first bytes can come before the stream exists (nodectl
            # asking the master for a ticket first). Kept, and the socket paused for real.
            self._early += data
            if self._transport is not None:
                self._read_paused = True
                self._transport.pause_reading()
            return
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        assert self._stream is not None
        self.from_socket += len(data)
        try:
            more = self._stream.write_nowait(data)
        except StreamingError as exc:
            self._fail(str(exc))
            return
        if not more:
            self._pause_reading()

    def eof_received(self) -> bool:
        self._socket_eof = True
        if self._stream is not None and not self._stream.failed:
            self._stream.end_nowait()
        self._maybe_close()
        return True  # keep the write side: the stream may still deliver

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        held, self._held = self._held, 0
        if self._stream is not None:
            self._stream.ack(held)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.error:
            self.error = str(exc)
        stream = self._stream
        if (
            stream is not None
            and not stream.failed
            and not (stream.local_ended and self._stream_ended)
        ):
            stream.reset()  # the socket is gone: nothing more to deliver either way
        if not self.done.done():
            self.done.set_result(None)

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        transport = self._transport
        if (
            self._read_paused
            and transport is not None
            and not transport.is_closing()
            and not self._socket_eof
            and self._stream is not None
            and self._stream.writable
        ):
            self._read_paused = False
            transport.resume_reading()

    # -- the stream (agent.aio.h2conn.StreamSink) ----------------------------------------

    def stream_data(self, data: bytes, length: int) -> None:
        transport, stream = self._transport, self._stream
        assert transport is not None and stream is not None
        if transport.is_closing():
            stream.ack(length)  # dropped: the socket is going away
            return
        if hops.RECORDER is not None:
            hops.RECORDER.mark(self._write_point, hops.Side.NONE, len(data))
        transport.write(data)
        self.to_socket += len(data)
        if self._write_paused:
            self._held += length
        else:
            stream.ack(length)

    def stream_ended(self) -> None:
        self._stream_ended = True
        transport = self._transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
        self._maybe_close()

    def stream_failed(self, error: Exception) -> None:
        self._fail(str(error))

    # -- ending --------------------------------------------------------------------------

    def _maybe_close(self) -> None:
        if self._socket_eof and self._stream_ended and self._transport is not None:
            self._transport.close()

    def _fail(self, error: str) -> None:
        if not self.error:
            self.error = error
        if self._transport is not None:
            self._transport.abort()


class StreamRelay:
    """One stream's inbound data written to another stream in the read callback (the master's
    proxy: a user's stream and its node link's stream), for one direction. ``done`` resolves
    when the source ended (its end, with its trailers, passed on) or failed (the target is then
    reset: a session nobody feeds or reads must not stay open on the other side).

    Flow control end to end, as with a task per direction: the source's credit is returned
    once its data went into the target and the target takes more; otherwise it is held until
    the target's ``on_writable`` — so a slow reader on one side stalls its own stream only."""

    def __init__(self, source: H2Stream, target: H2Stream, *, trailers: bool) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: Exception | None = None
        self._source = source
        self._target = target
        self._trailers = trailers  # pass the source's trailers on (the node's answer only)
        self._held = 0

    def start(self) -> None:
        self._target.on_writable(self._release)
        self._source.attach(self)

    def _release(self) -> None:
        held, self._held = self._held, 0
        self._source.ack(held)

    def stream_data(self, data: bytes, length: int) -> None:
        if self.done.done():
            self._source.ack(length)  # the target failed: dropped
            return
        try:
            more = self._target.write_nowait(data)
        except StreamingError as exc:
            self._source.ack(length)
            self._finish(exc)
            if not self._source.failed:
                self._source.reset()
            return
        if more:
            self._source.ack(length)
        else:
            self._held += length

    def stream_ended(self) -> None:
        if not self.done.done():
            if not self._target.failed:
                self._target.end_nowait(self._source.trailers if self._trailers else None)
            self._finish(None)

    def stream_failed(self, error: Exception) -> None:
        if not self.done.done():
            if not self._target.failed:
                self._target.reset()
            self._finish(error)

    def _finish(self, error: Exception | None) -> None:
        self.error = error
        self.done.set_result(None)
