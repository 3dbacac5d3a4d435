"""``node-master doctor``: the master's checks, from ``master.toml``.

Config first, then at once: the store (opened read-only and asked for its revision and node
count), the data dir and CA files with their permissions (keys 0600 in 0700 directories), the
CA and serving certificates' expiry, the listen address (free or the master's own), nodes
NotReady (asked of the running master: readiness comes from the leases it holds in memory),
and the systemd unit.

The store is opened without creating anything: ``mode=ro`` while its ``-wal``/``-shm`` exist
(a master runs, or stopped uncleanly: SQLite reads the WAL through them), ``immutable=1`` when
they do not (no master writes; a read-only connection would otherwise create them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from agent.aio.bridge import ThreadBridge
from agent.aio.tls import with_peer_check
from agent.doctor import host
from agent.doctor.core import (
    CHECK_TIMEOUT_S,
    Check,
    CheckResult,
    Shared,
    failed,
    one_line,
    passed,
    report,
    run_checks,
)
from agent.doctor.node import OWN_TIMEOUT_SHARE
from agent.errors import AgentError, ConfigError, MasterUnavailableError, PkiError
from agent.master.config import MasterConfig, load_master_config
from agent.pki.core import (
    cert_to_pem,
    certs_from_pem,
    generate_key,
    has_master_mark,
    issue,
    key_from_pem,
    key_to_pem,
    verify_issued_by,
)
from agent.pki.names import VIEWERS_GROUP, master_mark_check

STORE_FILE = "store.db"  # agent.master.app.STORE_FILE, without importing the whole master
NODES_PREFIX = "/nodes/"  # agent.master.registry.NODES_PREFIX
MASTER_MARKERS = ("node-master", "agent.cli.node_master")
UNIT = "node-master"
BRIDGE_THREADS = 4
# A certificate with less than this left is a problem to act on now: the serving certificate
# and the CA are renewed by hand (certs/README.md).
CERT_WARN_DAYS = 30
DOCTOR_CN = "node-master-doctor"
DOCTOR_CERT_LIFETIME_S = 300  # the in-memory viewer certificate that reads the node list
NODE_LIST_MAX_BYTES = 64 * 1024 * 1024
NOT_READY_NAMES_SHOWN = 10
PRIVATE_FILES = ("pki/ca.key", "pki/master.key", "admin.conf")
PRIVATE_DIRS = (".", "pki")


class MasterDoctor:
    def __init__(
        self,
        config: MasterConfig,
        bridge: ThreadBridge,
        *,
        environ: Mapping[str, str] | None = None,
        systemctl: tuple[str, ...] = ("systemctl",),
        timeout_s: float = CHECK_TIMEOUT_S,
    ) -> None:
        self.config = config
        self._bridge = bridge
        self._environ = dict(os.environ if environ is None else environ)
        self._systemctl = systemctl
        self._timeout_s = timeout_s
        self._listen = Shared(self._probe_listen)

    def checks(self) -> list[tuple[str, Check]]:
        return [
            ("store", self.store),
            ("files", self.files),
            ("CA certificate", self.ca_certificate),
            ("serving certificate", self.serving_certificate),
            ("listen", self.listen),
            ("nodes", self.nodes),
            ("systemd", self.systemd),
        ]

    async def run(self) -> list[CheckResult]:
        try:
            return await run_checks(self.checks(), timeout_s=self._timeout_s)
        finally:
            self._listen.cancel()

    @property
    def store_path(self) -> Path:
        return self.config.data_dir / STORE_FILE

    async def store(self) -> CheckResult:
        name = "store"
        path = self.store_path
        try:
            revision, nodes = await self._bridge.run(read_store, path)
        except FileNotFoundError:
            return failed(
                name,
                f"{path} does not exist",
                f"node-master init --data-dir {self.config.data_dir} (a new cluster), or restore "
                "the store from a backup",
            )
        except (sqlite3.Error, OSError) as exc:
            return failed(
                name,
                f"{path} does not answer: {exc}",
                "restore the store from a backup (docs/operations.md)",
            )
        return passed(name, f"{path} answers: revision {revision}, {nodes} nodes")

    async def files(self) -> CheckResult:
        name = "files"
        data_dir = self.config.data_dir
        problems, fixes = await self._bridge.run(_file_problems, data_dir)
        if problems:
            return failed(name, "; ".join(problems), "; ".join(fixes))
        return passed(name, f"{data_dir}: keys 0600 in 0700 directories")

    async def _certificate(self, name: str, file: str, what: str) -> CheckResult:
        pki = self.config.pki_dir
        try:
            ca_pem, pem = await self._bridge.run(
                lambda: (host.read_file(pki / "ca.crt"), host.read_file(pki / file))
            )
            cert = certs_from_pem(pem)[0]
            ca = certs_from_pem(ca_pem)[0]
        except FileNotFoundError as exc:
            return failed(
                name,
                f"{exc.filename} does not exist",
                f"node-master init --data-dir {self.config.data_dir}",
            )
        except (OSError, PkiError, IndexError) as exc:
            return failed(name, f"{pki / file}: {exc}", f"restore {pki / file} from a backup")
        text = f"{pki / file} {host.expiry_text(cert)}"
        if host.days_left(cert) < CERT_WARN_DAYS:
            return failed(name, text, f"renew the {what} (certs/README.md)")
        if file != "ca.crt":
            try:
                verify_issued_by(cert, [ca])
            except PkiError as exc:
                return failed(name, f"{pki / file}: {exc}", "node-master init --force")
            if not has_master_mark(cert):
                return failed(
                    name,
                    f"{pki / file} lacks the master's mark",
                    "start the master once: it issues the certificate again with the mark",
                )
        return passed(name, text)

    async def ca_certificate(self) -> CheckResult:
        return await self._certificate("CA certificate", "ca.crt", "cluster CA")

    async def serving_certificate(self) -> CheckResult:
        return await self._certificate("serving certificate", "master.crt", "serving certificate")

    async def _probe_listen(self) -> host.PortState:
        return await self._bridge.run(host.probe_port, self.config.host, self.config.port)

    async def listen(self) -> CheckResult:
        name = "listen"
        state = await self._listen.get()
        if state.free:
            return passed(name, f"{state.address} is free")
        if state.problem:
            return failed(name, f"{state.address}: {state.problem}", "set [master] listen")
        if state.held_by(MASTER_MARKERS):
            return passed(name, f"{state.address} is the master's (pid {state.pid})")
        return failed(
            name,
            f"{state.address} is in use by {state.holder}",
            "stop that process, or set [master] listen to a free port",
        )

    async def nodes(self) -> CheckResult:
        name = "nodes"
        state = await self._listen.get()
        if not state.held_by(MASTER_MARKERS):
            return passed(
                name,
                "skipped: the master is not running here (readiness comes from its leases)",
            )
        try:
            total, not_ready = not_ready_names(await self._node_list())
        except (aiohttp.ClientError, OSError, ValueError, AgentError) as exc:
            return failed(
                name,
                one_line(f"the running master did not give its node list: {exc}"),
                "see the master's log (journalctl -u node-master)",
            )
        if not_ready:
            shown = ", ".join(one_line(n, 80) for n in not_ready[:NOT_READY_NAMES_SHOWN])
            more = len(not_ready) - NOT_READY_NAMES_SHOWN
            return failed(
                name,
                f"{len(not_ready)} of {total} NotReady: {shown}"
                + (f" and {more} more" if more > 0 else ""),
                "run `node-agent doctor` on each (journalctl -u node-agent); "
                "nodectl describe node NAME",
            )
        return passed(name, f"{total} nodes, none NotReady")

    async def _node_list(self) -> Any:
        ctx = await self._bridge.run(self._viewer_context)
        listen_host = self.config.host
        connect = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
            listen_host, listen_host
        )
        url_host = f"[{connect}]" if ":" in connect else connect
        url = f"https://{url_host}:{self.config.port}/v1/nodes"
        connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
        timeout = aiohttp.ClientTimeout(total=self._timeout_s * OWN_TIMEOUT_SHARE)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(url) as resp,
        ):
            body = await resp.content.read(NODE_LIST_MAX_BYTES)
            if resp.status != 200:
                raise MasterUnavailableError(f"GET /v1/nodes answered HTTP {resp.status}")
        return json.loads(body)

    def _viewer_context(self) -> ssl.SSLContext:
        """Blocking: TLS trusting the cluster CA (the master's mark checked, not its host name:
        the listen address may be a wildcard), presenting a viewer certificate made now, kept
        in memory only."""
        pki = self.config.pki_dir
        ca_pem = host.read_file(pki / "ca.crt")
        ca_key = key_from_pem(host.read_file(pki / "ca.key"))
        ca = certs_from_pem(ca_pem)[0]
        key = generate_key()
        cert = issue(
            ca_key,
            ca,
            key.public_key(),
            common_name=DOCTOR_CN,
            groups=[VIEWERS_GROUP],
            lifetime_s=DOCTOR_CERT_LIFETIME_S,
            client=True,
        )
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        ctx.check_hostname = False
        with _memory_files(cert_to_pem(cert), key_to_pem(key)) as (cert_file, key_file):
            ctx.load_cert_chain(cert_file, key_file)
        return with_peer_check(ctx, master_mark_check(f"https://{self.config.listen}"))

    async def systemd(self) -> CheckResult:
        return await host.systemd_check(UNIT, self._bridge, self._systemctl, self._environ)


def not_ready_names(data: Any) -> tuple[int, list[str]]:
    """From a NodeList (any JSON: the master's answer is read, not trusted to be well formed):
    the number of nodes and the names of those whose Ready condition is ``False``."""
    items = data.get("items") if isinstance(data, dict) else None
    nodes = [n for n in items if isinstance(n, dict)] if isinstance(items, list) else []
    names = []
    for node in nodes:
        status = node.get("status")
        conditions = status.get("conditions") if isinstance(status, dict) else None
        ready = [
            c
            for c in (conditions if isinstance(conditions, list) else [])
            if isinstance(c, dict) and c.get("type") == "Ready"
        ]
        if ready and ready[0].get("status") == "False":
            metadata = node.get("metadata")
            name = metadata.get("name") if isinstance(metadata, dict) else None
            names.append(str(name) if name is not None else "?")
    return len(nodes), names


def read_store(path: Path) -> tuple[int, int]:
    """Blocking: the store's revision and node count, read without creating or changing a file
    (FileNotFoundError when there is no store)."""
    if not path.exists():
        raise FileNotFoundError(path)
    wal = path.with_name(path.name + "-wal")
    shm = path.with_name(path.name + "-shm")
    # Read-only either way: immutable alone opens the file read-write, with O_CREAT.
    mode = "mode=ro" if wal.exists() and shm.exists() else "mode=ro&immutable=1"
    conn = sqlite3.connect(f"file:{path}?{mode}", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        (nodes,) = conn.execute(
            "SELECT count(*) FROM kv WHERE key >= ? AND key < ?",
            (NODES_PREFIX, NODES_PREFIX[:-1] + chr(ord("/") + 1)),
        ).fetchone()
    finally:
        conn.close()
    return (int(row[0]) if row else 0), int(nodes)


def _file_problems(data_dir: Path) -> tuple[list[str], list[str]]:
    """Blocking: what is wrong with the data dir's private files and directories."""
    problems: list[str] = []
    fixes: list[str] = []
    for rel in PRIVATE_DIRS:
        path = data_dir / rel
        mode = host.file_mode(path)
        if mode is None:
            problems.append(f"{path} does not exist")
            fixes.append(f"node-master init --data-dir {data_dir}")
        elif mode & 0o077:
            problems.append(f"{path} is {mode:04o}")
            fixes.append(f"chmod 700 {path}")
    for rel in PRIVATE_FILES:
        path = data_dir / rel
        mode = host.file_mode(path)
        if mode is None:
            if rel != "admin.conf":  # an operator may move the admin's credentials away
                problems.append(f"{path} does not exist")
                fixes.append(f"node-master init --data-dir {data_dir}")
        elif mode & 0o077:
            problems.append(f"{path} is {mode:04o} (holds a private key)")
            fixes.append(f"chmod 600 {path}")
    return problems, list(dict.fromkeys(fixes))


@contextlib.contextmanager
def _memory_files(*contents: bytes) -> Iterator[tuple[str, ...]]:
    """ssl loads credentials only from files: anonymous memory files (never on disk)."""
    fds: list[int] = []
    try:
        for data in contents:
            fd = os.memfd_create("node-master-doctor", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data)
        yield tuple(f"/proc/self/fd/{fd}" for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)


def load_result(config_path: Path) -> tuple[MasterConfig | None, CheckResult]:
    name = "config"
    problem = host.not_regular(config_path)
    if problem is not None:  # reading a FIFO would wait for a writer for ever
        return None, failed(name, problem, "point --config at the master's TOML file")
    try:
        config = load_master_config(config_path)
    except ConfigError as exc:
        return None, failed(name, str(exc), "correct the file named above")
    return config, passed(name, f"{config_path} parses (data dir {config.data_dir})")


async def _doctor(config: MasterConfig) -> list[CheckResult]:
    bridge = ThreadBridge(BRIDGE_THREADS, name="doctor")
    try:
        return await MasterDoctor(config, bridge).run()
    finally:
        bridge.close()


def main(config_path: Path, output: str) -> int:
    """``node-master doctor``: the report on stdout; 0 when every check passed, else 1."""
    config, first = load_result(config_path)
    results = [first]
    if config is not None:
        results += asyncio.run(_doctor(config))
    return report(results, output)
