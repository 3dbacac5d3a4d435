"""The node's authenticated API on ``api_addr`` (default ``0.0.0.0:10250``): TLS with the node
certificate from the cluster CA, client certificates required.

Served only once the node holds a certificate (after registration). One TLS port speaks
HTTP/1.1 and HTTP/2, chosen per connection by ALPN, through the same edge as the master's API
(``agent.aio.edge``): ``/healthz`` and ``/v1/pods`` over both, exec, port-forward and logs
(``api.py``) over HTTP/2. Every request is authorized by the one table (docs/authorization.md):
administrators use every route, viewers read the pod list and logs, the master's proxy acts for
the user it names, other nodes' certificates are refused. A rotated node certificate is loaded
into the live TLS context, so new connections get it without a restart.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.aio.edge import (
    ApiRequest,
    ApiResponse,
    Edge,
    EdgeListener,
    json_response,
    text_response,
)
from agent.aio.logs import kv
from agent.aio.tls import server_context
from agent.config import split_host_port
from agent.errors import TicketError
from agent.node.pods.manager import PodManager
from agent.node.runtime.base import Runtime
from agent.node.streaming.api import PortConnector, StreamingApi, connect_in_netns
from agent.pki.core import certs_from_pem, principal_of, role_of_groups
from agent.pki.tickets import Verifier
from agent.proto import tickets
from agent.proto.authz import Principal, Role
from agent.proto.routes import NODE_ROUTES

log = logging.getLogger(__name__)

H2_SHUTDOWN_GRACE_S = 1.0


class NodeApi:
    def __init__(
        self,
        pods: PodManager,
        node_name: str,
        addr: str,
        *,
        streaming_runtime: Runtime | None = None,
        run_blocking: Any = None,
        port_connector: PortConnector = connect_in_netns,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pods = pods
        self._clock = clock
        # Tickets issued before this start are refused: the replay cache starts empty.
        self._started = clock()
        self._replay = tickets.ReplayCache()
        self._verifier = Verifier([])
        self._node_name = node_name
        self._host, self._port = split_host_port(addr, "api_addr")
        self._listener: EdgeListener | None = None
        self._ca: list[x509.Certificate] = []
        streaming = (
            StreamingApi(
                pods=pods,
                runtime=streaming_runtime,
                run_blocking=run_blocking,
                connect=port_connector,
            )
            if streaming_runtime is not None
            else None
        )
        self._edge = Edge(
            NODE_ROUTES,
            {"healthz": self._healthz, "pods.list": self._pods_list},
            gate=self,
            streams=streaming.handle if streaming is not None else None,
            owner=node_name,
        )

    @property
    def running(self) -> bool:
        return self._listener is not None

    def build_tls(self, cert: Path, key: Path, ca_pem: bytes) -> ssl.SSLContext:
        """Blocking (reads files): call through the thread bridge."""
        self._ca = certs_from_pem(ca_pem)
        self._verifier = Verifier(self._ca)
        return server_context(cert, key, client_ca_pems=[ca_pem], require_client_cert=True)

    async def start(self, tls: ssl.SSLContext) -> None:
        listener = EdgeListener(
            self._edge,
            tls,
            self._host,
            self._port,
            name="node-api",
        )
        await listener.start()
        self._listener = listener
        log.info(
            "node API serving",
            extra=kv(addr=f"{self._host}:{self._port}", streams=self._edge.streams is not None),
        )

    def reload_cert(self, cert: Path, key: Path) -> None:
        """Blocking: a rotated certificate for new connections."""
        if self._listener is not None:
            self._listener.tls.load_cert_chain(cert, key)

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # GOAWAY to every HTTP/2 client; running sessions get a short grace to finish.
            await listener.stop("node agent stopping", h2_grace_s=H2_SHUTDOWN_GRACE_S)

    # -- the edge's questions (agent.aio.edge.Gate) ------------------------------------------

    def principal(self, peer_der: bytes | None, headers: Mapping[str, str]) -> Principal:
        # The master's proxy is believed about the user it acts for (and only it is).
        token = headers.get(tickets.HEADER)
        if token is not None:
            return self._ticket_principal(peer_der, token)
        return principal_of(peer_der, self._ca, proxied=headers)

    def _ticket_principal(self, peer_der: bytes | None, token: str) -> Principal:
        """The user a master's ticket names, on that user's own connection: the certificate
        authenticated the connection, the ticket says what the master allowed it (its groups
        are the ones the authorization table is applied to). Checked here: the signature,
        the times, the node, the holder; used up here (single use, even when the request it
        comes with turns out not to be the one it allows: the edge checks that next)."""
        holder = principal_of(peer_der, self._ca)
        if holder.role not in (Role.ADMIN, Role.VIEWER, Role.USER):
            raise TicketError("a ticket is accepted only on a user's own connection")
        now = self._clock()
        ticket = self._verifier.verify(token, now)
        tickets.check_times(ticket, now, self._started)
        if ticket.node != self._node_name:
            raise TicketError(
                f"ticket {ticket.short_id} is for node {ticket.node!r}, not {self._node_name!r}"
            )
        if ticket.user != holder.name:
            raise TicketError(
                f"ticket {ticket.short_id} was issued to {ticket.user!r}, not {holder.name!r}"
            )
        self._replay.use(ticket, now)
        name = f"{ticket.user} (ticket {ticket.short_id} from the master)"
        return Principal(role_of_groups(ticket.groups), name, ticket.groups, ticket=ticket)

    def is_current(self, principal: Principal) -> bool:
        # The node keeps no registry: a certificate of the cluster CA naming this node is it.
        return True

    async def pod_node(self, namespace: str, pod: str) -> str | None:
        return self._node_name  # every pod this API knows runs here (Subject.API routes)

    # -- handlers ----------------------------------------------------------------------------

    async def _healthz(self, request: ApiRequest) -> ApiResponse:
        return text_response("ok")

    async def _pods_list(self, request: ApiRequest) -> ApiResponse:
        return json_response(
            {"apiVersion": "v1", "kind": "PodList", "items": self._pods.pod_list()}
        )
