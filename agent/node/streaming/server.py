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
from collections.abc import Mapping
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
from agent.node.pods.manager import PodManager
from agent.node.runtime.base import Runtime
from agent.node.streaming.api import PortConnector, StreamingApi, connect_in_netns
from agent.pki.core import certs_from_pem, principal_of
from agent.proto.authz import Principal
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
    ) -> None:
        self._pods = pods
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
        return principal_of(peer_der, self._ca, proxied=headers)

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
