"""The master daemon's composition root: store, PKI, registry, pods, API, under one TaskGroup.

SIGHUP reloads ``master.toml``: a valid file replaces the registration policy without dropping a
connection; a bad one is logged and the running policy stays. SIGTERM/SIGINT stop gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent import __version__
from agent.aio.bridge import ThreadBridge
from agent.aio.edge import Edge
from agent.aio.h2conn import HANDSHAKE_TIMEOUT_S, AlpnSwitch, serve_factory
from agent.aio.logs import kv
from agent.aio.sdnotify import SystemdNotifier
from agent.aio.tasks import start_guarded
from agent.aio.tls import server_context
from agent.errors import BadGatewayError, ConfigError, NotFoundError
from agent.master.api import MasterApi
from agent.master.config import MasterConfig, load_master_config
from agent.master.pki_files import ClusterPki, write_proxy_identity
from agent.master.pods import PodStore
from agent.master.proxy import StreamingProxy
from agent.master.registry import NodeRegistry
from agent.master.store.sqlite import SqliteStore
from agent.pki.core import certs_from_pem
from agent.proto.routes import MASTER_ROUTES

log = logging.getLogger(__name__)

STORE_FILE = "store.db"
SCHEDULE_INTERVAL_S = 5.0
EVICTION_CHECK_S = 5.0
GC_GEN0_THRESHOLD = 20_000
LISTEN_BACKLOG = 4096
STORE_THREADS = 4
SHUTDOWN_GRACE_S = 2.0


class _ShutdownRequested(Exception):
    pass


def read_client_cas(config: MasterConfig) -> list[x509.Certificate]:
    """The external fleet CAs of the client-cert rule (blocking read)."""
    path = config.registration.client_ca_file
    if path is None:
        return []
    try:
        return certs_from_pem(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"client_ca_file {path}: {exc}") from exc


class Master:
    def __init__(self, config: MasterConfig) -> None:
        self.config = config
        self.bridge = ThreadBridge(STORE_THREADS, name="store")
        self.notifier = SystemdNotifier.from_env()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        cfg = self.config
        pki = await self.bridge.run(ClusterPki.load, cfg.pki_dir)
        client_cas = await self.bridge.run(read_client_cas, cfg)
        store = await SqliteStore.open(
            cfg.data_dir / STORE_FILE, self.bridge, history=cfg.store_history_revisions
        )
        self.registry = NodeRegistry(store, pki, cfg, client_cas)
        await self.registry.load()
        self.pods = PodStore(store, self.registry)
        self.api = MasterApi(self.registry, self.pods, cfg.registration.trusted_proxies)
        ca_pems = [await self.bridge.run(pki.ca_cert_path.read_bytes)] + [
            c.public_bytes(Encoding.PEM) for c in client_cas
        ]
        self.tls = await self.bridge.run(
            functools.partial(
                server_context,
                pki.serving_cert_path,
                pki.serving_key_path,
                client_ca_pems=ca_pems,
                require_client_cert=False,
                alpn=("h2", "http/1.1"),
            )
        )
        proxy_cert, proxy_key = await self.bridge.run(write_proxy_identity, pki, cfg.pki_dir)
        self.proxy = StreamingProxy(
            pod_node=self._pod_node,
            node_endpoint=self._node_endpoint,
            proxy_cert=proxy_cert,
            proxy_key=proxy_key,
            ca_file=pki.ca_cert_path,
        )
        # One edge, one set of handlers, both protocols: every JSON route over HTTP/1.1
        # (aiohttp) and HTTP/2; the stream routes (the proxy) over HTTP/2.
        edge = Edge(MASTER_ROUTES, self.api.handlers, gate=self.api, streams=self.proxy.handle)
        # Watches are long-lived streams: on shutdown give requests a moment, then close them
        # (agents reconnect and resume from their resource version).
        runner = web.AppRunner(
            edge.aiohttp_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_GRACE_S,
        )
        await runner.setup()
        http1 = runner.server
        assert http1 is not None
        make_h2 = serve_factory(edge.serve_h2, name="master-api")
        # One port for both protocols, chosen per connection by ALPN.
        server = await loop.create_server(
            lambda: AlpnSwitch(make_h2, http1),
            cfg.host,
            cfg.port,
            ssl=self.tls,
            reuse_address=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
            # A fleet reconnecting after a restart arrives at once; asyncio's default backlog
            # of 100 made the kernel reset connections (the kernel caps it at somaxconn).
            backlog=LISTEN_BACKLOG,
        )
        log.info(
            "node master serving",
            extra=kv(
                version=__version__,
                listen=cfg.listen,
                pin=pki.pin,
                trust=",".join(cfg.registration.trust),
            ),
        )
        # Everything loaded so far lives as long as the process: keep it out of the cyclic GC's
        # generations, and collect the young generation less often (thousands of connections'
        # short-lived objects made gen-2 passes the longest pauses of the loop).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)
        self.notifier.ready("serving")
        try:
            async with asyncio.TaskGroup() as group:
                start_guarded(group, "scheduler", self._schedule_loop)
                start_guarded(group, "eviction", self._eviction_loop)
                start_guarded(group, "loop-lag", self.api.sample_loop_lag)
                start_guarded(group, "reload", self._reload_loop)
                start_guarded(group, "watchdog", self._watchdog_loop)
                group.create_task(self._wait_stop(), name="shutdown-watch")
        except* _ShutdownRequested:
            pass
        finally:
            self.notifier.stopping()
            server.close()
            await self.proxy.close()
            await runner.cleanup()
            await store.close()
            self.bridge.close()
            log.info("node master stopped")

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        raise _ShutdownRequested

    async def _pod_node(self, namespace: str, name: str) -> str:
        node = await self.api.pod_node(namespace, name)
        if node is None:
            raise NotFoundError(f"pod {namespace}/{name} is not bound to a node yet")
        return node

    async def _node_endpoint(self, node: str) -> tuple[str, int]:
        found = await self.registry.get_record(node)
        endpoint = str(found[0].get("apiEndpoint") or "") if found else ""
        if not endpoint:
            raise BadGatewayError(f"node {node} has not reported its API endpoint")
        host, _, port = endpoint.rpartition(":")
        return host.strip("[]"), int(port)

    async def _schedule_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pods.kick.wait(), SCHEDULE_INTERVAL_S)
            self.pods.kick.clear()
            await self.pods.schedule_pending()

    async def _eviction_loop(self) -> None:
        while True:
            await asyncio.sleep(min(EVICTION_CHECK_S, self.config.lease_renew_s))
            await self.pods.evict_from_unready_nodes()

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval_s() or 10.0
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _reload_loop(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            path = self.config.path
            if path is None:
                continue
            try:
                fresh = await self.bridge.run(load_master_config, path)
                client_cas = await self.bridge.run(read_client_cas, fresh)
            except ConfigError as exc:
                log.error(
                    "policy reload rejected; the running policy stays", extra=kv(error=str(exc))
                )
                continue
            for ca in client_cas:
                # New fleet CAs are added to the live TLS context; removing one needs a restart.
                with contextlib.suppress(ValueError):
                    self.tls.load_verify_locations(cadata=ca.public_bytes(Encoding.PEM).decode())
            self.registry.config = fresh
            self.registry.client_cas = client_cas
            self.config = fresh
            log.info("policy reloaded", extra=kv(trust=",".join(fresh.registration.trust)))
