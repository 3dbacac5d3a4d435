"""The master's composition root (``agent.master.app``) run in-process on loopback: a cluster PKI
made by ``node-master init``'s code, a ``master.toml`` and an SQLite store in a tmp dir, a
free loopback port, and a notifier that records what systemd would be told.

What is held here: ``/healthz`` over both protocols on the one port; the managers' start order
and reverse stop order, with the store and the thread bridge closed after the last of them; a
stop through the stop event or a signal, and an eternal loop that returns failing the daemon
(in order too); GOAWAY to HTTP/2 clients at stop; the signal handlers installed and removed (on
a fake: no real handler may replace the test runner's); SIGHUP's policy reload (a valid file
changes the trust rules, a bad one is logged and the running policy stays, a new fleet CA
reaches the live TLS context); what the proxy is told about pods and nodes (an unbound pod is
404, a node without an endpoint 502, an IPv6 endpoint); the scheduler and eviction loops at
work; the watchdog's pets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.aio.tasks import Manager
from agent.errors import ConfigError, NotFoundError, TaskEndedError
from agent.master.app import (
    EVICTION_CHECK_S,
    GC_GEN0_THRESHOLD,
    LoopManager,
    Master,
    SqliteStore,
    read_client_cas,
)
from agent.master.config import MasterConfig, RegistrationPolicy, load_master_config
from agent.master.pki_files import ClusterPki
from agent.pki.core import PrivateKey, cert_to_pem, create_ca, generate_key
from tests.helpers import free_port
from tests.unit.master import wire
from tests.unit.master.rig import NodeKey, make_cluster_pki, registration
from tests.unit.master.test_pods import manifest
from tests.unit.master.wire import H1, H2, HOST, PROTOCOLS, Client, TlsSet
from tests.unit.node.asyncwait import DEADLINE_S, until
from tests.unit.node.test_app import RecordingNotifier as NodeRecordingNotifier

pytestmark = pytest.mark.usefixtures("blockbuster")

MANAGERS = [
    "watchdog",
    "node-records",
    "scheduler",
    "eviction",
    "registration-expiry",
    "loop-lag",
    "reload",
    "api",
]
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FLEET_NODE = "fleet-node"


class RecordingNotifier(NodeRecordingNotifier):
    """What systemd would be told, in order; ``interval_s``: the watchdog's (None: unset)."""

    def __init__(self, interval_s: float | None = None) -> None:
        super().__init__()
        self.interval_s = interval_s

    def watchdog_interval_s(self) -> float | None:
        return self.interval_s


class FakeSignals:
    """Where the master puts its signal handlers instead of the loop (no real handler may
    replace the test runner's); ``deliver`` is the signal arriving."""

    def __init__(self) -> None:
        self.handlers: dict[int, Callable[[], object]] = {}

    def add_signal_handler(self, sig: int, callback: Callable[[], object]) -> None:
        self.handlers[sig] = callback

    def remove_signal_handler(self, sig: int) -> bool:
        return self.handlers.pop(sig, None) is not None

    def deliver(self, sig: int) -> None:
        self.handlers[sig]()


@dataclass
class Watched:
    """A manager whose start and stop are written down in ``order``."""

    inner: Manager
    order: list[str]

    @property
    def name(self) -> str:
        return self.inner.name

    async def start(self) -> None:
        self.order.append(f"start {self.name}")
        await self.inner.start()

    async def stop(self) -> None:
        self.order.append(f"stop {self.name}")
        await self.inner.stop()


ExtraManager = Callable[[Master], Manager]


class WatchedMaster(Master):
    """The real master, its managers watched (and ``extra`` ones after them), and the closing
    of its store and thread bridge written down in the same ``order``."""

    def __init__(
        self, config: MasterConfig, notifier: RecordingNotifier, extra: tuple[ExtraManager, ...]
    ) -> None:
        self.signals = FakeSignals()
        super().__init__(config, notifier=notifier, signals=self.signals)
        self.recorder = notifier
        self.order: list[str] = []
        self.store: SqliteStore | None = None
        self._extra = extra
        close_bridge = self.bridge.close

        def bridge_closed() -> None:
            self.order.append("bridge closed")
            close_bridge()

        self.bridge.close = bridge_closed  # type: ignore[method-assign]

    async def _compose(self) -> tuple[SqliteStore, list[Manager]]:
        store, managers = await super()._compose()
        self.store = store
        close_store = store.close

        async def store_closed() -> None:
            self.order.append("store closed")
            await close_store()

        store.close = store_closed  # type: ignore[method-assign]
        managers += [extra(self) for extra in self._extra]
        return store, [Watched(m, self.order) for m in managers]


# -- the master's files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir made by ``node-master init``'s code, once: each test copies its PKI."""
    data_dir = tmp_path_factory.mktemp("master-template")
    make_cluster_pki(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def node_key() -> PrivateKey:
    return generate_key()


@pytest.fixture(scope="module")
def clients(
    template: Path, tmp_path_factory: pytest.TempPathFactory, node_key: PrivateKey
) -> TlsSet:
    """Client TLS contexts (admin, viewer, node n1 with ``node_key``, anonymous) for both
    protocols."""
    pki = ClusterPki.load(template / "pki")
    return wire.tls_set(pki, tmp_path_factory.mktemp("master-clients"), node_key)


@dataclass(frozen=True, slots=True)
class Files:
    data_dir: Path
    listen: str

    @property
    def toml(self) -> Path:
        return self.data_dir / "master.toml"

    def render(self, *registration: str, master: str = "") -> str:
        """A ``master.toml`` with this ``[registration]`` section (lines) and ``[master]``
        keys besides listen and data_dir."""
        return "\n".join(
            [
                "[master]",
                f'listen = "{self.listen}"',
                f'data_dir = "{self.data_dir}"',
                master,
                "[registration]",
                *registration,
                "",
            ]
        )

    async def write(self, *registration: str) -> None:
        await asyncio.to_thread(self.toml.write_text, self.render(*registration))


@pytest.fixture
def files(template: Path, tmp_path: Path) -> Files:
    shutil.copytree(template / "pki", tmp_path / "pki")
    found = Files(tmp_path, f"{HOST}:{free_port()}")
    found.toml.write_text(found.render('trust = ["open"]'))
    return found


@pytest.fixture
def config(files: Files) -> MasterConfig:
    return load_master_config(files.toml)


@pytest.fixture(autouse=True)
def gc_restored() -> Iterator[None]:
    """The master freezes the heap and raises gen-0's threshold for the process: undone here,
    so the test process goes on collecting as before."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def watched(
    config: MasterConfig,
    *extra: ExtraManager,
    notifier: RecordingNotifier | None = None,
) -> WatchedMaster:
    return WatchedMaster(config, notifier or RecordingNotifier(), extra)


@contextlib.asynccontextmanager
async def running(master: WatchedMaster) -> AsyncIterator[asyncio.Task[None]]:
    """The master running until the block ends (or the task it yields does), then stopped
    through its stop event."""
    task = asyncio.get_running_loop().create_task(master.run())
    try:
        await until(lambda: "READY" in master.recorder.states or task.done(), "master ready")
        if task.done():
            task.result()  # its failure, raised here
        yield task
    finally:
        master.request_stop()
        await task


def client(port: int, clients: TlsSet, who: str, protocol: str) -> Client:
    return Client(protocol, port, clients.client(who, protocol))


def port_of(files: Files) -> int:
    return int(files.listen.rpartition(":")[2])


# -- serving, and the order of things -----------------------------------------------------------


async def test_healthz_on_both_protocols_then_a_stop_in_reverse_order_store_and_bridge_last(
    config: MasterConfig, files: Files, clients: TlsSet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.master.app")
    master = watched(config)
    async with running(master) as task:
        assert master.order == [f"start {name}" for name in MANAGERS]
        assert set(master.signals.handlers) == set(SIGNALS)
        for protocol in PROTOCOLS:
            anonymous = client(port_of(files), clients, "anonymous", protocol)
            try:
                health = await anonymous.call("GET", "/healthz")
                ready = await anonymous.call("GET", "/readyz")
            finally:
                await anonymous.close()
            assert (health.status, health.body) == (200, b"ok"), protocol
            assert (ready.status, ready.body) == (200, b"ok"), protocol
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD  # settled once started
        assert master.recorder.states == ["WATCHDOG", "READY"]  # the watchdog starts first
        master.order.clear()
        master.signals.deliver(signal.SIGTERM)
        await task
    assert master.order == [f"stop {name}" for name in reversed(MANAGERS)] + [
        "store closed",
        "bridge closed",
    ]
    assert master.recorder.states[-1] == "STOPPING"
    assert master.signals.handlers == {}  # removed
    serving = [r for r in caplog.records if r.getMessage() == "node master serving"]
    assert len(serving) == 1
    assert serving[0].__dict__["fields"]["listen"] == files.listen
    assert caplog.records[-1].getMessage() == "node master stopped"
    late = client(port_of(files), clients, "anonymous", H1)
    try:
        with pytest.raises(aiohttp.ClientError):  # nothing listens any more
            await late.call("GET", "/healthz")
    finally:
        await late.close()


async def test_a_stop_ends_an_http2_watch_with_goaway(
    config: MasterConfig, files: Files, clients: TlsSet
) -> None:
    master = watched(config)
    viewer = client(port_of(files), clients, "viewer", H2)
    try:
        async with running(master):
            watch = await viewer.watch("/v1/pods?watch=1")
            assert watch.status == 200
            conn = await viewer._h2()
        await until(lambda: conn.mux.closed, "GOAWAY received")  # not just a closed socket
        await until(conn.closed.done, "the connection closed")
    finally:
        await viewer.close()


async def test_an_eternal_loop_that_returns_fails_the_daemon_in_order(
    config: MasterConfig, caplog: pytest.LogCaptureFixture
) -> None:
    async def returns() -> None:
        return None

    def finite(master: Master) -> Manager:
        return LoopManager("finite", returns, master.supervisor.scope("finite"))

    master = watched(config, finite)
    with pytest.raises(ExceptionGroup) as failed:
        await master.run()
    assert failed.group_contains(TaskEndedError, match="'finite'")
    started = [f"start {name}" for name in [*MANAGERS, "finite"]]
    stopped = [f"stop {name}" for name in reversed([*MANAGERS, "finite"])]
    assert master.order == [*started, *stopped, "store closed", "bridge closed"]
    assert "task meant to run forever returned" in caplog.text


async def test_a_master_that_cannot_load_its_pki_closes_the_bridge(tmp_path: Path) -> None:
    master = watched(MasterConfig(data_dir=tmp_path))
    with pytest.raises(ConfigError, match="node-master init"):
        await master.run()
    assert master.order == ["bridge closed"]  # no store was opened, no manager built
    assert master.store is None


# -- the policy reload (SIGHUP) -----------------------------------------------------------------


async def _register(port: int, clients: TlsSet, name: str, who: str = "anonymous") -> int:
    anonymous = client(port, clients, who, H1)
    try:
        reply = await anonymous.call("POST", "/v1/registrations", registration(NodeKey(name)))
    finally:
        await anonymous.close()
    return reply.status


async def _reloaded(master: WatchedMaster, condition: Callable[[], object], what: str) -> None:
    master.signals.deliver(signal.SIGHUP)
    await until(condition, what)


async def test_a_valid_policy_reload_changes_the_trust_rules_and_a_bad_one_is_refused(
    config: MasterConfig, files: Files, clients: TlsSet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.master.app")
    port = port_of(files)
    master = watched(config)
    async with running(master):
        assert await _register(port, clients, "a") == 200  # open
        await files.write('trust = ["approval"]')
        await _reloaded(master, lambda: "policy reloaded" in caplog.text, "the new policy applied")
        assert master.config.registration.trust == ("approval",)
        assert master.registry.config is master.config
        assert await _register(port, clients, "b") == 202  # queued for an administrator
        await files.write('trust = ["no-such-rule"]')
        await _reloaded(
            master, lambda: "policy reload rejected" in caplog.text, "the bad file refused"
        )
        assert master.registry.config.registration.trust == ("approval",)  # it stays
        assert await _register(port, clients, "c") == 202


@pytest.fixture
def fleet(files: Files) -> tuple[Path, wire.Credentials]:
    """An external fleet CA (its PEM in the data dir) and a client certificate it issued."""
    key, cert = create_ca("fleet CA")
    bundle = files.data_dir / "fleet-ca.pem"
    bundle.write_bytes(cert_to_pem(cert))
    issuer = dataclasses.replace(ClusterPki.load(files.data_dir / "pki"), ca_key=key, ca_cert=cert)
    creds = wire.node_credentials(
        issuer, files.data_dir / "fleet", FLEET_NODE, generate_key(), common_name=FLEET_NODE
    )
    return bundle, creds


async def test_a_new_client_ca_is_added_to_the_live_tls_context(
    config: MasterConfig,
    files: Files,
    clients: TlsSet,
    fleet: tuple[Path, wire.Credentials],
    template: Path,
) -> None:
    bundle, creds = fleet
    pki = await asyncio.to_thread(ClusterPki.load, template / "pki")  # the master's CA
    fleet_tls = await asyncio.to_thread(wire.client_tls, pki, creds, H1)
    with_fleet = TlsSet(clients.master, {**clients.clients, ("fleet", H1): fleet_tls})
    port = port_of(files)
    master = watched(config)
    async with running(master):
        with pytest.raises(aiohttp.ClientError):  # a certificate from a CA it does not know
            await _register(port, with_fleet, FLEET_NODE, "fleet")
        await files.write('trust = ["client-cert"]', f'client_ca_file = "{bundle}"')
        await _reloaded(
            master, lambda: master.config.registration.trust == ("client-cert",), "reloaded"
        )
        [fleet_ca] = master.registry.client_cas
        assert fleet_ca.subject.rfc4514_string() == "CN=fleet CA"
        trusted = [dict(rdn[0] for rdn in ca["subject"]) for ca in master.tls.get_ca_certs()]
        assert {"commonName": "fleet CA"} in trusted  # in the live context, beside the cluster's
        assert await _register(port, with_fleet, FLEET_NODE, "fleet") == 200  # admitted by it
        assert await _register(port, with_fleet, "other") == 403  # no rule admits anonymous


def test_an_unreadable_client_ca_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pem"  # checked when the file was loaded, gone since
    config = MasterConfig(
        data_dir=tmp_path, registration=RegistrationPolicy(client_ca_file=missing)
    )
    with pytest.raises(ConfigError, match="client_ca_file"):
        read_client_cas(config)


async def test_a_reload_without_a_config_file_changes_nothing(tmp_path: Path) -> None:
    config = MasterConfig(data_dir=tmp_path)  # as built in code: no file to re-read
    master = Master(config, notifier=RecordingNotifier())
    try:
        await master.reload_policy()
        assert master.config is config
    finally:
        master.bridge.close()


# -- what the proxy is told, and the loops at work ----------------------------------------------


async def _apply(port: int, clients: TlsSet, pod: dict[str, Any]) -> None:
    admin = client(port, clients, "admin", H1)
    try:
        reply = await admin.call("POST", "/v1/pods", pod)
    finally:
        await admin.close()
    assert reply.status in (200, 201), reply.body


async def _exec(port: int, clients: TlsSet, pod: str) -> tuple[int, str]:
    admin = client(port, clients, "admin", H2)
    try:
        reply = await admin.call(
            "POST", f"/v1/namespaces/default/pods/{pod}/exec?container=main&command=true"
        )
    finally:
        await admin.close()
    return reply.status, reply.error["message"]


async def test_the_proxy_is_told_where_pods_run_and_where_nodes_listen(
    config: MasterConfig, files: Files, clients: TlsSet
) -> None:
    port = port_of(files)
    master = watched(config)
    async with running(master):
        await _apply(port, clients, manifest("pending"))  # no node: it stays unbound
        status, message = await _exec(port, clients, "pending")
        assert status == 404 and "not bound to a node yet" in message
        with pytest.raises(NotFoundError):
            await master._pod_node("default", "no-such-pod")
        assert (
            await master.registry.register(registration(NodeKey("n1")), HOST, None, None)
        ).status == 200
        await _apply(port, clients, manifest("web", node="n1"))
        assert await master._pod_node("default", "web") == "n1"
        status, message = await _exec(port, clients, "web")
        assert status == 502 and "has not reported its API endpoint" in message
        await master.registry.update_status("n1", {"apiEndpoint": "10.0.0.7:10250"})
        assert await master._node_endpoint("n1") == ("10.0.0.7", 10250)
        await master.registry.update_status("n1", {"apiEndpoint": "[fd00::7]:10250"})
        assert await master._node_endpoint("n1") == ("fd00::7", 10250)


async def test_the_scheduler_places_a_pending_pod_once_a_node_becomes_ready(
    config: MasterConfig, files: Files, clients: TlsSet, node_key: PrivateKey
) -> None:
    port = port_of(files)
    master = watched(config)
    async with running(master):
        n1 = NodeKey("n1", node_key)  # the key of the clients' "node" certificate
        assert (await master.registry.register(registration(n1), HOST, None, None)).status == 200
        await _apply(port, clients, manifest("placed"))
        assert not (await master.pods.get("default", "placed")).get("nodeName")  # no lease yet
        _, revision = await master.pods.list()
        node = client(port, clients, "node", H1)
        try:  # its first lease makes it Ready, which kicks the scheduler
            assert (await node.call("PUT", "/v1/nodes/n1/lease", {})).status == 200
        finally:
            await node.close()
        events = master.pods.watch_node("n1", revision)
        try:
            async with asyncio.timeout(DEADLINE_S):
                event = await anext(events)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "placed")


async def test_eviction_looks_every_lease_renewal_period(files: Files) -> None:
    await asyncio.to_thread(
        files.toml.write_text,
        files.render('trust = ["open"]', master="lease_renew_s = 0.01\nlease_grace_s = 60.0"),
    )
    config = await asyncio.to_thread(load_master_config, files.toml)
    master = watched(config)
    async with running(master):
        rounds = 0
        evict = master.pods.evict_from_unready_nodes

        async def counted() -> int:
            nonlocal rounds
            rounds += 1
            return await evict()

        master.pods.evict_from_unready_nodes = counted  # type: ignore[method-assign]
        # Every 0.01 s, not EVICTION_CHECK_S: the deadline is far shorter than that.
        await until(lambda: rounds >= 3, "three eviction rounds", deadline_s=EVICTION_CHECK_S / 2)


async def test_the_watchdog_pets_at_systemds_interval(config: MasterConfig, files: Files) -> None:
    master = watched(config, notifier=RecordingNotifier(interval_s=0.01))
    async with running(master) as task:
        await until(lambda: master.recorder.states.count("WATCHDOG") >= 3, "three pets")
        master.signals.deliver(signal.SIGINT)
        await task
    assert master.recorder.states[0] == "WATCHDOG"
    assert master.recorder.states[-1] == "STOPPING"
