"""Abuse cases against the HTTP/2 server (docs/architecture.md §5, rule 6), each performed by a hand-made client
over real TLS on loopback: the server ends the attacker's connection (GOAWAY or resets) with
bounded memory and bounded work, and a well-behaved client on another connection keeps working.
The server is our driver (``agent.aio.h2conn``) with an echo handler, the same code the node API
and the master's proxy run; timeouts are shortened so the slow attacks finish quickly.

Bounded, measured rather than assumed:

* memory: the server runs in this process, so the peak of ``tracemalloc``'s traced memory over
  the attack is compared with a bound made of the limit in ``agent.proto.h2mux`` that should stop
  the attack plus a fixed baseline (what the attacker's own buffers and the TLS layer hold);
* work: counted on the server's side, never timed: the bytes its connection was handed to parse
  before it closed, the streams that reached the handler, the bytes the handler queued.

Every attack is many times larger than its bound, so a server without the limit fails the test
(checked once by raising each limit in ``Limits``, and h2's own CONTINUATION and header list
limits, out of reach: each test then failed on its memory or work bound, or both). CPU time is
printed (``-s``), not asserted."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import tracemalloc
from asyncio.sslproto import SSLProtocol
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from agent.aio.h2conn import H2Connection, H2Stream, Handler, Timeouts, connect
from agent.aio.tls import server_context
from agent.proto.h2mux import (
    HEADER_BLOCK_SLACK_BYTES,
    MAX_CONCURRENT_STREAMS,
    MAX_CONTROL_FRAMES_PER_S,
    MAX_FRAME_BYTES,
    MAX_HEADER_LIST_BYTES,
    MAX_RESETS_PER_S,
    SEND_HIGH_WATER_BYTES,
)
from tests.helpers import server_cert_files

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB
CANCEL = 0x8
REQUEST = [(":method", "POST"), (":scheme", "https"), (":authority", "t"), (":path", "/echo")]
SHORT = Timeouts(
    ping_interval_s=1.0, ping_timeout_s=1.0, preface_s=1.0, idle_s=2.0, stall_s=1.0, tick_s=0.2
)
WAIT_S = 15.0
KiB = 1 << 10
MiB = 1 << 20
FRAME_HEADER_BYTES = 9
# The most one data_received() call is given: asyncio's TLS transport reads the socket in pieces
# of this size and hands over what each decrypts to. The read in which a limit is crossed is
# handed over whole, and what the server had read when it closed is handed over once more while
# TLS shuts down: up to two reads beyond the point where a limit stops the attack.
READ_CHUNK_BYTES = SSLProtocol.max_size
# What a test's peak may include whatever the attack: the attacker's own reader and writer
# buffers and the frames it parsed, TLS records in flight on both sides, log records. Measured:
# 0.6 MiB in the zero-window test, 1.1 MiB in the silent-client test (which also makes its two
# TLS connections, with a 256 KiB read buffer on each side, while measuring).
BASELINE_BYTES = 2 * MiB
# What h2 holds after parsing one read: its stream states, the events, the answers queued for
# each PING or SETTINGS. Measured with StreamMux alone on reads of 256 KiB when the rate limits
# acted only on h2's events: 42x for pairs of HEADERS and RST_STREAM, 18x for SETTINGS, 9x for
# PING frames. The limits now count frames before h2 parses a read (a flooding read is refused
# whole), so this is a generous margin. Applied to the largest read the attacker's connection
# was given.
PARSE_EXPANSION = 64
# What one open stream may cost the server while its handler waits for the body: h2's stream
# state, our H2Stream with its events and futures, the handler task and its coroutines.
# Measured: ~7 KiB (1.8 MiB with 256 streams held).
STREAM_COST_BYTES = 12 * KiB
FLOOD_CHUNK_BYTES = 64 * KiB  # what the /flood handler writes at a time


class _MeteredConnection(H2Connection):
    """Our driver as ``serve_factory`` makes it, counting the bytes it was handed to parse:
    the attacker's work that the server actually did."""

    def __init__(self, handler: Handler) -> None:
        super().__init__(client_side=False, handler=handler, name="abuse-test", timeouts=SHORT)
        self.parsed_bytes = 0
        self.largest_read = 0  # the most one data_received() call was given
        self._progress = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.parsed_bytes += len(data)
        self.largest_read = max(self.largest_read, len(data))
        self._progress.set()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._progress.set()

    async def stopped(self, parsed_bound: int) -> None:
        """Returns once the server closed this connection, or as soon as it parsed more than
        ``parsed_bound`` bytes: a server that keeps working on the attack fails at once."""
        async with asyncio.timeout(WAIT_S):
            while not self.closed.done() and self.parsed_bytes <= parsed_bound:
                self._progress.clear()
                await self._progress.wait()


@dataclass
class Server:
    port: int
    ca_pem: bytes
    accepted: list[_MeteredConnection] = field(default_factory=list)  # [0]: the attacker's
    requests: int = 0  # streams that reached the handler
    flood_queued: int = 0  # bytes the /flood handler's stream.write() calls accepted
    flood_stopped: asyncio.Event = field(default_factory=asyncio.Event)


async def _echo(server: Server, stream: H2Stream) -> None:
    server.requests += 1
    if stream.path == "/flood":  # writes until the client's window says stop
        try:
            await stream.respond(200)
            while True:
                await stream.write(b"f" * FLOOD_CHUNK_BYTES)
                server.flood_queued += FLOOD_CHUNK_BYTES
        finally:
            server.flood_stopped.set()
    body = await stream.read_all(1 << 20)
    await stream.respond(200)
    await stream.write(body)
    await stream.end()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    ca_pem = server_cert_files(tmp_path)
    tls = server_context(tmp_path / "s.crt", tmp_path / "s.key", alpn=("h2",))
    loop = asyncio.get_running_loop()
    result = Server(0, ca_pem)

    async def handler(stream: H2Stream) -> None:
        await _echo(result, stream)

    def factory() -> H2Connection:
        conn = _MeteredConnection(handler)
        result.accepted.append(conn)
        return conn

    srv = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls)
    result.port = srv.sockets[0].getsockname()[1]
    yield result
    srv.close()
    for conn in result.accepted:
        if conn.transport is not None:
            conn.transport.close()


def _client_tls(server: Server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=server.ca_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    return ctx


class Attacker:
    """A hand-made HTTP/2 client: raw bytes out, and the server's frames read as they arrive
    (so a GOAWAY is seen even when the server resets the TCP connection right after it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.frames: list[Frame] = []  # all but acknowledgements
        self.acks: Counter[type[Frame]] = Counter()  # answers to a flood: counted, not kept
        self.sent = 0
        self._arrived = asyncio.Event()
        self._reading = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buffer = bytearray()
        try:
            while chunk := await reader.read(64 * KiB):
                buffer += chunk
                while len(buffer) >= FRAME_HEADER_BYTES:
                    header = memoryview(bytes(buffer[:FRAME_HEADER_BYTES]))
                    frame, length = Frame.parse_frame_header(header)
                    end = FRAME_HEADER_BYTES + length
                    if len(buffer) < end:
                        break
                    frame.parse_body(memoryview(bytes(buffer[FRAME_HEADER_BYTES:end])))
                    del buffer[:end]
                    if "ACK" in frame.flags:
                        self.acks[type(frame)] += 1
                    else:
                        self.frames.append(frame)
                self._arrived.set()
        except ConnectionError:
            pass  # reset by the server: the frames that arrived before are kept
        finally:
            self._arrived.set()

    def write(self, data: bytes | memoryview) -> None:
        self.writer.write(data)
        self.sent += len(data)

    async def flood(self, wire: bytes, piece: int = 64 * KiB) -> None:
        """Send ``wire`` as fast as the transport takes it, until all of it is sent or the
        server ended the connection (what the server sends is read meanwhile)."""
        view = memoryview(wire)
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(WAIT_S):
                for start in range(0, len(view), piece):
                    if self.writer.is_closing() or self._reading.done():
                        return
                    self.write(view[start : start + piece])
                    await self.writer.drain()

    async def until(self, condition: Callable[[Attacker], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not condition(self):
                assert not self._reading.done(), f"connection closed; got {self.frames}"
                self._arrived.clear()
                await self._arrived.wait()

    async def closed(self) -> list[Frame]:
        """Every frame the server sent until it closed the connection (bounded wait)."""
        async with asyncio.timeout(WAIT_S):
            await asyncio.shield(self._reading)
        return self.frames

    def goaway_code(self) -> int | None:
        codes = [f.error_code for f in self.frames if isinstance(f, GoAwayFrame)]
        return codes[-1] if codes else None

    def close(self) -> None:
        self.writer.close()
        self._reading.cancel()


@contextlib.asynccontextmanager
async def _attacker(server: Server) -> AsyncIterator[Attacker]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=_client_tls(server), server_hostname="127.0.0.1"
    )
    attacker = Attacker(reader, writer)
    try:
        yield attacker
    finally:
        attacker.close()


@dataclass
class Usage:
    peak_bytes: int = 0
    cpu_s: float = 0.0


@contextlib.contextmanager
def _traced() -> Iterator[Usage]:
    """The peak of the memory allocated meanwhile in this process and still held at that
    moment, by the server and the attacker alike, and the CPU time used."""
    usage = Usage()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    cpu = time.process_time()
    try:
        yield usage
    finally:
        usage.cpu_s = time.process_time() - cpu
        usage.peak_bytes = tracemalloc.get_traced_memory()[1] - base
        if started:
            tracemalloc.stop()


def _check_bounded(
    case: str,
    usage: Usage,
    memory_bound: int,
    conns: list[_MeteredConnection],
    parsed_bound: int,
    sent: int,
    *,
    closed: bool = True,
) -> None:
    """Prints what the attack cost the server (``-s``), then holds it to the bounds: peak
    memory, the bytes the server parsed, and (``closed``) that it closed the connection."""
    parsed = sum(conn.parsed_bytes for conn in conns)
    print(
        f"\n{case}: peak {usage.peak_bytes / MiB:.2f} MiB (bound {memory_bound / MiB:.2f}); "
        f"server parsed {parsed} of {sent} bytes sent (bound {parsed_bound}); "
        f"largest read {max(conn.largest_read for conn in conns)}; cpu {usage.cpu_s:.3f} s"
    )
    assert usage.peak_bytes <= memory_bound, f"{case}: memory not bounded"
    assert parsed <= parsed_bound, f"{case}: the server kept working on the attack"
    if closed:
        assert all(conn.closed.done() for conn in conns), f"{case}: the connection stayed open"


def _parsing_one_read(conn: _MeteredConnection) -> int:
    return BASELINE_BYTES + PARSE_EXPANSION * conn.largest_read


@contextlib.asynccontextmanager
async def _flooded(
    server: Server,
    case: str,
    wire: bytes,
    parsed_bound: int,
    memory_bound: Callable[[_MeteredConnection], int],
) -> AsyncIterator[Attacker]:
    """Floods the server with ``wire`` on a new connection, holds it to the bounds (memory as a
    function of the attacker's connection), waits for the server to close it, and yields the
    attacker for the case's own checks; then a well-behaved client must still be served."""
    async with _attacker(server) as attacker:
        conn = server.accepted[0]
        with _traced() as usage:
            await attacker.flood(wire)
            await conn.stopped(parsed_bound)
        _check_bounded(case, usage, memory_bound(conn), [conn], parsed_bound, attacker.sent)
        await attacker.closed()
        yield attacker
    await _well_behaved(server)


async def _well_behaved(server: Server) -> None:
    conn = await connect("127.0.0.1", server.port, _client_tls(server), server_hostname="127.0.0.1")
    try:
        stream = await conn.request("POST", "/echo", authority="t")
        await stream.write(b"still here")
        await stream.end()
        await stream.response()
        assert stream.status == 200
        assert await stream.read_all(1 << 16) == b"still here"
    finally:
        await conn.shutdown()


def _headers(encoder: hpack.Encoder, sid: int, *, end_headers: bool = True) -> bytes:
    frame = HeadersFrame(sid)
    frame.data = encoder.encode(REQUEST)
    if end_headers:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def _on_stream(frame: bytes, stream_id: int) -> bytes:
    """A serialized frame re-addressed to another stream (the last 4 bytes of its header)."""
    return frame[:5] + stream_id.to_bytes(4, "big") + frame[FRAME_HEADER_BYTES:]


def _preface(settings: dict[int, int] | None = None) -> bytes:
    frame = SettingsFrame(0)
    frame.settings = settings or {}
    return PREFACE + frame.serialize()


async def test_rapid_reset(server: Server, blockbuster: object) -> None:
    # 100 000 streams, each cancelled as soon as opened: the server stops at the reset rate
    # limit, so at most two one-second windows' worth of requests reach the handler.
    encoder = hpack.Encoder()
    rst = RstStreamFrame(1)
    rst.error_code = CANCEL
    reset = rst.serialize()
    first = _headers(encoder, 1) + reset
    headers = _headers(encoder, 1)  # the header block is all indexed from now on
    count = 100_000
    pairs = (_on_stream(headers, sid) + _on_stream(reset, sid) for sid in range(3, 2 * count, 2))
    wire = _preface() + first + b"".join(pairs)
    requests_bound = 2 * MAX_RESETS_PER_S + 1
    parsed_bound = requests_bound * (len(headers) + len(reset)) + 2 * READ_CHUNK_BYTES
    async with _flooded(server, "rapid reset", wire, parsed_bound, _parsing_one_read) as attacker:
        print(f"rapid reset: {server.requests} of {count} requests reached the handler")
        assert server.requests <= requests_bound
        assert attacker.goaway_code() == ENHANCE_YOUR_CALM


async def test_continuation_flood(server: Server, blockbuster: object) -> None:
    # A header block that never ends, in CONTINUATION frames of the largest size the server
    # accepts, 200 of them (50 MiB): h2 buffers a header block until it ends, so the server
    # refuses a block once its frames announce more than the header list limit (and after
    # MAX_CONTINUATION_FRAMES frames, whichever comes first).
    cont = ContinuationFrame(1)
    cont.data = b"\x00" * MAX_FRAME_BYTES
    wire = _preface() + _headers(hpack.Encoder(), 1, end_headers=False) + cont.serialize() * 200
    block_bound = MAX_HEADER_LIST_BYTES + HEADER_BLOCK_SLACK_BYTES
    parsed_bound = block_bound + 2 * READ_CHUNK_BYTES
    async with _flooded(
        server,
        "continuation flood",
        wire,
        parsed_bound,
        lambda _: BASELINE_BYTES + block_bound + READ_CHUNK_BYTES,  # the block, the read on hand
    ) as attacker:
        assert server.requests == 0
        assert attacker.goaway_code() == ENHANCE_YOUR_CALM


def _hpack_bomb() -> bytes:
    """A small header block that decodes to 10 000 copies of a 4 000-byte header: one literal
    that enters HPACK's dynamic table, then one-byte references to it (~40 MB decoded)."""
    encoder = hpack.Encoder()
    bomb = [("x-bomb", "b" * 4000)]
    block = encoder.encode(REQUEST) + encoder.encode(bomb)
    reference = encoder.encode(bomb)  # now an index into the dynamic table
    assert len(reference) == 1
    return block + reference * 10_000


@pytest.mark.parametrize("kind", ["large", "bomb"])
async def test_oversized_header_list(server: Server, blockbuster: object, kind: str) -> None:
    if kind == "large":  # 200 KiB of headers, sent as they are
        block = hpack.Encoder().encode([*REQUEST, *((f"x-h{i}", "v" * 4000) for i in range(50))])
    else:  # an HPACK bomb: 14 KiB that decode to 40 MB
        block = _hpack_bomb()
    pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    first = HeadersFrame(1)
    first.data = pieces[0]
    frames: list[HeadersFrame | ContinuationFrame] = [first]
    for piece in pieces[1:]:
        frames.append(ContinuationFrame(1))
        frames[-1].data = piece
    frames[-1].flags.add("END_HEADERS")
    wire = _preface() + b"".join(frame.serialize() for frame in frames)
    async with _flooded(
        server,
        f"oversized header list ({kind})",
        wire,
        len(wire),
        # the encoded block, and what was decoded of it until the list limit was crossed
        lambda _: BASELINE_BYTES + len(block) + 2 * MAX_HEADER_LIST_BYTES,
    ) as attacker:
        assert server.requests == 0
        assert attacker.goaway_code() is not None


@pytest.mark.parametrize("kind", ["ping", "settings"])
async def test_control_frame_flood(server: Server, blockbuster: object, kind: str) -> None:
    # Half a million PING or SETTINGS frames, each of which asks for an answer.
    one = (PingFrame(0) if kind == "ping" else SettingsFrame(0)).serialize()
    wire = _preface() + one * 500_000
    parsed_bound = (MAX_CONTROL_FRAMES_PER_S + 1) * len(one) + 2 * READ_CHUNK_BYTES
    async with _flooded(server, f"{kind} flood", wire, parsed_bound, _parsing_one_read) as attacker:
        assert attacker.goaway_code() == ENHANCE_YOUR_CALM


async def test_too_many_concurrent_streams(server: Server, blockbuster: object) -> None:
    # Streams opened and never ended: each one accepted holds a handler waiting for its body,
    # so only the concurrency limit bounds the server's memory. The attacker fills the limit
    # (a PING answered: the server has read all before it), then opens 4 000 more.
    ack = SettingsFrame(0)
    ack.flags.add("ACK")
    encoder = hpack.Encoder()
    first = _headers(encoder, 1)
    headers = _headers(encoder, 1)  # all indexed from now on
    fill = (
        _preface()
        + ack.serialize()
        + first
        + b"".join(_on_stream(headers, sid) for sid in range(3, 2 * MAX_CONCURRENT_STREAMS, 2))
        + PingFrame(0).serialize()
    )
    count = 4_000
    more = range(2 * MAX_CONCURRENT_STREAMS + 1, 2 * (MAX_CONCURRENT_STREAMS + count), 2)
    wire = b"".join(_on_stream(headers, sid) for sid in more)
    parsed_bound = len(fill) + len(headers) + 2 * READ_CHUNK_BYTES
    async with _attacker(server) as attacker:
        conn = server.accepted[0]
        with _traced() as usage:
            attacker.write(fill)
            await attacker.writer.drain()
            await attacker.until(lambda a: a.acks[PingFrame] > 0)
            assert server.requests == MAX_CONCURRENT_STREAMS  # each held by its handler
            await attacker.flood(wire)
            await conn.stopped(parsed_bound)
        _check_bounded(
            "too many streams",
            usage,
            BASELINE_BYTES + MAX_CONCURRENT_STREAMS * STREAM_COST_BYTES,
            [conn],
            parsed_bound,
            attacker.sent,
        )
        print(f"too many streams: {server.requests} reached the handler, none of {count} more")
        assert server.requests == MAX_CONCURRENT_STREAMS
        await attacker.closed()
        assert attacker.goaway_code() is not None
    await _well_behaved(server)


async def test_zero_window_stall_resets_the_stream(server: Server, blockbuster: object) -> None:
    # The attacker asks for an endless response and never gives the server credit: the handler
    # is held at the send buffer's high-water mark until the stall timeout resets the stream.
    head = HeadersFrame(1)
    head.data = hpack.Encoder().encode([*REQUEST[:3], (":path", "/flood")])
    head.flags.add("END_HEADERS")
    head.flags.add("END_STREAM")
    # write() returns while the stream's buffer is at or below the high-water mark, and once
    # more for the write that crossed it, when the reset wakes it
    queued_bound = SEND_HIGH_WATER_BYTES + FLOOD_CHUNK_BYTES
    async with _attacker(server) as attacker:
        with _traced() as usage:
            attacker.write(_preface({SettingsFrame.INITIAL_WINDOW_SIZE: 0}) + head.serialize())
            await attacker.writer.drain()
            await attacker.until(lambda a: any(isinstance(f, RstStreamFrame) for f in a.frames))
            async with asyncio.timeout(WAIT_S):
                await server.flood_stopped.wait()
        _check_bounded(
            "zero window",
            usage,
            BASELINE_BYTES + queued_bound,
            server.accepted[:1],
            attacker.sent,
            attacker.sent,
            closed=False,  # only the stream is reset
        )
        print(f"zero window: the handler queued {server.flood_queued} bytes (bound {queued_bound})")
        assert server.flood_queued <= queued_bound
    await _well_behaved(server)


async def test_silent_clients_are_closed(server: Server, blockbuster: object) -> None:
    sent = 0
    with _traced() as usage:
        # No preface at all: closed after the preface timeout.
        async with _attacker(server) as attacker:
            await attacker.closed()
        # A preface, then silence and no PING answers: closed by keepalive or idle timeout,
        # after at most one PING (an unanswered PING ends the connection).
        async with _attacker(server) as attacker:
            attacker.write(_preface())
            await attacker.writer.drain()
            frames = await attacker.closed()
            pings = [f for f in frames if isinstance(f, PingFrame)]
            assert pings or attacker.goaway_code() is not None
            assert len(pings) <= 1
            sent = attacker.sent
        for conn in server.accepted:
            await conn.stopped(sent)
    _check_bounded("silent clients", usage, BASELINE_BYTES, server.accepted, sent, sent)
    await _well_behaved(server)
