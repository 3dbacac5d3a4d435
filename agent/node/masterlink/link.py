"""The node's link to the master: identity, registration, leases, pod watch, status reports,
certificate rotation.

The agent never blocks on the master: this manager runs beside the pod workers and only ever
*adds* information (desired pods from the master); when the master is unreachable the pods it
last assigned keep running from the checkpoint. Identity lives in ``<state_dir>/pki``: the key
(0600, generated once), the node certificate and the pinned CA. Reconnects wait with full
jitter under a ceiling that grows with the age of the outage (capped by
``master_backoff_max_s``; see ``backoff.py``), so a fleet reconnecting after a master restart
spreads out evenly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from agent import __version__
from agent.aio.bridge import ThreadBridge
from agent.aio.logs import kv
from agent.aio.tls import client_context
from agent.config import AgentConfig, split_host_port
from agent.errors import (
    AgentError,
    IdentityRejectedError,
    ManifestError,
    MasterUnavailableError,
    PkiError,
    RegistrationDeniedError,
)
from agent.manifest import parse_pod
from agent.node.backoff import ReconnectBackoff
from agent.node.pods.manager import PodManager
from agent.node.runtime.base import Runtime
from agent.node.streaming.api import StreamingRuntime
from agent.node.streaming.server import NodeApi
from agent.pki.core import (
    build_csr,
    certs_from_pem,
    check_pins,
    generate_key,
    key_from_pem,
    key_to_pem,
    rotation_due_at,
    spki_pin,
    verify_issued_by,
    write_private,
)
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from agent.types import Pod

log = logging.getLogger(__name__)

SOURCE_API = "api"
SOURCE_FILE_PREFIX = "file:"
MIRROR_ANNOTATION = "node-agent.io/mirror"
REQUEST_TIMEOUT_S = 30.0
LEASE_TIMEOUT_FACTOR = 2.0  # a lease renewal may take this many renew intervals
POLL_WAIT_S = 30.0
DENIED_RETRY_FACTOR = 2.0  # refused nodes retry slowly: twice the reconnect back-off cap
STATUS_REPORT_S = 2.0
STATUS_CHECK_S = 60.0  # how often the node's own status is recomputed
STATUS_REFRESH_S = 300.0  # sent at least this often even when unchanged
BACKOFF_INITIAL_S = 0.5
_VIRTUAL_IFACES = ("lo", "docker", "veth", "br-", "virbr", "cni", "flannel", "cali")


@dataclass(slots=True)
class LinkState:
    registered: bool = False
    problem: str = "master: not contacted yet"
    connected: bool = False


def node_addresses() -> list[str]:
    """Global addresses of physical-looking interfaces, via netlink (blocking: bridge it)."""
    from pyroute2 import IPRoute

    found: list[str] = []
    with IPRoute() as ipr:
        links = {link["index"]: link.get("IFLA_IFNAME") or "" for link in ipr.get_links()}
        for msg in ipr.get_addr():
            if msg["scope"] != 0:  # 0 = RT_SCOPE_UNIVERSE: skip host and link scope
                continue
            if links.get(msg["index"], "").startswith(_VIRTUAL_IFACES):
                continue
            address = msg.get("IFA_ADDRESS")
            if address:
                found.append(str(address))
    return found


def node_capacity(state_dir: Path, max_pods: int) -> dict[str, str]:
    disk = psutil.disk_usage(str(state_dir if state_dir.exists() else state_dir.parent))
    return {
        "cpu": str(psutil.cpu_count() or 1),
        "memory": f"{psutil.virtual_memory().total // 1024}Ki",
        "ephemeral-storage": f"{disk.total // 1024}Ki",
        "pods": str(max_pods),
    }


class MasterLink:
    def __init__(
        self,
        config: AgentConfig,
        pods: PodManager,
        bridge: ThreadBridge,
        runtime: Runtime,
        *,
        conditions: Callable[[], list[dict[str, str]]] | None = None,
        streaming_runtime: StreamingRuntime | None = None,
    ) -> None:
        self.runtime = runtime
        self._conditions = conditions
        assert config.master is not None
        self.config = config
        self.pods = pods
        self.bridge = bridge
        self.state = LinkState()
        self.pki_dir = config.state_dir / "pki"
        self.master = config.master.rstrip("/")
        self._api_pods: dict[str, Pod] = {}
        self._reported: dict[str, str] = {}
        self._mirrored: dict[str, str] = {}  # full name -> spec hash put on the master
        self._lease_renew_s = 10.0
        self.node_api = NodeApi(
            pods,
            config.node_name,
            config.api_addr,
            streaming_runtime=streaming_runtime,
            run_blocking=bridge.run,
        )
        self._denied_retry_s = DENIED_RETRY_FACTOR * config.master_backoff_max_s
        self._status_sent: dict[str, Any] = {}
        self._status_sent_at = float("-inf")
        self._status_checked = float("-inf")
        self._facts: dict[str, Any] = {}
        self._watch_revision: int | None = None  # None: list before watching
        cap_s = config.master_backoff_max_s
        self._backoff = ReconnectBackoff(min(BACKOFF_INITIAL_S, cap_s), cap_s)

    # -- identity --------------------------------------------------------------------------

    def _load_or_create_key(self) -> bytes:
        path = self.pki_dir / "node.key"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pem = key_to_pem(generate_key())
            write_private(path, pem)
            return pem

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.pki_dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, name: str, data: bytes) -> None:
        write_private(self.pki_dir / name, data)

    async def _pinned_ca(
        self, session_factory: Callable[[ssl.SSLContext], aiohttp.ClientSession]
    ) -> bytes:
        """The master's CA: from disk if pinned before, else fetched and checked against pins."""
        stored = await self.bridge.run(self._read, "ca.crt")
        if stored is not None:
            return stored
        async with session_factory(client_context(None)) as session:
            try:
                async with session.get(f"{self.master}/v1/ca") as resp:
                    if resp.status != 200:
                        raise MasterUnavailableError(f"GET /v1/ca answered {resp.status}")
                    pem = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise MasterUnavailableError(f"cannot reach {self.master}: {exc}") from exc
        bundle = certs_from_pem(pem)
        if self.config.ca_cert_hash:
            check_pins(bundle, self.config.ca_cert_hash)  # PkiError: refuse, nothing sent
        else:
            log.warning(
                "NO CA PIN CONFIGURED: trusting the master's CA on first use; "
                "pin it with --ca-cert-hash",
                extra=kv(master=self.master, pin=spki_pin(bundle[0])),
            )
        await self.bridge.run(self._write, "ca.crt", pem)
        return pem

    def _cert_valid(self, ca_pem: bytes) -> bool:
        cert_pem = self._read("node.crt")
        if cert_pem is None:
            return False
        try:
            verify_issued_by(certs_from_pem(cert_pem)[0], certs_from_pem(ca_pem))
        except PkiError:
            return False
        return True

    # -- main loop -------------------------------------------------------------------------

    def _session(self, ctx: ssl.SSLContext) -> aiohttp.ClientSession:
        source = self.config.bind_source
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, local_addr=(source, 0) if source else None),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=None
            ),
        )

    async def run(self) -> None:
        await self.bridge.run(self._load_or_create_key)
        backoff = self._backoff
        while True:
            try:
                ca_pem = await self._pinned_ca(self._session)
                if not await self.bridge.run(self._cert_valid, ca_pem):
                    await self._register(ca_pem)
                await self._connected(ca_pem)
            except PkiError as exc:
                self.state.problem = f"master: {exc}"
                log.error(
                    "refusing to register with this master",
                    extra=kv(master=self.master, error=str(exc)),
                )
                wait = random.uniform(0, self._denied_retry_s)
            except IdentityRejectedError as exc:
                self.state.problem = f"master: {exc}"
                log.warning(
                    "master rejected our certificate; registering again", extra=kv(error=str(exc))
                )
                await self.bridge.run(self._forget_cert)
                self._watch_revision = None
                wait = random.uniform(0, BACKOFF_INITIAL_S)
            except RegistrationDeniedError as exc:
                self.state.problem = f"registration: {exc}"
                log.error(
                    "registration refused by the master",
                    extra=kv(master=self.master, reason=str(exc)),
                )
                wait = random.uniform(0, self._denied_retry_s)
            except (AgentError, aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                self.state.connected = False
                self.state.problem = f"master: unreachable: {exc}"
                log.warning(
                    "master unreachable; pods keep running",
                    extra=kv(master=self.master, error=str(exc)),
                )
                # Full jitter: a fleet that lost the master together comes back spread out.
                wait = backoff.next_delay()
            await asyncio.sleep(wait)

    def _forget_cert(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.pki_dir / "node.crt").unlink()

    async def _register(self, ca_pem: bytes) -> None:
        key = key_from_pem(await self.bridge.run(self._read_key))
        name = self.config.node_name
        addresses = await self.bridge.run(node_addresses)
        hostname = socket.gethostname().lower()
        csr = build_csr(key, NODE_CN_PREFIX + name, [NODES_GROUP], [name, hostname, *addresses])
        capacity = await self.bridge.run(node_capacity, self.config.state_dir, self.config.max_pods)
        body = {
            "nodeName": name,
            "csr": csr.decode(),
            "addresses": addresses,
            "hostname": hostname,
            "capacity": capacity,
            "labels": dict(item.split("=", 1) for item in self.config.node_labels),
            "agentVersion": __version__,
        }
        # A machine identity from a fleet CA, if configured, is presented for the client-cert
        # trust rule; it is used for registration only, never afterwards.
        bootstrap = await self.bridge.run(
            functools.partial(
                client_context,
                ca_pem,
                cert_file=self.config.bootstrap_cert,
                key_file=self.config.bootstrap_key,
            )
        )
        async with self._session(bootstrap) as session:
            try:
                async with session.post(f"{self.master}/v1/registrations", json=body) as resp:
                    answer = await resp.json(content_type=None)
                    status = resp.status
                while status == 202:
                    self.state.problem = "registration: pending approval by an administrator"
                    log.info(
                        "registration pending approval", extra=kv(request=answer.get("requestId"))
                    )
                    rid = answer["requestId"]
                    url = f"{self.master}/v1/registrations/{rid}?timeoutSeconds={POLL_WAIT_S:g}"
                    async with session.get(url) as resp:
                        answer = await resp.json(content_type=None)
                        status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise MasterUnavailableError(f"registration failed: {exc}") from exc
        if status in (403, 409):
            reason = answer.get("reason") or answer.get("error", {}).get("message", "")
            raise RegistrationDeniedError(f"{status}: {reason}")
        if status != 200 or "certificate" not in answer:
            raise MasterUnavailableError(f"registration answered {status}: {answer}")
        await self.bridge.run(self._write, "node.crt", answer["certificate"].encode())
        log.info(
            "registered with the master",
            extra=kv(master=self.master, admitted_by=answer.get("admittedBy")),
        )

    def _read_key(self) -> bytes:
        return (self.pki_dir / "node.key").read_bytes()

    def _mtls(self, ca_pem: bytes) -> ssl.SSLContext:
        return client_context(
            ca_pem, cert_file=self.pki_dir / "node.crt", key_file=self.pki_dir / "node.key"
        )

    async def _serve_node_api(self, ca_pem: bytes) -> None:
        cert, key = self.pki_dir / "node.crt", self.pki_dir / "node.key"
        if self.node_api.running:
            await self.bridge.run(self.node_api.reload_cert, cert, key)
            return
        tls = await self.bridge.run(self.node_api.build_tls, cert, key, ca_pem)
        try:
            await self.node_api.start(tls)
        except OSError as exc:
            log.error("node API cannot listen", extra=kv(addr=self.config.api_addr, error=str(exc)))

    async def _connected(self, ca_pem: bytes) -> None:
        await self._serve_node_api(ca_pem)
        ctx = await self.bridge.run(self._mtls, ca_pem)
        async with self._session(ctx) as session:
            await self._renew_lease(session)  # proves the certificate works before going on
            # Only a working link ends the outage: resetting before this would let an agent
            # whose certificate is on disk retry every 0.5 s for as long as the master is down.
            self._backoff.reset()
            self.state.registered = True
            self.state.connected = True
            self.state.problem = ""
            log.info("connected to the master", extra=kv(master=self.master))
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._lease_loop(session))
                    group.create_task(self._watch_pods(session))
                    group.create_task(self._report_status(session))
                    group.create_task(self._rotate_when_due(session, ca_pem))
            except BaseExceptionGroup as failed:
                raise _most_telling(failed) from None

    async def _call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> Any:
        try:
            async with session.request(
                method,
                f"{self.master}{path}",
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                data = await resp.json(content_type=None)
                if resp.status in (401, 403):
                    raise IdentityRejectedError(
                        f"{method} {path}: {resp.status} {data.get('error', {}).get('message', '')}"
                    )
                if resp.status >= 500:
                    raise MasterUnavailableError(f"{method} {path}: {resp.status}")
                if resp.status >= 400:
                    raise AgentError(f"{method} {path}: {resp.status} {data}")
                return data
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise MasterUnavailableError(f"{method} {path}: {exc}") from exc

    async def _node_status(self) -> dict[str, Any]:
        addresses = await self.bridge.run(node_addresses)
        capacity = await self.bridge.run(node_capacity, self.config.state_dir, self.config.max_pods)
        host, port = split_host_port(self.config.api_addr, "api_addr")
        if host in ("0.0.0.0", "::", "") and addresses:
            host = addresses[0]
        status: dict[str, Any] = {
            "addresses": addresses,
            "capacity": capacity,
            "agentVersion": __version__,
            # Where nodectl --direct and the master's proxy reach the node API.
            "apiEndpoint": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        }
        try:
            usage = await self.runtime.image_fs_usage()
        except AgentError:
            return status  # the runtime is down: report the rest
        # Rounded to MiB so a few bytes written do not count as a change worth sending.
        status["imageFs"] = {k: v // (1 << 20) * (1 << 20) for k, v in usage.items()}
        return status

    async def _renew_lease(self, session: aiohttp.ClientSession) -> None:
        """Renew the lease; carry the node's status when it changed, and at least every
        ``STATUS_REFRESH_S`` (so the master's view heals even if one update was lost)."""
        body: dict[str, Any] = {}
        now = time.monotonic()
        if now - self._status_checked >= STATUS_CHECK_S:
            self._status_checked = now
            self._facts = await self._node_status()
        # Conditions (runtime, checkpoint) are cheap and urgent: checked at every renewal, so
        # the master learns of a Docker outage or a full disk within one lease interval.
        status = {**self._facts, "conditions": self._conditions() if self._conditions else []}
        if status != self._status_sent or now - self._status_sent_at >= STATUS_REFRESH_S:
            body["status"] = status
        # A partition drops packets silently: the lease renewal is what notices it, well before
        # the master's grace period ends, and its failure tears down the watch with it.
        timeout_s = min(REQUEST_TIMEOUT_S, LEASE_TIMEOUT_FACTOR * self._lease_renew_s)
        answer = await self._call(
            session,
            "PUT",
            f"/v1/nodes/{self.config.node_name}/lease",
            body,
            timeout_s=timeout_s,
        )
        if "status" in body:
            self._status_sent = body["status"]
            self._status_sent_at = now
        self._lease_renew_s = float(answer.get("leaseRenewSeconds", self._lease_renew_s))

    async def _lease_loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self._lease_renew_s)
            await self._renew_lease(session)

    # -- pods ------------------------------------------------------------------------------

    def _apply(self) -> None:
        self.pods.apply_source(SOURCE_API, list(self._api_pods.values()))

    def _accept(self, obj: dict[str, Any]) -> Pod | None:
        if obj.get("metadata", {}).get("annotations", {}).get(MIRROR_ANNOTATION):
            return None  # our own static pods as the master shows them: not desired state
        try:
            return parse_pod(
                {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in obj},
                source=SOURCE_API,
            )
        except ManifestError as exc:
            log.error("pod from the master rejected", extra=kv(error=str(exc)))
            return None

    async def _watch_pods(self, session: aiohttp.ClientSession) -> None:
        """List once, then watch; after a reconnect the watch resumes from the last resource
        version seen, so an outage costs no relist (and no re-apply) unless the master no
        longer has that history (410 in-band): then the next attempt relists."""
        node = self.config.node_name
        if self._watch_revision is None:
            listing = await self._call(session, "GET", f"/v1/nodes/{node}/pods")
            self._api_pods = {}
            for obj in listing["items"]:
                pod = self._accept(obj)
                if pod is not None:
                    self._api_pods[pod.full_name] = pod
            self._apply()
            self._watch_revision = int(listing["resourceVersion"])
        else:
            log.info("resuming the pod watch", extra=kv(resource_version=self._watch_revision))
        url = f"{self.master}/v1/nodes/{node}/pods?watch=1&resourceVersion={self._watch_revision}"
        try:
            async with session.get(url) as resp:
                if resp.status in (401, 403):
                    raise IdentityRejectedError(f"pod watch: {resp.status}")
                if resp.status == 410:
                    self._watch_revision = None
                    raise MasterUnavailableError("pod watch: history compacted; relisting")
                if resp.status != 200:
                    raise MasterUnavailableError(f"pod watch: {resp.status}")
                async for line in resp.content:
                    self._on_watch_event(json.loads(line))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MasterUnavailableError(f"pod watch: {exc}") from exc
        raise MasterUnavailableError("pod watch ended")

    def _on_watch_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "ERROR":
            error = event["object"]["error"]
            if error.get("code") == 410:
                self._watch_revision = None  # too old: relist on the next attempt
            raise MasterUnavailableError(f"pod watch: {error['message']}")
        obj = event["object"]
        full = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        changed = True
        if event["type"] == "DELETED":
            changed = self._api_pods.pop(full, None) is not None
        else:
            pod = self._accept(obj)
            known = self._api_pods.get(full)
            if pod is None or (
                known is not None and known.uid == pod.uid and known.spec_hash == pod.spec_hash
            ):
                changed = False  # a status echo or a mirror pod: nothing to do
            else:
                self._api_pods[full] = pod
        if "resourceVersion" in event:
            self._watch_revision = int(event["resourceVersion"])
        if changed:
            self._apply()

    async def _sync_mirrors(self, session: aiohttp.ClientSession) -> None:
        """Show this node's static pods on the master, read-only (kubelet's mirror pods)."""
        node = self.config.node_name
        static = {
            w.pod.full_name: w.pod
            for w in list(self.pods.workers.values())
            if w.pod.source.startswith(SOURCE_FILE_PREFIX) and not w.terminating
        }
        for full, pod in static.items():
            if self._mirrored.get(full) == pod.spec_hash:
                continue
            path = f"/v1/nodes/{node}/mirrorpods/{pod.metadata.namespace}/{pod.metadata.name}"
            try:
                await self._call(session, "PUT", path, dict(pod.manifest))
            except IdentityRejectedError:
                raise
            except AgentError as exc:
                log.warning(
                    "static pod not mirrored to the master", extra=kv(pod=full, error=str(exc))
                )
            self._mirrored[full] = pod.spec_hash  # also after a refusal: not retried every loop
            self._reported.pop(full, None)  # a (re)created mirror needs its status again
        for full in list(self._mirrored.keys() - static.keys()):
            namespace, name = full.split("/", 1)
            with contextlib.suppress(AgentError):
                await self._call(
                    session, "DELETE", f"/v1/nodes/{node}/mirrorpods/{namespace}/{name}"
                )
            del self._mirrored[full]

    async def _report_status(self, session: aiohttp.ClientSession) -> None:
        """Send each pod's latest status when it changed; only the latest is kept."""
        self._mirrored = {}
        self._reported = {}  # after a reconnect, send every status once more
        while True:
            await asyncio.sleep(STATUS_REPORT_S)
            await self._sync_mirrors(session)
            items = self.pods.pod_list()
            present = {f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in items}
            for gone in self._reported.keys() - present:
                del self._reported[gone]  # bounded by the pods the node has now
            for item in items:
                meta = item["metadata"]
                source = meta.get("annotations", {}).get("node-agent.io/source", "")
                if source != SOURCE_API and not source.startswith(SOURCE_FILE_PREFIX):
                    continue
                full = f"{meta['namespace']}/{meta['name']}"
                encoded = json.dumps(item["status"], sort_keys=True)
                if self._reported.get(full) == encoded:
                    continue
                try:
                    await self._call(
                        session,
                        "PUT",
                        f"/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                        item["status"],
                    )
                except IdentityRejectedError:
                    raise
                except AgentError as exc:
                    log.debug("status report skipped", extra=kv(pod=full, error=str(exc)))
                    continue
                self._reported[full] = encoded

    async def _rotate_when_due(self, session: aiohttp.ClientSession, ca_pem: bytes) -> None:
        current: bytes | None = await self.bridge.run(self._read, "node.crt")
        if current is None:
            raise IdentityRejectedError("node certificate disappeared")
        cert = certs_from_pem(current)[0]
        due = rotation_due_at(cert)
        wait = (due - dt.datetime.now(dt.UTC)).total_seconds()
        await asyncio.sleep(max(wait, 0.0))
        key = generate_key()
        csr = build_csr(key, NODE_CN_PREFIX + self.config.node_name, [NODES_GROUP], [])
        answer = await self._call(
            session, "POST", f"/v1/nodes/{self.config.node_name}/certificate", {"csr": csr.decode()}
        )
        await self.bridge.run(self._write, "node.key", key_to_pem(key))
        await self.bridge.run(self._write, "node.crt", answer["certificate"].encode())
        log.info(
            "node certificate rotated",
            extra=kv(
                expires=str(certs_from_pem(answer["certificate"].encode())[0].not_valid_after_utc)
            ),
        )
        # Reconnect with the new certificate; the pods keep running meanwhile.
        raise MasterUnavailableError("reconnecting with the rotated certificate")


def _most_telling(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that decides what the link does next (a rejected identity first)."""
    flat: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        else:
            flat.append(item)
    for kind in (IdentityRejectedError, MasterUnavailableError):
        for exc in flat:
            if isinstance(exc, kind):
                return exc
    return flat[0]
