"""A local connection's first bytes sent before its stream exists (nodectl asking the master
for a ticket first, agent/cli/nodectl_tickets.py), on uvloop, which starts reading an accepted
socket after ``connection_made`` whatever it paused: they are kept and sent once the stream
is there, with the client's half-close, never lost or a crash of the transport."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from agent.aio import hops
from agent.aio.h2conn import H2Connection, H2Stream, serve_factory
from agent.aio.splice import SocketSplice
from agent.proto.h2mux import CLIENT_LIMITS
from tests.unit.node.asyncwait import until

HOST = "127.0.0.1"


async def _echo(stream: H2Stream) -> None:
    await stream.respond(200)
    while chunk := await stream.read():
        await stream.write(chunk)
    await stream.end()


async def _scenario() -> bytes:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(serve_factory(_echo, name="echo"), HOST, 0)
    _, client = await loop.create_connection(
        lambda: H2Connection(client_side=True, limits=CLIENT_LIMITS, name="client"),
        HOST,
        server.sockets[0].getsockname()[1],
    )
    assert isinstance(client, H2Connection)
    splices: list[SocketSplice] = []

    def make() -> SocketSplice:
        splice = SocketSplice(read_point=hops.Point.LOCAL_READ, write_point=hops.Point.LOCAL_WRITE)
        splices.append(splice)
        return splice

    local = await loop.create_server(make, HOST, 0)
    user = socket.create_connection(local.sockets[0].getsockname()[:2])
    user.setblocking(False)
    try:
        await loop.sock_sendall(user, b"early bytes")
        user.shutdown(socket.SHUT_WR)
        # uvloop reads them at once (asyncio's pause holds: they wait in the kernel).
        eager = isinstance(loop, uvloop.Loop)
        await until(
            lambda: (
                bool(splices)
                and splices[0]._transport is not None
                and (bool(splices[0]._early) or not eager)
            ),
            what="the local connection accepted (and read, on uvloop)",
        )
        (splice,) = splices
        stream = await client.request("POST", "/echo")
        splice.send_from_socket(stream)
        await stream.response()
        splice.deliver_to_socket()
        got = b""
        while chunk := await loop.sock_recv(user, 1 << 16):
            got += chunk
        await splice.done
        return got
    finally:
        user.close()
        await client.shutdown("done", grace_s=1.0)
        local.close()
        server.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_bytes_before_the_stream_are_sent_once_it_exists(loop: str) -> None:
    run = uvloop.run if loop == "uvloop" else asyncio.run
    assert run(asyncio.wait_for(_scenario(), 30)) == b"early bytes"
