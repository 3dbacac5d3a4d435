"""The master's streaming proxy: exec, port-forward and logs for users who only reach the master.

A user's HTTP/2 stream (``nodectl`` without ``--direct``) is authorized by the master's edge
(``agent.aio.edge``, the authorization table: logs for viewers, everything for administrators),
then relayed to a stream on the one HTTP/2 connection the master keeps per node, opened with the
master's proxy identity (``O=system:node-proxies``) and carrying the user's identity in
``node-agent-user`` / ``node-agent-groups`` headers; the node authorizes and audits that user,
and believes those headers only from the proxy identity.

Flow control is end to end: each direction reads a chunk, writes it on the other side, and only
then asks for the next chunk, which is when the credit of the previous one is returned. A slow
reader therefore stalls only its own stream. The node connections use a small stream window and
a large connection window so that many stalled streams cannot starve the others.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509

from agent.aio.edge import ApiRequest
from agent.aio.h2conn import H2Connection, H2Stream, connect
from agent.aio.logs import kv
from agent.aio.splice import StreamRelay
from agent.errors import BadGatewayError, ConnectionClosedError, StreamingError
from agent.pki.core import identity_of
from agent.pki.names import NODE_CN_PREFIX
from agent.proto.authz import GROUPS_HEADER, USER_HEADER
from agent.proto.h2mux import CLIENT_LIMITS

log = logging.getLogger(__name__)

NODE_LINK_LIMITS = CLIENT_LIMITS
_FORWARDED_HEADERS = ("content-type",)


class StreamingProxy:
    def __init__(
        self,
        *,
        pod_node: Callable[[str, str], Awaitable[str]],
        node_endpoint: Callable[[str], Awaitable[tuple[str, int]]],
        proxy_cert: Path,
        proxy_key: Path,
        ca_file: Path,
    ) -> None:
        self._pod_node = pod_node
        self._node_endpoint = node_endpoint
        self._proxy_cert = proxy_cert
        self._proxy_key = proxy_key
        self._ca_file = ca_file
        self._links: dict[str, H2Connection] = {}
        self._connecting: dict[str, asyncio.Lock] = {}

    # -- users ---------------------------------------------------------------------------

    async def handle(self, user: H2Stream, request: ApiRequest) -> None:
        """A stream route, already authorized by the edge (``agent.aio.edge``): relay it to the
        pod's node as the user (the node authorizes that user again and audits it)."""
        who = request.principal
        node = await self._pod_node(request.param("namespace"), request.param("pod"))
        link = await self._link(node)
        try:
            # Unambiguous: principal_of grants nothing to a certificate whose groups hold ","
            # or control characters (agent.pki.core.subject_problem), and the node splits on ",".
            upstream = await link.request(
                user.method,
                user.path,
                [(USER_HEADER, who.name), (GROUPS_HEADER, ",".join(who.groups))],
            )
        except ConnectionClosedError as exc:
            raise BadGatewayError(f"node {node}: {exc}") from exc
        try:
            await self._pump(user, upstream)
        except StreamingError:
            for side in (user, upstream):
                if not side.failed:
                    side.reset()

    async def _pump(self, user: H2Stream, upstream: H2Stream) -> None:
        """Relay both directions in the connections' read callbacks (``StreamRelay``: no
        task hand-off per chunk, BENCHMARKS.md "hop by hop"); returns once both ended. The
        user failing resets the node's side (a session that writes nothing, a shell waiting
        for input, would stay open there); the node's side failing raises, and ``handle``
        resets both."""
        # A user's request trailers are not relayed (the task relay never did): nothing of the
        # user's reaches the node but the body and the headers the proxy sets.
        up = StreamRelay(user, upstream, trailers=False)
        up.start()
        try:
            headers = await upstream.response()
            await user.respond(
                upstream.status, [(k, v) for k, v in headers if k in _FORWARDED_HEADERS]
            )
            down = StreamRelay(upstream, user, trailers=True)
            down.start()
            await down.done
            if down.error is not None:
                raise down.error
            # The user's side may still be sending (port-forward half-close): wait for it.
            await up.done
        finally:
            if not up.done.done() and not upstream.failed:
                upstream.reset()  # cancelled or failed: nothing outlives the request

    # -- node links ----------------------------------------------------------------------

    def _client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self._ca_file))
        ctx.check_hostname = False  # the node's identity is checked by name below
        ctx.load_cert_chain(self._proxy_cert, self._proxy_key)
        return ctx

    async def _link(self, node: str) -> H2Connection:
        link = self._links.get(node)
        if link is not None and not link.closed.done() and not link.mux.closed:
            return link
        lock = self._connecting.setdefault(node, asyncio.Lock())
        async with lock:
            link = self._links.get(node)
            if link is not None and not link.closed.done() and not link.mux.closed:
                return link
            host, port = await self._node_endpoint(node)
            try:
                link = await connect(
                    host,
                    port,
                    self._client_context(),
                    server_hostname="",
                    limits=NODE_LINK_LIMITS,
                    name=f"proxy:{node}",
                )
            except ConnectionClosedError as exc:
                raise BadGatewayError(f"node {node} ({host}:{port}) unreachable: {exc}") from exc
            der = link.peer_cert_der
            got = identity_of(x509.load_der_x509_certificate(der)).common_name if der else ""
            if got != NODE_CN_PREFIX + node:
                await link.shutdown("wrong node")
                raise BadGatewayError(f"{host}:{port} is {got!r}, not node {node!r}")
            self._links[node] = link
            log.info("streaming link to node opened", extra=kv(node=node, addr=f"{host}:{port}"))
            return link

    async def close(self) -> None:
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.shutdown("master stopping", grace_s=1.0) for link in links))
