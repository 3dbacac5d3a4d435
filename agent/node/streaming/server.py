"""The node's authenticated API on ``api_addr`` (default ``0.0.0.0:10250``): TLS with the node
certificate from the cluster CA, client certificates required.

Served only once the node holds a certificate (after registration). One TLS port speaks
HTTP/1.1 (aiohttp: ``/healthz``, ``/v1/pods``) and HTTP/2 (exec, port-forward, logs and
``/v1/pods``; ``streaming.py``), chosen per connection by ALPN. Authorization is per request:
administrators (``O=system:masters``) may use it; other nodes' certificates may not. A rotated
node certificate is loaded into the live TLS context, so new connections get it without a
restart.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from agent.aio.h2conn import HANDSHAKE_TIMEOUT_S, AlpnSwitch, H2Connection, serve_factory
from agent.aio.logs import kv
from agent.aio.tls import server_context
from agent.config import split_host_port
from agent.errors import PkiError
from agent.node.pods.manager import PodManager
from agent.node.runtime.base import Runtime
from agent.node.streaming.api import StreamingApi
from agent.pki.core import authenticate, certs_from_pem

log = logging.getLogger(__name__)


class NodeApi:
    def __init__(
        self,
        pods: PodManager,
        node_name: str,
        addr: str,
        *,
        streaming_runtime: Runtime | None = None,
        run_blocking: Any = None,
    ) -> None:
        self._pods = pods
        self._node_name = node_name
        self._host, self._port = split_host_port(addr, "api_addr")
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._ca: list[x509.Certificate] = []
        self._h2_connections: set[H2Connection] = set()
        self._streaming = (
            StreamingApi(
                pods=pods,
                runtime=streaming_runtime,
                run_blocking=run_blocking,
                node_name=node_name,
                cas=lambda: self._ca,
            )
            if streaming_runtime is not None
            else None
        )

    @property
    def running(self) -> bool:
        return self._runner is not None

    def build_tls(self, cert: Path, key: Path, ca_pem: bytes) -> ssl.SSLContext:
        """Blocking (reads files): call through the thread bridge."""
        self._ca = certs_from_pem(ca_pem)
        return server_context(cert, key, client_ca_pems=[ca_pem], require_client_cert=True)

    async def start(self, tls: ssl.SSLContext) -> None:
        self._tls = tls
        app = web.Application(middlewares=[self._authorize])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/pods", self._pods_list)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        http1 = self._runner.server
        assert http1 is not None
        factory: Any = http1
        if self._streaming is not None:
            tls.set_alpn_protocols(["h2", "http/1.1"])
            make_h2 = serve_factory(self._streaming.handle, name="node-api")

            def h2_connection() -> H2Connection:
                conn: H2Connection = make_h2()
                self._h2_connections.add(conn)
                conn.closed.add_done_callback(lambda _: self._h2_connections.discard(conn))
                return conn

            factory = lambda: AlpnSwitch(h2_connection, http1)  # noqa: E731
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=tls,
            reuse_address=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
        )
        log.info(
            "node API serving",
            extra=kv(addr=f"{self._host}:{self._port}", http2=self._streaming is not None),
        )

    def reload_cert(self, cert: Path, key: Path) -> None:
        """Blocking: a rotated certificate for new connections."""
        if self._tls is not None:
            self._tls.load_cert_chain(cert, key)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        # GOAWAY to every HTTP/2 client; running sessions get a short grace to finish.
        await asyncio.gather(
            *(conn.shutdown("node agent stopping", grace_s=1.0) for conn in self._h2_connections)
        )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _authorize(self, request: web.Request, handler: object) -> web.StreamResponse:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            ident = authenticate(der, self._ca)
        except PkiError as exc:
            return web.json_response(
                {"error": {"code": 401, "message": str(exc), "details": {}}}, status=401
            )
        if not ident.is_admin:
            who = ident.node_name or ident.common_name
            return web.json_response(
                {
                    "error": {
                        "code": 403,
                        "message": f"{who!r} may not use node {self._node_name!r}'s API",
                        "details": {},
                    }
                },
                status=403,
            )
        assert callable(handler)
        response: web.StreamResponse = await handler(request)
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _pods_list(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"apiVersion": "v1", "kind": "PodList", "items": self._pods.pod_list()}
        )
