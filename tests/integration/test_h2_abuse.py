"""Abuse cases against the HTTP/2 server (DESIGN §4.6), each performed by a hand-made client
over real TLS on loopback: the server ends the attacker's connection (GOAWAY or resets) and a
well-behaved client on another connection keeps working. The server is our driver
(``agent.aio.h2conn``) with an echo handler, the same code the node API and the master's proxy
run; timeouts are shortened so the slow attacks finish quickly."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
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

from agent.aio.h2conn import H2Connection, H2Stream, Timeouts, connect, serve_factory
from agent.aio.tls import server_context
from tests.helpers import server_cert_files

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB
CANCEL = 0x8
REQUEST = [(":method", "POST"), (":scheme", "https"), (":authority", "t"), (":path", "/echo")]
SHORT = Timeouts(
    ping_interval_s=1.0, ping_timeout_s=1.0, preface_s=1.0, idle_s=2.0, stall_s=1.0, tick_s=0.2
)
WAIT_S = 15.0


@dataclass
class Server:
    port: int
    ca_pem: bytes
    connections: set[H2Connection]


async def _echo(stream: H2Stream) -> None:
    if stream.path == "/flood":  # writes until the client's window says stop
        await stream.respond(200)
        while True:
            await stream.write(b"f" * 65536)
    body = await stream.read_all(1 << 20)
    await stream.respond(200)
    await stream.write(body)
    await stream.end()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    ca_pem = server_cert_files(tmp_path)
    tls = server_context(tmp_path / "s.crt", tmp_path / "s.key", alpn=("h2",))
    connections: set[H2Connection] = set()
    make = serve_factory(_echo, name="abuse-test", timeouts=SHORT)

    def factory() -> H2Connection:
        conn: H2Connection = make()
        connections.add(conn)
        conn.closed.add_done_callback(lambda _: connections.discard(conn))
        return conn

    loop = asyncio.get_running_loop()
    srv = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls)
    port = srv.sockets[0].getsockname()[1]
    yield Server(port, ca_pem, connections)
    srv.close()
    for conn in list(connections):
        conn.transport.close() if conn.transport else None


def _client_tls(server: Server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=server.ca_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def _attacker(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=_client_tls(server), server_hostname="127.0.0.1"
    )


async def _frames_until_closed(reader: asyncio.StreamReader) -> list[Frame]:
    """Every frame the server sent until it closed the connection (bounded wait)."""
    data = b""
    async with asyncio.timeout(WAIT_S):
        while chunk := await reader.read(65536):
            data += chunk
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def _goaway_code(frames: list[Frame]) -> int | None:
    codes = [f.error_code for f in frames if isinstance(f, GoAwayFrame)]
    return codes[-1] if codes else None


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


def _open(writer: asyncio.StreamWriter, settings: dict[int, int] | None = None) -> None:
    frame = SettingsFrame(0)
    frame.settings = settings or {}
    writer.write(PREFACE + frame.serialize())


async def test_rapid_reset(server: Server, blockbuster: object) -> None:
    reader, writer = await _attacker(server)
    _open(writer)
    encoder = hpack.Encoder()
    for i in range(1000):
        rst = RstStreamFrame(2 * i + 1)
        rst.error_code = CANCEL
        writer.write(_headers(encoder, 2 * i + 1) + rst.serialize())
    await writer.drain()
    assert _goaway_code(await _frames_until_closed(reader)) == ENHANCE_YOUR_CALM
    writer.close()
    await _well_behaved(server)


async def test_continuation_flood(server: Server, blockbuster: object) -> None:
    reader, writer = await _attacker(server)
    _open(writer)
    writer.write(_headers(hpack.Encoder(), 1, end_headers=False))
    sent = 0
    with pytest.raises(ConnectionError):  # cut off mid-flood
        async with asyncio.timeout(WAIT_S):
            for sent in range(100_000):  # noqa: B007 - how far it got is asserted below
                cont = ContinuationFrame(1)
                cont.data = b"\x00" * 100
                writer.write(cont.serialize())
                await writer.drain()
                if reader.at_eof():
                    raise ConnectionError("closed by the server")
                await asyncio.sleep(0)
    assert sent < 1000, "the server let the header block grow"
    writer.close()
    await _well_behaved(server)


async def test_oversized_header_list(server: Server, blockbuster: object) -> None:
    reader, writer = await _attacker(server)
    _open(writer)
    block = hpack.Encoder().encode([*REQUEST, *((f"x-h{i}", "v" * 4000) for i in range(50))])
    pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]  # 200 KiB of headers
    first = HeadersFrame(1)
    first.data = pieces[0]
    wire = first.serialize()
    for n, piece in enumerate(pieces[1:], start=2):
        cont = ContinuationFrame(1)
        cont.data = piece
        if n == len(pieces):
            cont.flags.add("END_HEADERS")
        wire += cont.serialize()
    writer.write(wire)
    await writer.drain()
    assert _goaway_code(await _frames_until_closed(reader)) is not None
    writer.close()
    await _well_behaved(server)


@pytest.mark.parametrize("kind", ["ping", "settings"])
async def test_control_frame_flood(server: Server, blockbuster: object, kind: str) -> None:
    reader, writer = await _attacker(server)
    _open(writer)
    for _ in range(1000):
        frame = PingFrame(0) if kind == "ping" else SettingsFrame(0)
        writer.write(frame.serialize())
    await writer.drain()
    assert _goaway_code(await _frames_until_closed(reader)) == ENHANCE_YOUR_CALM
    writer.close()
    await _well_behaved(server)


async def test_too_many_concurrent_streams(server: Server, blockbuster: object) -> None:
    reader, writer = await _attacker(server)
    ack = SettingsFrame(0)
    ack.flags.add("ACK")
    _open(writer)
    writer.write(ack.serialize())
    encoder = hpack.Encoder()
    for i in range(400):  # never ended: each stays open, above the limit of 256
        writer.write(_headers(encoder, 2 * i + 1))
    await writer.drain()
    assert _goaway_code(await _frames_until_closed(reader)) is not None
    writer.close()
    await _well_behaved(server)


async def test_zero_window_stall_resets_the_stream(server: Server, blockbuster: object) -> None:
    reader, writer = await _attacker(server)
    _open(writer, {SettingsFrame.INITIAL_WINDOW_SIZE: 0})  # never gives the server credit
    encoder = hpack.Encoder()
    head = HeadersFrame(1)
    head.data = encoder.encode([*REQUEST[:3], (":path", "/flood")])
    head.flags.add("END_HEADERS")
    head.flags.add("END_STREAM")
    writer.write(head.serialize())
    await writer.drain()
    data = b""
    async with asyncio.timeout(WAIT_S):
        while b"\x00\x00\x04\x03" not in data:  # RST_STREAM frame header (length 4, type 3)
            data += await reader.read(65536)
    writer.close()
    await _well_behaved(server)


async def test_silent_clients_are_closed(server: Server, blockbuster: object) -> None:
    # No preface at all: closed after the preface timeout.
    reader, writer = await _attacker(server)
    await _frames_until_closed(reader)
    writer.close()
    # A preface, then silence and no PING answers: closed by keepalive or idle timeout.
    reader, writer = await _attacker(server)
    _open(writer)
    await writer.drain()
    frames = await _frames_until_closed(reader)
    assert any(isinstance(f, PingFrame) for f in frames) or _goaway_code(frames) is not None
    writer.close()
    await _well_behaved(server)
