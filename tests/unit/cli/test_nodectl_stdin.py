"""``nodectl exec``'s bytes in callbacks (agent/cli/nodectl_stream.py) between pipes and a real
HTTP/2 stream on loopback. Stdin (``StdinPump``): one reader registered for the session
whatever the number of reads, each read one stdin frame, EOF the stream's end, the
descriptor's flags untouched, and flow control end to end (a server that does not read pauses
the reading; everything arrives, in order, once it reads). Output (``OutputWriter``): each
channel to its descriptor and the exit code from the trailers; a malformed frame fails the
session and resets the stream.

No blockbuster here: the pump reads a blocking descriptor on purpose (the user's terminal,
whose flags it must not change), once the loop said it is readable."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from agent.aio.h2conn import H2Connection, H2Stream, serve_factory
from agent.cli.nodectl_stream import StdinPump, Stdio, exec_session
from agent.errors import ProtocolViolation
from agent.proto import execframe
from agent.proto.execframe import Channel
from agent.proto.h2mux import CLIENT_LIMITS
from tests.unit.node.asyncwait import until

HOST = "127.0.0.1"
BULK_BYTES = 12 << 20  # beyond the server's stream window (4 MiB) and the send buffer


@dataclass
class Server:
    """Decodes the request's stdin frames; reads only while ``reading`` is set."""

    reading: asyncio.Event = field(default_factory=asyncio.Event)
    received: bytearray = field(default_factory=bytearray)
    frames: list[bytes] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, stream: H2Stream) -> None:
        await stream.respond(200)
        decoder = execframe.FrameDecoder(frozenset({Channel.STDIN, Channel.RESIZE}))
        await self.reading.wait()
        while chunk := await stream.read():
            for frame in decoder.feed(chunk):
                self.frames.append(frame.payload)
                self.received += frame.payload
        self.ended.set()
        await stream.end()


@pytest.fixture
async def session() -> AsyncIterator[tuple[Server, H2Stream]]:
    loop = asyncio.get_running_loop()
    server = Server()
    listener = await loop.create_server(serve_factory(server.handle, name="node"), HOST, 0)
    _, client = await loop.create_connection(
        lambda: H2Connection(client_side=True, limits=CLIENT_LIMITS, name="nodectl"),
        HOST,
        listener.sockets[0].getsockname()[1],
    )
    assert isinstance(client, H2Connection)
    stream = await client.request("POST", "/exec")
    yield server, stream
    await client.shutdown("done", grace_s=1.0)
    listener.close()


async def test_keystrokes_go_one_frame_each_through_one_reader(
    session: tuple[Server, H2Stream],
) -> None:
    server, stream = session
    server.reading.set()
    read_fd, write_fd = os.pipe()
    try:
        pump = StdinPump(stream, read_fd)
        pump.start()
        for n, key in enumerate((b"a", b"b", b"\r")):
            os.write(write_fd, key)
            await until(lambda n=n: len(server.frames) == n + 1, f"keystroke {n} as a frame")
        assert server.frames == [b"a", b"b", b"\r"]
        os.close(write_fd)
        write_fd = -1
        await asyncio.wait_for(pump.done, 30)
        await asyncio.wait_for(server.ended.wait(), 30)  # EOF: the stream's end
        assert pump.registrations == 1
        assert os.get_blocking(read_fd)  # the flags shared with the shell are untouched
        pump.stop()
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)


async def test_a_server_that_does_not_read_pauses_the_reading_then_all_arrives(
    session: tuple[Server, H2Stream],
) -> None:
    server, stream = session
    read_fd, write_fd = os.pipe()
    payload = bytes(range(256)) * (BULK_BYTES // 256)

    def write_all() -> None:
        view = memoryview(payload)
        try:
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os.close(write_fd)

    writer = asyncio.get_running_loop().run_in_executor(None, write_all)
    try:
        pump = StdinPump(stream, read_fd)
        pump.start()
        await until(lambda: not stream.writable, "the stream pushing back")
        server.reading.set()
        await asyncio.wait_for(server.ended.wait(), 60)
        await writer
        await asyncio.wait_for(pump.done, 30)
        assert bytes(server.received) == payload
        assert pump.registrations >= 2  # registered again once the stream took more
    finally:
        os.close(read_fd)


async def run_exec(frames: bytes) -> tuple[int | Exception, bytes, bytes]:
    """``exec_session`` against a node that answers ``frames`` and exit code 3; what it
    returned (or raised) and what reached stdout and stderr."""
    loop = asyncio.get_running_loop()

    async def handle(stream: H2Stream) -> None:
        await stream.respond(200)
        await stream.write(frames)
        await stream.end([("exit-code", "3")])

    listener = await loop.create_server(serve_factory(handle, name="node"), HOST, 0)
    _, client = await loop.create_connection(
        lambda: H2Connection(client_side=True, limits=CLIENT_LIMITS, name="nodectl"),
        HOST,
        listener.sockets[0].getsockname()[1],
    )
    assert isinstance(client, H2Connection)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        stdio = Stdio(stdin=-1, stdout=out_w, stderr=err_w)
        result: int | Exception
        try:
            result = await asyncio.wait_for(
                exec_session(client, "ns", "pod", None, ["x"], stdin=False, tty=False, stdio=stdio),
                30,
            )
        except Exception as exc:  # what the session raised, for the test to judge
            result = exc
        os.close(out_w)
        os.close(err_w)
        out_w = err_w = -1
        return result, os.read(out_r, 1 << 16), os.read(err_r, 1 << 16)
    finally:
        for fd in (out_r, out_w, err_r, err_w):
            if fd >= 0:
                os.close(fd)
        await client.shutdown("done", grace_s=1.0)
        listener.close()


async def test_output_goes_to_its_descriptors_and_the_exit_code_from_the_trailers() -> None:
    frames = b"".join(
        execframe.encode(channel, data)
        for channel, data in (
            (Channel.STDOUT, b"out 1 "),
            (Channel.STDERR, b"err"),
            (Channel.STDOUT, b"out 2"),
        )
    )
    assert await run_exec(frames) == (3, b"out 1 out 2", b"err")


async def test_a_malformed_output_frame_fails_the_session() -> None:
    frames = execframe.encode(Channel.STDOUT, b"ok") + execframe.encode(Channel.STDIN, b"no")
    result, out, err = await run_exec(frames)
    assert isinstance(result, ProtocolViolation), result
    assert out in (b"", b"ok") and err == b""  # the chunk it came in may hold the good one
