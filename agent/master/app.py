"""The master daemon's composition root: loads the store, PKI and registry, builds the managers
and orders them under one supervisor (the daemon's one TaskGroup).

Managers, in start order: ``watchdog`` (systemd's ``WATCHDOG=1``), ``node-records`` (the
registry's record cache follows the store's watch, so another master's changes reach this
one); on etcd (several masters) ``renewals-follow`` and ``renewals-report`` (the lease renewals
each master receives, shared: agent.master.renewals), ``leader-election`` (agent.master.leader;
its stop resigns) and ``compaction`` (the leader's); then ``scheduler``, ``eviction`` (the
leader's), ``registration-expiry`` (the leader's: drops registrations left waiting past their
time-to-live),
``loop-lag`` (the event-loop lag sampler behind the API's metrics), ``reload`` (SIGHUP reloads
``master.toml``: a valid file replaces the registration policy without dropping a connection; a
bad one is logged and the running policy stays), ``api`` (one port, both protocols; ``READY=1``
once it listens). SIGTERM/SIGINT (or a failed task) stops them in reverse order, each step
bounded by ``STOP_STEP_TIMEOUT_S``; the store and the thread bridge are closed last. Each loop
is an eternal task: one that returns fails the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent import __version__
from agent.aio.bridge import ThreadBridge
from agent.aio.edge import Edge, EdgeListener
from agent.aio.logs import kv
from agent.aio.private import tighten_tree
from agent.aio.sdnotify import Notifier, SystemdNotifier
from agent.aio.tasks import Lifecycle, Manager, Supervisor, TaskScope
from agent.aio.tls import server_context
from agent.errors import BadGatewayError, ConfigError, NotFoundError, StoreError
from agent.master.api import MasterApi
from agent.master.cluster_ca import ROTATION_MARK, check_cluster_ca
from agent.master.config import MasterConfig, load_master_config
from agent.master.leader import EtcdElection, Leadership, SoleLeader
from agent.master.pki_files import ClusterPki, ensure_master_mark, write_proxy_identity
from agent.master.pods import PodStore
from agent.master.proxy import StreamingProxy
from agent.master.registry import NodeRegistry
from agent.master.renewals import RenewalExchange
from agent.master.store.base import Store
from agent.master.store.etcd import EtcdStore, tls_context
from agent.master.store.sqlite import SqliteStore
from agent.master.tickets import TicketIssuer, read_signer
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
STOP_STEP_TIMEOUT_S = 10.0
WATCHDOG_FALLBACK_S = 10.0
COMPACT_CHECK_S = 10.0  # how often the leader looks whether the etcd history is due a compaction
RESIGN_TIMEOUT_S = 2.0  # a clean stop revokes the leader's lease: bounded, etcd may be away
# The API starts once the election and the renewals' watch have first heard from etcd (so that
# the first renewals are not refused with 503), waiting this long at most for each.
FIRST_TOUCH_WAIT_S = 5.0


def read_client_cas(config: MasterConfig) -> list[x509.Certificate]:
    """The external fleet CAs of the client-cert rule (blocking read)."""
    path = config.registration.client_ca_file
    if path is None:
        return []
    try:
        return certs_from_pem(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"client_ca_file {path}: {exc}") from exc


class Signals(Protocol):
    """Where the daemon's signal handlers go: the running loop (tests give a fake, so that no
    real handler replaces the test runner's)."""

    def add_signal_handler(self, sig: int, callback: Callable[[], object]) -> None: ...

    def remove_signal_handler(self, sig: int) -> bool: ...


class Master:
    def __init__(
        self,
        config: MasterConfig,
        *,
        notifier: Notifier | None = None,
        signals: Signals | None = None,
    ) -> None:
        self.config = config
        self.bridge = ThreadBridge(STORE_THREADS, name="store")
        self.notifier = notifier or SystemdNotifier.from_env()
        self._signals = signals
        self.supervisor = Supervisor()
        self._stop = asyncio.Event()
        self._store_opened: Store | None = None
        self.reload_requested = asyncio.Event()
        self.policy_reloaded = asyncio.Event()  # wakes the registration expiry

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        signals = self._signals or asyncio.get_running_loop()
        handlers = {
            signal.SIGTERM: self.request_stop,
            signal.SIGINT: self.request_stop,
            signal.SIGHUP: self.reload_requested.set,
        }
        for sig, handler in handlers.items():
            signals.add_signal_handler(sig, handler)
        store: Store | None = None
        try:
            store, managers = await self._compose()
            lifecycle = Lifecycle(managers, step_timeout_s=STOP_STEP_TIMEOUT_S)

            async def start() -> None:
                await lifecycle.start()
                _settle_gc()

            async with self.supervisor as supervisor:
                starting = supervisor.start_guarded("start", start)
                try:
                    await self._stop.wait()
                finally:
                    starting.cancel()
                    await asyncio.wait({starting})
                    await lifecycle.stop()
        finally:
            for sig in handlers:
                signals.remove_signal_handler(sig)
            store = store or self._store_opened  # _compose may fail after opening it
            if store is not None:
                await store.close()
            self.bridge.close()
            log.info("node master stopped")

    async def _open_store(self) -> Store:
        """The ``[store]`` backend: SQLite in the data dir, or etcd (StoreError naming the
        endpoints when none answers: the master does not start)."""
        cfg = self.config
        if cfg.store.backend != "etcd":
            return await SqliteStore.open(
                cfg.data_dir / STORE_FILE, self.bridge, history=cfg.store_history_revisions
            )
        tls = None
        if cfg.store.endpoints[0].startswith("https://"):
            try:
                tls = await self.bridge.run(
                    tls_context, cfg.store.ca_file, cfg.store.cert_file, cfg.store.key_file
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"[store] TLS files: {exc}") from exc
        store = await EtcdStore.open(
            cfg.store.endpoints,
            prefix=cfg.store.prefix,
            tls=tls,
            history=cfg.store_history_revisions,
        )
        log.info(
            "store: etcd",
            extra=kv(endpoints=",".join(cfg.store.endpoints), prefix=cfg.store.prefix),
        )
        return store

    async def _compose(self) -> tuple[Store, list[Manager]]:
        """Load what the managers need (store, PKI, registry) and build them, in start order."""
        cfg = self.config
        scope = self.supervisor.scope
        # Private files: what an older version, a restored backup or an operator loosened is
        # made owner-only again, each path named in a warning (agent.aio.private).
        await self.bridge.run(tighten_tree, cfg.data_dir)
        pki = await self.bridge.run(ClusterPki.load, cfg.pki_dir)
        remarked = await self.bridge.run(ensure_master_mark, pki)
        if remarked is not None:
            # An upgrade from before the mark: agents of this version refuse a master without
            # it, so the master (which holds the CA) re-issues its own certificate first.
            log.warning(
                "serving certificate re-issued with the master's mark",
                extra=kv(cert=str(pki.serving_cert_path), names=",".join(remarked)),
            )
        client_cas = await self.bridge.run(read_client_cas, cfg)
        store = self._store_opened = await self._open_store()
        # Replicas share the first master's CA; `init --force` leaves a mark that rotates it.
        mark = pki.ca_cert_path.parent / ROTATION_MARK
        rotation = await self.bridge.run(_read_mark, mark)
        await check_cluster_ca(store, pki.ca_cert, rotation)
        if rotation is not None:
            await self.bridge.run(functools.partial(mark.unlink, missing_ok=True))
        self.registry = NodeRegistry(store, pki, cfg, client_cas)
        await self.registry.load()
        self.pods = PodStore(store, self.registry)
        self.api = MasterApi(
            self.registry, self.pods, cfg.registration.trusted_proxies, self.bridge.run
        )
        # Who leads (agent.master.leader) and, with several masters, the renewals they share.
        identity = f"{socket.gethostname()}:{cfg.port}"
        election_managers: list[Manager] = []
        self.leadership: Leadership = SoleLeader(identity)
        if isinstance(store, EtcdStore):
            election = EtcdElection(store, identity, int(cfg.store.leader_lease_ttl_s))
            store.may_compact = election.is_leader
            renewals = RenewalExchange(store, self.registry, identity, on_ready=self.pods.kick.set)
            self.registry.view_since = functools.partial(
                _in_view_since, election.in_touch_since, renewals.since
            )
            self.leadership = election
            self.api.renewals_refused = functools.partial(_renewals_refused, election, renewals)
            election_managers = [
                ReadyLoop(
                    "renewals-follow", renewals.follow, scope("renewals-follow"), renewals.following
                ),
                RenewalReports(renewals, scope("renewals-report")),
                Election(election, scope("leader-election"), election.touched),
                LoopManager(
                    "compaction",
                    functools.partial(_compact_as_leader, store, election),
                    scope("compaction"),
                ),
            ]
        self.api.leadership = self.leadership
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
        self.api.tickets = TicketIssuer(
            signer=await self.bridge.run(read_signer, proxy_cert, proxy_key),
            pod_node=self._pod_node,
            node_endpoint=self._node_endpoint,
            enabled=lambda: self.config.direct_tickets != "never",  # follows a SIGHUP reload
        )
        # One edge, one set of handlers, both protocols: every JSON route over HTTP/1.1
        # (aiohttp) and HTTP/2; the stream routes (the proxy) over HTTP/2.
        edge = Edge(MASTER_ROUTES, self.api.handlers, gate=self.api, streams=self.proxy.handle)
        serving = kv(
            version=__version__,
            listen=cfg.listen,
            pin=pki.pin,
            trust=",".join(cfg.registration.trust),
        )
        managers: list[Manager] = [
            SystemdWatchdog(self.notifier, scope("watchdog")),
            LoopManager("node-records", self.registry.follow, scope("node-records")),
            *election_managers,
            Scheduler(self.pods, scope("scheduler")),
            Eviction(
                self.pods,
                min(EVICTION_CHECK_S, cfg.lease_renew_s),
                scope("eviction"),
                self.leadership,
            ),
            RegistrationExpiry(
                self.registry,
                scope("registration-expiry"),
                self.policy_reloaded,
                leadership=self.leadership,
            ),
            LoopManager("loop-lag", self.api.sample_loop_lag, scope("loop-lag")),
            PolicyReload(self, scope("reload")),
            ApiServer(edge, self.proxy, self.tls, cfg, self.notifier, serving),
        ]
        return store, managers

    async def _pod_node(self, namespace: str, name: str) -> str:
        node = await self.api.pod_node(namespace, name)
        if node is None:
            raise NotFoundError(f"pod {namespace}/{name} is not bound to a node yet")
        return node

    async def _node_endpoint(self, node: str) -> tuple[str, int]:
        endpoint = self.registry.api_endpoint(node)  # validated when the node reported it
        if endpoint is None:
            raise BadGatewayError(f"node {node} has not reported its API endpoint")
        return endpoint

    async def reload_policy(self) -> None:
        """Re-read ``master.toml``; a bad file is logged and the running policy stays."""
        path = self.config.path
        if path is None:
            return
        try:
            fresh = await self.bridge.run(load_master_config, path)
            client_cas = await self.bridge.run(read_client_cas, fresh)
        except ConfigError as exc:
            log.error("policy reload rejected; the running policy stays", extra=kv(error=str(exc)))
            return
        for ca in client_cas:
            # New fleet CAs are added to the live TLS context; removing one needs a restart.
            with contextlib.suppress(ValueError):
                self.tls.load_verify_locations(cadata=ca.public_bytes(Encoding.PEM).decode())
        self.registry.config = fresh
        self.registry.client_cas = client_cas
        self.config = fresh
        self.policy_reloaded.set()
        log.info("policy reloaded", extra=kv(trust=",".join(fresh.registration.trust)))


def _in_view_since(
    election: Callable[[], float | None], renewals: Callable[[], float | None]
) -> float | None:
    """Since when this master sees every renewal: in touch with the election and following
    the other masters' reports, both without a break (the later start); None if either is
    broken."""
    touch, follow = election(), renewals()
    if touch is None or follow is None:
        return None
    return max(touch, follow)


def _renewals_refused(election: Leadership, renewals: RenewalExchange) -> str:
    """Why this master cannot take a renewal now: out of touch with the election, or unable
    to pass renewals on to the other masters ('' when it can)."""
    if election.in_touch_since() is None:
        return election.unknown() or "out of touch with the store"
    return renewals.refused()


def _read_mark(path: Path) -> str | None:
    """The CA rotation mark's fingerprint, None without one."""
    try:
        return path.read_text().strip()[:128]
    except FileNotFoundError:
        return None


async def _compact_as_leader(store: EtcdStore, leadership: Leadership) -> None:
    """The leader compacts etcd's history (every master's writes counted); the others never."""
    while True:
        await asyncio.sleep(COMPACT_CHECK_S)
        if not leadership.is_leader():
            continue
        try:
            await store.compact_if_due()
        except StoreError as exc:
            log.warning("compaction failed; tried again later", extra=kv(error=str(exc)))


def _settle_gc() -> None:
    """Everything loaded so far lives as long as the process: keep it out of the cyclic GC's
    generations, and collect the young generation less often (thousands of connections'
    short-lived objects made gen-2 passes the longest pauses of the loop)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)


class LoopManager:
    """A manager that runs one eternal loop in its own TaskScope."""

    def __init__(self, name: str, loop: Callable[[], Awaitable[None]], tasks: TaskScope) -> None:
        self.name = name
        self._loop = loop
        self._tasks = tasks

    async def start(self) -> None:
        await self._tasks.start()
        self._tasks.spawn(self.name, self._loop, eternal=True)

    async def stop(self) -> None:
        await self._tasks.stop()


class Scheduler(LoopManager):
    """Places pending pods when kicked (a node became Ready, a pod was applied) and at least
    every ``SCHEDULE_INTERVAL_S``; then removes the terminating pods past their deadline."""

    def __init__(self, pods: PodStore, tasks: TaskScope) -> None:
        super().__init__("scheduler", self._schedule, tasks)
        self._pods = pods

    async def _schedule(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pods.kick.wait(), SCHEDULE_INTERVAL_S)
            self._pods.kick.clear()
            try:
                await self._pods.schedule_pending()
                await self._pods.finalize_deletions()  # terminating pods past their deadline
            except StoreError as exc:  # etcd away: the master lives on, tries next round
                log.warning("scheduling round failed; tried again", extra=kv(error=str(exc)))


class Eviction(LoopManager):
    """Moves scheduler-placed pods off nodes NotReady past the eviction time-out: on the
    leader only (agent.master.leader); a store failure is logged and tried next round."""

    def __init__(
        self,
        pods: PodStore,
        interval_s: float,
        tasks: TaskScope,
        leadership: Leadership | None = None,
    ) -> None:
        super().__init__("eviction", self._evict, tasks)
        self._pods = pods
        self._interval_s = interval_s
        self._leadership = leadership or SoleLeader("")

    async def _evict(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if not self._leadership.is_leader():
                continue
            try:
                await self._pods.evict_from_unready_nodes()
            except StoreError as exc:
                log.warning("eviction round failed; tried again", extra=kv(error=str(exc)))


class RegistrationExpiry(LoopManager):
    """Drops the registrations left waiting for an administrator past
    ``pending_registration_ttl_s``, looking every quarter of it (at most every minute), and at
    once when ``wake`` is set (a policy reload: its time-to-live may be shorter now).
    ``pause`` is injectable for tests."""

    def __init__(
        self,
        registry: NodeRegistry,
        tasks: TaskScope,
        wake: asyncio.Event | None = None,
        pause: Callable[[float], Awaitable[None]] | None = None,
        *,
        leadership: Leadership | None = None,
    ) -> None:
        super().__init__("registration-expiry", self._expire, tasks)
        self._registry = registry
        self._wake = wake or asyncio.Event()
        self._pause = pause or self._until_woken
        self._leadership = leadership or SoleLeader("")

    async def _until_woken(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _expire(self) -> None:
        while True:
            await self._pause(self._registry.expiry_check_s())
            if not self._leadership.is_leader():
                continue  # the leader expires them (agent.master.leader)
            try:
                await self._registry.expire_pending()
            except StoreError as exc:
                log.warning("registration expiry failed; tried again", extra=kv(error=str(exc)))


class ReadyLoop(LoopManager):
    """A loop whose start waits (``FIRST_TOUCH_WAIT_S`` at most) until it sets ``ready``."""

    def __init__(
        self,
        name: str,
        loop: Callable[[], Awaitable[None]],
        tasks: TaskScope,
        ready: asyncio.Event,
    ) -> None:
        super().__init__(name, loop, tasks)
        self._ready = ready

    async def start(self) -> None:
        await super().start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_TOUCH_WAIT_S):
                await self._ready.wait()


class RenewalReports(LoopManager):
    """The renewals' reports to the other masters; stopping removes this master's key."""

    def __init__(self, renewals: RenewalExchange, tasks: TaskScope) -> None:
        super().__init__("renewals-report", renewals.report, tasks)
        self._renewals = renewals

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RESIGN_TIMEOUT_S):
                await self._renewals.withdraw()


class Election(ReadyLoop):
    """The leader election's loop (agent.master.leader); stopping it resigns, so that another
    master leads at once instead of after the lease's TTL."""

    def __init__(self, leadership: Leadership, tasks: TaskScope, touched: asyncio.Event) -> None:
        super().__init__("leader-election", leadership.run, tasks, touched)
        self._leadership = leadership

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RESIGN_TIMEOUT_S):
                await self._leadership.resign()


class SystemdWatchdog(LoopManager):
    def __init__(self, notifier: Notifier, tasks: TaskScope) -> None:
        super().__init__("watchdog", self._pet, tasks)
        self._notifier = notifier

    async def _pet(self) -> None:
        interval_s = self._notifier.watchdog_interval_s() or WATCHDOG_FALLBACK_S
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval_s)


class PolicyReload(LoopManager):
    """Reloads the policy on each SIGHUP (the master sets its reload event)."""

    def __init__(self, master: Master, tasks: TaskScope) -> None:
        super().__init__("reload", self._follow, tasks)
        self._master = master

    async def _follow(self) -> None:
        while True:
            await self._master.reload_requested.wait()
            self._master.reload_requested.clear()
            await self._master.reload_policy()


class ApiServer:
    """The master's one port: HTTP/1.1 (aiohttp) and HTTP/2 by ALPN, through one edge.
    Started last (``READY=1`` once it listens), stopped first (``STOPPING=1``, no new
    connections, then requests and watches are given ``SHUTDOWN_GRACE_S`` and closed, then
    the proxy's links to the nodes)."""

    name = "api"

    def __init__(
        self,
        edge: Edge,
        proxy: StreamingProxy,
        tls: ssl.SSLContext,
        config: MasterConfig,
        notifier: Notifier,
        serving: dict[str, object],
    ) -> None:
        self._proxy = proxy
        self._notifier = notifier
        self._serving = serving
        # Watches are long-lived streams: on shutdown give requests a moment, then close them
        # (agents reconnect and resume from their resource version). A fleet reconnecting
        # after a restart arrives at once: asyncio's default backlog of 100 made the kernel
        # reset connections.
        self.listener = EdgeListener(
            edge,
            tls,
            config.host,
            config.port,
            name="master-api",
            backlog=LISTEN_BACKLOG,
            shutdown_grace_s=SHUTDOWN_GRACE_S,
        )

    async def start(self) -> None:
        await self.listener.start()
        log.info("node master serving", extra=self._serving)
        self._notifier.ready("serving")

    async def stop(self) -> None:
        self._notifier.stopping()
        await self.listener.stop("node master stopping")
        await self._proxy.close()
