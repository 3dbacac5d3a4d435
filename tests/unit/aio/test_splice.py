"""A stream joined to a socket in the loop's callbacks (agent/aio/splice.py), between a real
HTTP/2 client and server on loopback (plain TCP: TLS changes nothing here) and a socket
server standing for the pod's port.

Covered: a 1-byte message costs one write per hop (one DATA frame handed to the HTTP/2
transport in one call, one write to the socket), TCP_NODELAY on the spliced socket, flow
control end to end (a socket that does not read stalls the stream at the far end, and
everything arrives once it reads), half-close both ways, and a reset socket resetting the
stream."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.aio import hops
from agent.aio.h2conn import H2Connection, H2Stream, serve_factory
from agent.aio.splice import SocketSplice
from agent.errors import StreamResetError
from agent.proto.h2mux import CLIENT_LIMITS
from tests.unit.node.asyncwait import until

pytestmark = pytest.mark.usefixtures("blockbuster")

HOST = "127.0.0.1"
REQUEST = "/portforward"


class CountingTransport:
    """The HTTP/2 server's transport, counting what is handed to it per call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[list[int]] = []  # the piece sizes of each write call

    def writelines(self, pieces: list[bytes]) -> None:
        self.calls.append([len(p) for p in pieces])
        self.inner.writelines(pieces)

    def write(self, data: bytes) -> None:
        self.calls.append([len(data)])
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Pod:
    """The pod's port: echoes (or holds its reads until ``reading`` is set), counts the
    reads it got; on EOF answers ``bye`` and closes."""

    reading: asyncio.Event = field(default_factory=asyncio.Event)
    reads: list[int] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        await self.reading.wait()
        try:
            while data := await reader.read(1 << 20):
                self.reads.append(len(data))
                writer.write(data)
                await writer.drain()
            writer.write(b"bye")
            await writer.drain()
        except ConnectionError:
            pass  # the test reset it
        writer.close()


@dataclass
class Rig:
    pod: Pod
    client: H2Connection | None = None
    server_transport: CountingTransport | None = None
    splices: list[SocketSplice] = field(default_factory=list)

    async def open(self) -> H2Stream:
        assert self.client is not None
        stream = await self.client.request("POST", REQUEST)
        await stream.response()
        return stream


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    loop = asyncio.get_running_loop()
    pod = Pod()
    pod.reading.set()
    pod.server = await asyncio.start_server(pod.serve, HOST, 0)
    pod.port = pod.server.sockets[0].getsockname()[1]
    holder = {"rig": Rig(pod)}

    async def handle(stream: H2Stream) -> None:
        # What the node's port-forward does with the pod's socket.
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, pod.port))
        splice = SocketSplice(read_point=hops.Point.POD_READ, write_point=hops.Point.POD_WRITE)
        await loop.connect_accepted_socket(lambda: splice, sock)
        holder["rig"].splices.append(splice)
        await stream.respond(200)
        splice.send_from_socket(stream)
        splice.deliver_to_socket()
        try:
            await splice.done
        finally:
            splice.close()

    make = serve_factory(handle, name="test-server")

    def counted() -> H2Connection:
        conn: H2Connection = make()
        original = conn.connection_made

        def made(transport: asyncio.BaseTransport) -> None:
            counting = CountingTransport(transport)
            holder["rig"].server_transport = counting
            original(counting)  # type: ignore[arg-type]

        conn.connection_made = made  # type: ignore[method-assign]
        return conn

    server = await loop.create_server(counted, HOST, 0)
    _, client = await loop.create_connection(
        lambda: H2Connection(client_side=True, limits=CLIENT_LIMITS, name="test-client"),
        HOST,
        server.sockets[0].getsockname()[1],
    )
    assert isinstance(client, H2Connection)
    holder["rig"].client = client
    yield holder["rig"]
    await client.shutdown("done", grace_s=1.0)
    server.close()
    pod.server.close()


async def test_a_one_byte_message_costs_one_write_per_hop(rig: Rig) -> None:
    stream = await rig.open()
    await stream.write(b"w")
    assert await stream.read() == b"w"  # warm: settings and the first exchange done
    assert rig.server_transport is not None
    rig.server_transport.calls.clear()
    reads_before = len(rig.pod.reads)
    for _ in range(50):
        await stream.write(b"x")
        assert await stream.read() == b"x"
    # The pod got each byte in a read of its own (one write to its socket per message) and
    # each answer left the server as one DATA frame (9 + 1 bytes) in one transport call: no
    # separate WINDOW_UPDATE, no second write.
    assert rig.pod.reads[reads_before:] == [1] * 50
    assert rig.server_transport.calls == [[10]] * 50
    (splice,) = rig.splices
    assert (splice.to_socket, splice.from_socket) == (51, 51)


async def test_the_spliced_socket_has_tcp_nodelay(rig: Rig) -> None:
    stream = await rig.open()
    await stream.write(b"x")
    assert await stream.read() == b"x"
    (splice,) = rig.splices
    sock = splice._transport.get_extra_info("socket")  # type: ignore[union-attr]
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_a_socket_that_does_not_read_stalls_the_far_end_then_everything_arrives(
    rig: Rig,
) -> None:
    rig.pod.reading.clear()
    stream = await rig.open()
    total = 64 << 20  # more than every window and buffer on the way
    chunk = b"s" * (1 << 20)
    sent = 0

    async def send() -> None:
        nonlocal sent
        while sent < total:
            await stream.write(chunk)
            sent += len(chunk)
        await stream.end()

    sender = asyncio.create_task(send())
    try:
        conn = stream.conn
        await until(lambda: conn.mux.stalled_since(stream.id) is not None, "the stall")
        assert sent < total // 2  # nothing on the way buffered the rest
        rig.pod.reading.set()
        received = 0
        while data := await stream.read():
            received += len(data)
        await sender
    finally:
        sender.cancel()
    assert received == total + len(b"bye")


async def test_half_close_both_ways(rig: Rig) -> None:
    stream = await rig.open()
    await stream.write(b"last words")
    await stream.end()  # the pod sees EOF, answers and closes: the stream ends
    assert await stream.read_all(1024) == b"last wordsbye"
    await until(lambda: rig.splices[0].done.done(), "the splice to end")
    assert rig.splices[0].error == ""


async def test_a_reset_socket_resets_the_stream(rig: Rig) -> None:
    stream = await rig.open()
    await stream.write(b"x")
    assert await stream.read() == b"x"
    (writer,) = rig.pod.writers
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST towards the splice (linger 0)
    with pytest.raises(StreamResetError):
        while await stream.read():
            pass
