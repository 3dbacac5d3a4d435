"""``node-agent doctor``: the node's checks, from its configuration.

Config first (nothing else can be judged without it), then everything else at once: Docker
(reachable, version, cgroup driver, image file system), the state dir (writable, free space,
created by nothing here), the CA pin's format, the master (reachable, its CA against the pin
and the chain it serves, the clock against its ``Date``), the node's certificate and its
registration state (``<state_dir>/registration.json``, with the master's reason for a refusal),
the health and API ports and the API socket (free or the agent's own), the manifest dir, a join
token file, and the systemd unit (state and watchdog) where systemd runs.
"""

from __future__ import annotations

import asyncio
import email.utils
import encodings.idna  # noqa: F401 - see below
import errno
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.aio.bridge import ThreadBridge
from agent.aio.tls import client_context, with_peer_check
from agent.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    load_agent_config,
    read_token_file,
    split_host_port,
)
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
from agent.errors import (
    AgentError,
    ConfigError,
    MasterUnavailableError,
    PkiError,
    RuntimeOperationError,
    RuntimeUnavailableError,
)
from agent.node.masterlink.identity import CA_BUNDLE_MAX_BYTES, CA_FILE, CERT_FILE, KEY_FILE
from agent.node.masterlink.registration import DENIED, PENDING, REGISTERED, STATE_FILE
from agent.node.runtime.engine import EngineClient, judge, unix_socket_path
from agent.pki.core import (
    PIN_PREFIX,
    certs_from_pem,
    check_pins,
    key_from_pem,
    spki_pin,
    verify_issued_by,
)
from agent.pki.names import master_mark_check

# encodings.idna: ssl encodes a TLS server name with the idna codec, which Python imports on its
# first use; imported here, before the loop runs, so that this import never happens on the loop
# (where it would wait for the import lock a bridge thread may hold).

# Free space the state dir needs: the checkpoint is rewritten whole on every change and
# emptyDir volumes live there; below this a write can fail at any moment.
STATE_DIR_MIN_FREE_BYTES = 64 * host.MIB
# Certificates start CLOCK_SKEW_S (300 s) in the past, so a node a few minutes off still
# connects; more than a minute off means time sync is not running, and it only gets worse.
MAX_CLOCK_SKEW_S = 60.0
# The agent renews its certificate at 70-90 % of its lifetime; less than this share left means
# renewal has been failing.
RENEWAL_OVERDUE_FRACTION = 0.1
STATE_MAX_BYTES = 64 * 1024  # registration.json is a few hundred bytes
AGENT_MARKERS = ("node-agent", "agent.cli.node_agent")
UNIT = "node-agent"
BRIDGE_THREADS = 4
# A request's own time-out, as a share of the check's bound: it ends first, so the line says
# what did not answer instead of the bound's generic message.
OWN_TIMEOUT_SHARE = 0.8
DOCKER_FIX = "systemctl start docker (or set docker_host to the engine's address)"
RESTART_FIX = "systemctl restart node-agent"
ANY: dict[str, Any] = {"conflict": RuntimeOperationError}  # Docker's errors, as the adapter's


@dataclass(frozen=True, slots=True)
class EngineFacts:
    version: str
    api_version: str
    cgroup_driver: str
    cgroup_version: str
    root_dir: str


@dataclass(frozen=True, slots=True)
class MasterAnswer:
    """The master's anonymous ``GET /v1/ca``: its CA bundle, its clock and how long it took."""

    bundle_pem: bytes
    date: str
    skew_s: float | None  # ours minus the master's (positive: our clock is ahead)
    rtt_s: float


class NodeDoctor:
    def __init__(
        self,
        config: AgentConfig,
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
        self._engine = Shared(self._engine_facts)
        self._master = Shared(self._fetch_master)
        self.pki_dir = config.state_dir / "pki"

    def checks(self) -> list[tuple[str, Check]]:
        return [
            ("docker", self.docker),
            ("cgroup driver", self.cgroup_driver),
            ("image fs", self.image_fs),
            ("state dir", self.state_dir),
            ("manifest dir", self.manifest_dir),
            ("ca pin", self.ca_pin),
            ("master", self.master),
            ("master CA", self.master_ca),
            ("clock", self.clock),
            ("node certificate", self.node_certificate),
            ("registration", self.registration),
            ("join token", self.join_token),
            ("health port", self.health_port),
            ("api port", self.api_port),
            ("api socket", self.api_socket),
            ("systemd", self.systemd),
        ]

    async def run(self) -> list[CheckResult]:
        try:
            return await run_checks(self.checks(), timeout_s=self._timeout_s)
        finally:
            self._engine.cancel()
            self._master.cancel()

    # -- Docker ----------------------------------------------------------------------------------

    @property
    def docker_address(self) -> str:
        return (
            self.config.docker_host
            or self._environ.get("DOCKER_HOST")
            or "unix:///var/run/docker.sock"
        )

    @property
    def _engine_socket(self) -> str | None:
        return unix_socket_path(self.config.docker_host, self._environ.get("DOCKER_HOST"))

    def _not_local(self, name: str) -> CheckResult | None:
        if self._engine_socket is None:
            return passed(
                name, f"skipped: {self.docker_address} is not a local engine (unix:// socket)"
            )
        return None

    async def _engine_facts(self) -> EngineFacts:
        path = self._engine_socket
        assert path is not None
        client = EngineClient(path, timeout_s=self._timeout_s * OWN_TIMEOUT_SHARE)
        try:
            version = judge("version", await client.call("version", "GET", "/version"), **ANY)
            info = judge("info", await client.call("info", "GET", "/info"), **ANY)
        finally:
            await client.close()
        if not isinstance(version, dict) or not isinstance(info, dict):
            raise RuntimeUnavailableError("Docker answered /version or /info with no object")
        return EngineFacts(
            version=str(version.get("Version", "?")),
            api_version=str(version.get("ApiVersion", "?")),
            cgroup_driver=str(info.get("CgroupDriver", "?")),
            cgroup_version=str(info.get("CgroupVersion", "?")),
            root_dir=str(info.get("DockerRootDir") or "/var/lib/docker"),
        )

    async def docker(self) -> CheckResult:
        name = "docker"
        if (skipped := self._not_local(name)) is not None:
            return skipped
        try:
            facts = await self._engine.get()
        except RuntimeUnavailableError as exc:
            if isinstance(exc.__cause__, PermissionError):
                return failed(
                    name,
                    f"Docker's socket {self.docker_address} refuses this user: permission denied",
                    "run doctor as root, as the agent runs (or as a member of the docker group)",
                )
            return failed(
                name,
                f"Docker is not reachable at {self.docker_address}: is dockerd running? "
                "(systemctl start docker)",
                DOCKER_FIX,
            )
        except AgentError as exc:
            return failed(name, str(exc), DOCKER_FIX)
        return passed(
            name, f"Docker {facts.version} (API {facts.api_version}) at {self.docker_address}"
        )

    async def cgroup_driver(self) -> CheckResult:
        name = "cgroup driver"
        if (skipped := self._not_local(name)) is not None:
            return skipped
        try:
            facts = await self._engine.get()
        except AgentError:
            return failed(name, "not checked: Docker is not reachable", "see the docker line")
        return passed(name, f"{facts.cgroup_driver} (cgroup v{facts.cgroup_version})")

    async def image_fs(self) -> CheckResult:
        name = "image fs"
        if (skipped := self._not_local(name)) is not None:
            return skipped
        try:
            facts = await self._engine.get()
        except AgentError:
            return failed(name, "not checked: Docker is not reachable", "see the docker line")
        try:
            usage = await self._bridge.run(psutil.disk_usage, facts.root_dir)
        except OSError as exc:
            return failed(
                name,
                f"cannot see Docker's root dir {facts.root_dir}: {exc.strerror}",
                "run doctor on the engine's host, as root",
            )
        return passed(
            name,
            f"{facts.root_dir}: {usage.percent:.0f} % used, {host.human_bytes(usage.free)} free "
            f"of {host.human_bytes(usage.total)}",
        )

    # -- directories -----------------------------------------------------------------------------

    async def state_dir(self) -> CheckResult:
        name = "state dir"
        path = self.config.state_dir
        try:
            state = await self._bridge.run(host.probe_dir, path)
        except OSError as exc:
            return failed(name, f"{path}: {exc.strerror}", "run doctor as root, as the agent runs")
        where = f"{path}" if state.exists else f"{path} is absent; {state.where}"
        if not state.is_dir:
            return failed(
                name, f"{state.where} is not a directory", "remove it, or set state_dir elsewhere"
            )
        if state.read_only_fs or not state.writable:
            why = "on a read-only file system" if state.read_only_fs else "not writable"
            return failed(
                name,
                f"{where} is {why}",
                f"make {state.where} writable for the agent (mount it read-write), or set "
                "state_dir to a writable place",
            )
        if state.free_bytes < STATE_DIR_MIN_FREE_BYTES or state.free_inodes == 0:
            left = "no inodes" if state.free_inodes == 0 else host.human_bytes(state.free_bytes)
            return failed(
                name,
                f"{where}: only {left} free (the agent needs "
                f"{host.human_bytes(STATE_DIR_MIN_FREE_BYTES)})",
                f"free space on the file system of {state.where} (df -h {state.where}), or set "
                "state_dir elsewhere",
            )
        free = host.human_bytes(state.free_bytes)
        if not state.exists:
            return passed(
                name, f"{where} is writable with {free} free (the agent creates {path} at start)"
            )
        loose = (
            f"; mode {state.mode:04o}, the agent tightens it to 0700 at start"
            if state.mode & 0o077
            else ""
        )
        return passed(name, f"{path}: writable, {free} free{loose}")

    async def manifest_dir(self) -> CheckResult:
        name = "manifest dir"
        path = self.config.manifest_dir
        if path is None:
            return passed(name, "not set: no static pods")
        state = await self._bridge.run(host.probe_dir, path)
        if not state.exists:
            return passed(name, f"{path} is absent: no static pods")
        if not state.is_dir:
            return failed(name, f"{path} is not a directory", "remove it, or set manifest_dir")
        return passed(name, f"{path}")

    # -- the master ------------------------------------------------------------------------------

    @property
    def _master_url(self) -> str:
        """The master doctor asks: the first of ``master`` (the others serve the same cluster,
        with the same CA)."""
        assert self.config.master is not None
        return self.config.master[0]

    def _no_master(self, name: str) -> CheckResult | None:
        if self.config.master is None:
            return passed(name, "skipped: no master configured (static pods only)")
        return None

    async def ca_pin(self) -> CheckResult:
        name = "ca pin"
        if (skipped := self._no_master(name)) is not None:
            return skipped
        pins = self.config.ca_cert_hash
        if not pins:
            stored = await self._bridge.run((self.pki_dir / CA_FILE).exists)
            how = "the CA this node pinned at its first contact" if stored else "trust on first use"
            return passed(name, f"no ca_cert_hash configured: {how}")
        for pin in pins:
            text = pin.strip().lower()
            digits = text.removeprefix(PIN_PREFIX)
            if (
                not text.startswith(PIN_PREFIX)
                or len(digits) != 64
                or any(c not in "0123456789abcdef" for c in digits)
            ):
                return failed(
                    name,
                    f"ca_cert_hash {one_line(pin, 80)!r} is not sha256:<64 hex digits>",
                    "set ca_cert_hash to the CA pin `node-master init` printed (also: "
                    "openssl x509 -pubkey -noout -in ca.crt | openssl pkey -pubin -outform der "
                    "| sha256sum)",
                )
        return passed(name, f"{len(pins)} pin(s), well formed")

    async def _fetch_master(self) -> MasterAnswer:
        url = self._master_url.rstrip("/") + "/v1/ca"
        local = (self.config.bind_source, 0) if self.config.bind_source else None
        ctx = client_context(None)  # the pin check below is what trusts this answer
        connector = aiohttp.TCPConnector(ssl=ctx, local_addr=local, force_close=True)
        timeout = aiohttp.ClientTimeout(total=self._timeout_s * OWN_TIMEOUT_SHARE)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            sent = time.monotonic()
            sent_wall = time.time()
            async with session.get(url, allow_redirects=False) as resp:
                body = await resp.content.read(CA_BUNDLE_MAX_BYTES + 1)
                rtt = time.monotonic() - sent
                if resp.status != 200:
                    raise MasterUnavailableError(f"GET /v1/ca answered HTTP {resp.status}")
                if len(body) > CA_BUNDLE_MAX_BYTES:
                    raise MasterUnavailableError("GET /v1/ca answered more than a CA bundle")
                date = resp.headers.get("Date", "")
        skew = None
        try:
            when = email.utils.parsedate_to_datetime(date).timestamp()
            # The Date header is whole seconds, stamped somewhere in the round trip.
            skew = sent_wall + rtt / 2 - (when + 0.5)
        except (TypeError, ValueError, IndexError):
            pass
        return MasterAnswer(body, date, skew, rtt)

    async def _master_answer(self) -> MasterAnswer | str:
        """The master's answer, or what went wrong (one line)."""
        try:
            return await self._master.get()
        except MasterUnavailableError as exc:
            return str(exc)
        except TimeoutError:  # before OSError, of which it is one
            return f"no answer within {self._timeout_s * OWN_TIMEOUT_SHARE:g} s"
        except aiohttp.ClientConnectorError as exc:
            err = exc.os_error
            if isinstance(err, socket.gaierror) or not err.errno:
                return f"cannot connect: {err.strerror or err}"
            return f"cannot connect: {os.strerror(err.errno)}"
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    async def master(self) -> CheckResult:
        name = "master"
        if (skipped := self._no_master(name)) is not None:
            return skipped
        try:
            answer = await self._master_answer()
        except TimeoutError:
            answer = f"no answer within {self._timeout_s:g} s"
        if isinstance(answer, str):
            port = self._master_url.rpartition(":")[2].split("/")[0] or "443"
            return failed(
                name,
                f"{self._master_url} is not reachable: {answer}",
                "start the master (systemctl start node-master on its host), check master= "
                f"(the URL `node-master init` printed) and that TCP port {port} is open between "
                "the hosts",
            )
        return passed(name, f"{self._master_url} answered in {answer.rtt_s * 1000:.0f} ms")

    async def master_ca(self) -> CheckResult:
        name = "master CA"
        if (skipped := self._no_master(name)) is not None:
            return skipped
        try:
            answer = await self._master_answer()
        except TimeoutError:
            answer = "no answer"
        if isinstance(answer, str):
            return failed(name, "not checked: the master is not reachable", "see the master line")
        try:
            bundle = certs_from_pem(answer.bundle_pem)
        except PkiError:
            bundle = []
        if not bundle:
            return failed(
                name,
                f"{self._master_url} sent no CA certificate: is it a node-master?",
                "point master= at the node-master's URL",
            )
        presented = ", ".join(spki_pin(c) for c in bundle)
        if self.config.ca_cert_hash:
            try:
                check_pins(bundle, self.config.ca_cert_hash)
            except PkiError:
                return failed(
                    name,
                    f"the master's CA does not match ca_cert_hash (it presents {presented})",
                    "set ca_cert_hash to the pin `node-master init` printed on the master; if "
                    "you trust this master, its pin is the one above",
                )
        stored = await self._bridge.run(_read_optional, self.pki_dir / CA_FILE)
        if stored is not None and stored.strip() != answer.bundle_pem.strip():
            return failed(
                name,
                f"this node pinned another CA at its first contact ({self.pki_dir / CA_FILE}); "
                f"the master now presents {presented}",
                f"if the cluster CA was replaced on purpose: stop the agent, remove {self.pki_dir}"
                " and start it again (it registers anew)",
            )
        problem = await self._verified(answer.bundle_pem)
        if problem:
            return failed(
                name,
                f"the master's serving certificate does not verify against its CA: {problem}",
                "issue the master's serving certificate for the name in master= "
                "(node-master init --server-name NAME)",
            )
        return passed(name, f"{presented} matches; the master's certificate verifies")

    async def _verified(self, ca_pem: bytes) -> str:
        """'' when a TLS connection trusting only ``ca_pem`` (host name and master's mark
        checked, as the agent connects) reaches the master; else why not."""
        try:
            ctx = with_peer_check(client_context(ca_pem), master_mark_check(self._master_url))
        except (OSError, ValueError) as exc:
            return f"unusable CA bundle: {exc}"
        local = (self.config.bind_source, 0) if self.config.bind_source else None
        connector = aiohttp.TCPConnector(ssl=ctx, local_addr=local, force_close=True)
        timeout = aiohttp.ClientTimeout(total=self._timeout_s * OWN_TIMEOUT_SHARE)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.get(self._master_url.rstrip("/") + "/healthz") as resp,
            ):
                await resp.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            return str(exc.certificate_error)
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""

    async def clock(self) -> CheckResult:
        name = "clock"
        if (skipped := self._no_master(name)) is not None:
            return skipped
        try:
            answer = await self._master_answer()
        except TimeoutError:
            answer = "no answer"
        if isinstance(answer, str):
            return failed(name, "not checked: the master is not reachable", "see the master line")
        if answer.skew_s is None:
            return failed(
                name,
                f"the master's answer has no usable Date header ({answer.date!r})",
                "is master= a node-master?",
            )
        skew = answer.skew_s
        margin = 0.5 + answer.rtt_s / 2
        if abs(skew) - margin > MAX_CLOCK_SKEW_S:
            way = "ahead of" if skew > 0 else "behind"
            return failed(
                name,
                f"this host's clock is {abs(skew):.0f} s {way} the master's",
                "run time sync on both hosts (timedatectl set-ntp true; chronyc tracking)",
            )
        return passed(name, f"within {max(abs(skew), margin):.0f} s of the master's")

    # -- identity --------------------------------------------------------------------------------

    async def node_certificate(self) -> CheckResult:
        name = "node certificate"
        if (skipped := self._no_master(name)) is not None:
            return skipped
        cert_path = self.pki_dir / CERT_FILE
        try:
            cert_pem, key_pem, ca_pem = await self._bridge.run(
                lambda: tuple(
                    _read_optional(self.pki_dir / f) for f in (CERT_FILE, KEY_FILE, CA_FILE)
                )
            )
        except OSError as exc:
            return failed(
                name,
                f"{exc.filename}: {exc.strerror}",
                f"stop the agent, remove {self.pki_dir} and start it: it registers again",
            )
        if cert_pem is None:
            return failed(
                name,
                f"no node certificate ({cert_path}): the node has not registered",
                "start the agent (systemctl start node-agent): it registers with the master; "
                "see the registration line",
            )
        try:
            cert = certs_from_pem(cert_pem)[0]
        except (PkiError, IndexError):
            return failed(
                name,
                f"{cert_path} holds no certificate",
                f"stop the agent, remove {cert_path} and start it again: it registers anew",
            )
        if key_pem is None or not _pair_matches(key_pem, cert):
            return failed(
                name,
                f"{self.pki_dir / KEY_FILE} is missing or not the key of {cert_path}",
                f"stop the agent, remove {cert_path} and start it again: it registers anew",
            )
        expiry = host.expiry_text(cert)
        if host.days_left(cert) < 0:
            return failed(
                name,
                f"{cert_path} {expiry}",
                f"{RESTART_FIX}: the agent registers again with a new key (under the approval "
                f"rule an administrator approves it: nodectl approve {self.config.node_name})",
            )
        if ca_pem is not None:
            try:
                verify_issued_by(cert, certs_from_pem(ca_pem))
            except PkiError:
                return failed(
                    name,
                    f"{cert_path} is not signed by the CA this node pinned",
                    f"stop the agent, remove {cert_path} and start it again: it registers anew",
                )
        if host.days_left(cert) < RENEWAL_OVERDUE_FRACTION * host.lifetime_days(cert):
            return failed(
                name,
                f"{cert_path} {expiry}: its renewal is overdue (the agent renews at 70-90 % "
                "of its lifetime)",
                "the agent renews while it reaches the master: see the master lines and the "
                "agent's log (journalctl -u node-agent)",
            )
        return passed(name, f"{expiry}")

    async def registration(self) -> CheckResult:
        name = "registration"
        if (skipped := self._no_master(name)) is not None:
            return skipped
        try:
            state = await self._bridge.run(_read_state, self.config.state_dir / STATE_FILE)
        except OSError as exc:
            return failed(
                name,
                f"{exc.filename}: {exc.strerror}",
                f"remove {exc.filename}: the agent writes it again at its next registration",
            )
        has_cert = await self._bridge.run((self.pki_dir / CERT_FILE).exists)
        if state is None:
            if has_cert:
                return passed(name, "registered (the node holds a certificate)")
            return failed(
                name,
                "this node has not registered yet",
                "start the agent (systemctl start node-agent): it registers at its first "
                "contact with the master",
            )
        phase = str(state.get("phase", "?"))
        master = one_line(str(state.get("master", "?")), 200)
        at = one_line(str(state.get("at", "?")), 40)
        if phase == REGISTERED:
            by = one_line(str(state.get("admittedBy") or ""), 60)
            return passed(name, f"registered with {master} at {at}" + (f" ({by})" if by else ""))
        if phase == PENDING:
            request = one_line(str(state.get("requestId", "?")), 80)
            return failed(
                name,
                f"pending approval by an administrator since {at} (request {request})",
                f"on the master: nodectl approve {self.config.node_name}",
            )
        if phase == DENIED:
            reason = one_line(str(state.get("reason") or "no reason given"), 300)
            status = state.get("status")
            code = f" (HTTP {status})" if isinstance(status, int) and status else ""
            return failed(
                name,
                f"denied by {master} at {at}: {reason}{code}",
                "give the node a valid join token (node-master token create prints one) or "
                "a trust rule that admits it ([registration] trust in master.toml); the agent "
                "asks again by itself",
            )
        return failed(name, f"unknown registration phase {one_line(phase, 40)!r}", RESTART_FIX)

    async def join_token(self) -> CheckResult:
        name = "join token"
        path = self.config.token_file
        if self.config.master is None or path is None:
            given = "token set" if self.config.token else "no join token"
            return passed(name, f"{given}" + ("" if self.config.master else " (no master)"))
        try:
            await self._bridge.run(read_token_file, path)
        except ConfigError as exc:
            if await self._bridge.run((self.pki_dir / CERT_FILE).exists):
                return passed(name, f"not needed (the node holds a certificate): {exc}")
            return failed(
                name,
                str(exc),
                f"write the token `node-master token create` printed into {path}, mode 0600",
            )
        return passed(name, f"{path} holds a join token")

    # -- ports and the unit ----------------------------------------------------------------------

    async def _port(self, name: str, key: str, value: str) -> CheckResult:
        hostname, port = split_host_port(value, key)
        state = await self._bridge.run(host.probe_port, hostname, port)
        if state.free:
            return passed(name, f"{state.address} is free")
        if state.problem:
            return failed(name, f"{state.address}: {state.problem}", f"set {key} to HOST:PORT")
        if state.held_by(AGENT_MARKERS):
            return passed(name, f"{state.address} is the agent's (pid {state.pid})")
        return failed(
            name,
            f"{state.address} is in use by {state.holder}",
            f"stop that process, or set {key} to a free port",
        )

    async def health_port(self) -> CheckResult:
        return await self._port("health port", "health_addr", self.config.health_addr)

    async def api_port(self) -> CheckResult:
        return await self._port("api port", "api_addr", self.config.api_addr)

    async def api_socket(self) -> CheckResult:
        name = "api socket"
        path = self.config.api_socket
        state = await self._bridge.run(host.probe_unix_socket, path)
        if state == "not-a-socket":
            return failed(name, f"{path} exists and is not a socket", f"remove {path}")
        described = {
            "absent": "absent (the agent creates it at start)",
            "stale": "a stale socket (the agent replaces it at start)",
            "served": "served (the agent runs)",
        }
        return passed(name, f"{path}: {described[state]}")

    async def systemd(self) -> CheckResult:
        return await host.systemd_check(UNIT, self._bridge, self._systemctl, self._environ)


def _read_optional(path: Path) -> bytes | None:
    try:
        return host.read_file(path)
    except FileNotFoundError:
        return None


def _read_state(path: Path) -> dict[str, Any] | None:
    """The agent's registration state (blocking): None when absent; OSError when the file
    cannot be read as one (read_state of the agent would read a FIFO for ever)."""
    try:
        state = json.loads(host.read_file(path, STATE_MAX_BYTES))
    except FileNotFoundError:
        return None
    except ValueError:
        raise OSError(errno.EINVAL, "not a registration state (JSON object)", str(path)) from None
    if not isinstance(state, dict):
        raise OSError(errno.EINVAL, "not a registration state (JSON object)", str(path))
    return state


def _pair_matches(key_pem: bytes, cert: x509.Certificate) -> bool:
    try:
        key = key_from_pem(key_pem).public_key()
    except PkiError:
        return False
    der = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    return key.public_bytes(*der) == cert.public_key().public_bytes(*der)


def load_result(
    config_path: Path | None, overrides: Mapping[str, object]
) -> tuple[AgentConfig | None, CheckResult]:
    """The configuration and its check line (the first; nothing else runs without it)."""
    name = "config"
    problem = host.not_regular(config_path or DEFAULT_CONFIG_PATH)
    if problem is not None:  # reading a FIFO would wait for a writer for ever
        return None, failed(name, problem, "point --config at the agent's TOML file")
    try:
        config = load_agent_config(config_path, overrides, path_required=config_path is not None)
    except ConfigError as exc:
        return None, failed(name, str(exc), "correct the file or flag named above")
    if config_path is None and DEFAULT_CONFIG_PATH.exists():
        config_path = DEFAULT_CONFIG_PATH
    source = config_path or "no config file (defaults and flags)"
    return config, passed(name, f"{source} parses (node {config.node_name})")


async def _doctor(config: AgentConfig) -> list[CheckResult]:
    bridge = ThreadBridge(BRIDGE_THREADS, name="doctor")
    try:
        return await NodeDoctor(config, bridge).run()
    finally:
        bridge.close()


def main(config_path: Path | None, overrides: Mapping[str, object], output: str) -> int:
    """``node-agent doctor``: the report on stdout; 0 when every check passed, else 1."""
    config, first = load_result(config_path, overrides)
    results = [first]
    if config is not None:
        results += asyncio.run(_doctor(config))
    return report(results, output)
