"""``nodectl port-forward`` with the master's tickets (issue 20 item 3, docs/streaming.md):
the master authorizes each forwarded connection and steps out of its byte path.

For every accepted local connection nodectl asks the master (on the HTTP/2 connection it
already holds) for a ticket for that one port-forward request, then sends the request straight
to the pod's node with the ticket in ``node-agent-ticket``, on a connection authenticated both
ways by the cluster CA (nodectl's own client certificate, which the ticket is bound to; the
node's certificate name ``system:node:<name>``), opened once and shared by the connections that
follow. The master's relay carries a connection instead when the cluster turned tickets off
(409), or when the node cannot be reached (no route, refused, no handshake within
``NODE_CONNECT_TIMEOUT_S``): then every later connection of this command uses the relay too,
after one line on stderr. A node's refusal of a ticket (403) is final for that connection, as
the relay would refuse it too.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections.abc import Callable

from agent.aio.h2conn import H2Connection, H2Stream
from agent.cli.nodectl_stream import NodeTarget, PortPair, open_node, port_forward_session
from agent.errors import CliError, StreamingError
from agent.names import escape
from agent.proto.tickets import HEADER

NODE_CONNECT_TIMEOUT_S = 2.0  # beyond it the relay is the better path
TICKET_ANSWER_MAX_BYTES = 64 * 1024


class TicketStreams:
    """Opens port-forward streams: direct with a ticket while that works, else relayed."""

    def __init__(self, master: H2Connection, node_ctx: ssl.SSLContext) -> None:
        self._master = master
        self._node_ctx = node_ctx
        self._node: H2Connection | None = None
        self._node_target: NodeTarget | None = None
        self._connecting = asyncio.Lock()
        self.relay_only = False
        self.direct_streams = 0
        self.relayed_streams = 0

    async def open(self, path: str) -> H2Stream:
        """A stream for ``POST path`` (a port-forward request target)."""
        if not self.relay_only:
            ticket, target = await self._ticket(path)
            if ticket is not None and target is not None:
                try:
                    node = await self._node_connection(target)
                    stream = await node.request("POST", path, [(HEADER, ticket)])
                except (StreamingError, CliError, OSError, TimeoutError) as exc:
                    self._fall_back(f"node {target.node} unreachable ({exc})")
                else:
                    self.direct_streams += 1
                    return stream
        self.relayed_streams += 1
        return await self._master.request("POST", path)

    def _fall_back(self, why: str) -> None:
        if not self.relay_only:
            self.relay_only = True
            print(f"nodectl: {escape(why)}: through the master from now on", file=sys.stderr)

    async def _ticket(self, path: str) -> tuple[str | None, NodeTarget | None]:
        body = json.dumps({"method": "POST", "target": path}).encode()
        stream = await self._master.request(
            "POST", "/v1/tickets", [("content-type", "application/json")], end_stream=False
        )
        await stream.write(body)
        await stream.end()
        await stream.response()
        data = await stream.read_all(TICKET_ANSWER_MAX_BYTES)
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if stream.status == 409:  # tickets are off in this cluster: the relay, silently
            self.relay_only = True
            return None, None
        if stream.status != 200 or not isinstance(answer, dict):
            message = (answer or {}).get("error", {}).get("message") if answer else None
            raise CliError(
                f"Error from server ({stream.status}): {escape(str(message or data[:200]))}"
            )
        ticket, node, endpoint = answer.get("ticket"), answer.get("node"), answer.get("endpoint")
        if not all(isinstance(v, str) and v for v in (ticket, node, endpoint)):
            raise CliError("the master's ticket answer is malformed")
        assert isinstance(ticket, str) and isinstance(node, str) and isinstance(endpoint, str)
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CliError(f"the master names a bad endpoint for node {escape(node)}")
        return ticket, NodeTarget(node, host.strip("[]"), int(port))

    async def _node_connection(self, target: NodeTarget) -> H2Connection:
        async with self._connecting:
            conn = self._node
            if conn is not None and not conn.closed.done() and not conn.mux.closed:
                if self._node_target == target:
                    return conn
                await conn.shutdown("the pod is on another node now", grace_s=1.0)
            async with asyncio.timeout(NODE_CONNECT_TIMEOUT_S):
                conn = await open_node(target, self._node_ctx)
            self._node, self._node_target = conn, target
            return conn

    async def close(self) -> None:
        if self._node is not None:
            await self._node.shutdown("done", grace_s=1.0)


async def port_forward(
    master: H2Connection,
    node_ctx: ssl.SSLContext,
    namespace: str,
    pod: str,
    pairs: list[PortPair],
    address: str,
    ready: Callable[[list[tuple[int, int]]], None] | None = None,
) -> None:
    """``nodectl_stream.port_forward_session``, its streams by ticket where possible."""
    streams = TicketStreams(master, node_ctx)
    try:
        await port_forward_session(
            master, namespace, pod, pairs, address, ready, open_stream=streams.open
        )
    finally:
        await streams.close()
