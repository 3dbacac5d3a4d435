"""``nodectl port-forward``'s ticket path (agent/cli/nodectl_tickets.py) against a master on
loopback HTTP/2: a ticket per connection while the node is reachable; the relay, for this and
every later connection with one line on stderr, when the node is not; the relay silently when
the cluster turned tickets off (409); a refusal from the master is the command's error."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from agent.aio.h2conn import H2Connection, H2Stream, serve_factory
from agent.cli.nodectl_tickets import TicketStreams
from agent.errors import CliError
from agent.proto.h2mux import CLIENT_LIMITS

HOST = "127.0.0.1"
PATH = "/v1/namespaces/default/pods/web/portforward?port=80"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Master:
    """Answers /v1/tickets with ``ticket_status`` (a ticket naming ``endpoint``) and relays a
    port-forward by answering 200 and echoing."""

    endpoint: str
    ticket_status: int = 200
    asked: list[dict[str, str]] = field(default_factory=list)
    relayed: list[str] = field(default_factory=list)

    async def handle(self, stream: H2Stream) -> None:
        if stream.path == "/v1/tickets":
            self.asked.append(json.loads(await stream.read_all(1 << 16)))
            body: dict[str, object] = (
                {"node": "n1", "endpoint": self.endpoint, "ticket": "nat1.x.y.z", "expiresAt": 1}
                if self.ticket_status == 200
                else {"error": {"code": self.ticket_status, "message": "no tickets for you"}}
            )
            await stream.respond(self.ticket_status, [("content-type", "application/json")])
            await stream.write(json.dumps(body).encode())
            await stream.end()
            return
        self.relayed.append(stream.path)
        await stream.respond(200)
        while chunk := await stream.read():
            await stream.write(chunk)
        await stream.end()


@pytest.fixture
async def master() -> AsyncIterator[tuple[Master, H2Connection]]:
    loop = asyncio.get_running_loop()
    fake = Master(f"{HOST}:{closed_port()}")
    server = await loop.create_server(serve_factory(fake.handle, name="master"), HOST, 0)
    _, conn = await loop.create_connection(
        lambda: H2Connection(client_side=True, limits=CLIENT_LIMITS, name="nodectl"),
        HOST,
        server.sockets[0].getsockname()[1],
    )
    assert isinstance(conn, H2Connection)
    yield fake, conn
    await conn.shutdown("done", grace_s=1.0)
    server.close()


async def echo(stream: H2Stream) -> bytes:
    await stream.write(b"hi")
    await stream.end()
    await stream.response()
    return await stream.read_all(1 << 16)


async def test_an_unreachable_node_sends_this_and_later_connections_through_the_relay(
    master: tuple[Master, H2Connection], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, conn = master
    streams = TicketStreams(conn, ssl.create_default_context())
    assert await echo(await streams.open(PATH)) == b"hi"
    assert await echo(await streams.open(PATH)) == b"hi"
    assert fake.asked == [{"method": "POST", "target": PATH}]  # once: then the relay only
    assert fake.relayed == [PATH, PATH]
    assert (streams.relay_only, streams.direct_streams, streams.relayed_streams) == (True, 0, 2)
    err = capsys.readouterr().err
    assert err.count("through the master from now on") == 1 and "node n1 unreachable" in err


async def test_tickets_off_means_the_relay_without_a_word(
    master: tuple[Master, H2Connection], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, conn = master
    fake.ticket_status = 409
    streams = TicketStreams(conn, ssl.create_default_context())
    assert await echo(await streams.open(PATH)) == b"hi"
    assert streams.relay_only and fake.relayed == [PATH]
    assert capsys.readouterr().err == ""


async def test_a_refusal_from_the_master_is_the_connections_error(
    master: tuple[Master, H2Connection],
) -> None:
    fake, conn = master
    fake.ticket_status = 403
    streams = TicketStreams(conn, ssl.create_default_context())
    with pytest.raises(CliError, match=r"Error from server \(403\): no tickets for you"):
        await streams.open(PATH)
    assert fake.relayed == [] and not streams.relay_only
