"""The node's link to the master: the manager that sequences identity, registration and one
session at a time.

One attempt: the master's CA (pinned) → register if the node holds no certificate from it →
serve the node API with the node certificate → open an mTLS session, renew the lease once
(proof that the certificate works) → run the lease, the pod watch, the status reports and the
certificate rotation under one TaskGroup until one of them fails → back off → next attempt.

The agent never blocks on the master: this manager runs beside the pod workers and only ever
*adds* information (desired pods from the master); when the master is unreachable the pods it
last assigned keep running from the checkpoint. Reconnects wait with full jitter under a
ceiling that grows with the age of the outage (capped by ``master_backoff_max_s``; see
``backoff.py``), so a fleet reconnecting after a master restart spreads out evenly; refusals
(pin mismatch, registration denied) retry slowly, at random within twice that cap. What the
link is doing is a typed :class:`LinkCondition` (``state.py``): health decides on it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Protocol

from agent.aio.bridge import ThreadBridge
from agent.aio.logs import kv
from agent.aio.tasks import TaskScope, forever
from agent.errors import (
    AgentError,
    IdentityRejectedError,
    MasterTimeoutError,
    MasterUnavailableError,
    NotTheMasterError,
    PkiError,
    RegistrationDeniedError,
    TaskEndedError,
)
from agent.node.backoff import ReconnectBackoff
from agent.node.masterlink.client import MasterClient, MasterSession
from agent.node.masterlink.endpoints import FAILOVER_SPREAD_S, SILENT_FAILOVER_SPREAD_S
from agent.node.masterlink.identity import RECONNECT_ROTATED, CertificateRotation, NodeIdentity
from agent.node.masterlink.lease import LeaseKeeper
from agent.node.masterlink.registration import Registrar
from agent.node.masterlink.state import LinkCondition, LinkStatus
from agent.node.masterlink.status import StatusReporter
from agent.node.masterlink.watch import MasterPodSource

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
DENIED_RETRY_FACTOR = 2.0  # refused nodes retry slowly: twice the reconnect back-off cap

Sleep = Callable[[float], Awaitable[None]]


class NodeApiServer(Protocol):
    """The node's authenticated API as the link drives it (``streaming/server.py``): served
    once the node holds a certificate; a rotated certificate is reloaded in place."""

    @property
    def running(self) -> bool: ...

    def build_tls(self, cert: Path, key: Path, ca_pem: bytes) -> ssl.SSLContext: ...

    async def start(self, tls: ssl.SSLContext) -> None: ...

    def reload_cert(self, cert: Path, key: Path) -> None: ...

    async def stop(self) -> None: ...


class MasterLink:
    name = "master-link"

    def __init__(
        self,
        *,
        client: MasterClient,
        identity: NodeIdentity,
        registrar: Registrar,
        lease: LeaseKeeper,
        watch: MasterPodSource,
        reporter: StatusReporter,
        rotation: CertificateRotation,
        node_api: NodeApiServer,
        status: LinkStatus,
        bridge: ThreadBridge,
        tasks: TaskScope,
        backoff_max_s: float,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        backoff: ReconnectBackoff | None = None,
    ) -> None:
        self._client = client
        self._identity = identity
        self._registrar = registrar
        self._lease = lease
        self._watch = watch
        self._reporter = reporter
        self._rotation = rotation
        self._node_api = node_api
        self.status = status
        self._bridge = bridge
        self._tasks = tasks
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.backoff = backoff or ReconnectBackoff(
            min(BACKOFF_INITIAL_S, backoff_max_s), backoff_max_s, rng=self._rng
        )
        self._denied_retry_s = DENIED_RETRY_FACTOR * backoff_max_s

    async def start(self) -> None:
        """Start linking in the background: the agent does not wait for the master."""
        await self._tasks.start()
        self._tasks.spawn("master-link", self._run, eternal=True)

    async def stop(self) -> None:
        await self._tasks.stop()
        await self._node_api.stop()

    async def _run(self) -> None:
        while True:
            await self._sleep(await self.attempt())

    async def attempt(self) -> float:
        """One connection attempt, to its end; returns how long to wait before the next."""
        try:
            try:
                ca_pem = await self._identity.pinned_ca(self._client)
            except PkiError as exc:
                return self._refused(
                    LinkCondition.CA_REJECTED, f"master: {exc}", "refusing this master's CA"
                )
            if not await self._identity.has_valid_cert(ca_pem):
                await self._registrar.register(ca_pem)
            await self._session(ca_pem)
        except TaskEndedError:
            raise
        except PkiError as exc:
            return self._refused(
                LinkCondition.IDENTITY_UNUSABLE, f"master: {exc}", "node identity unusable"
            )
        except NotTheMasterError as exc:
            return self._refused(
                LinkCondition.NOT_THE_MASTER,
                f"master: {exc}",
                "refusing a server that is not the master",
            )
        except IdentityRejectedError as exc:
            self.status.set(LinkCondition.IDENTITY_REJECTED, f"master: {exc}")
            log.warning(
                "master rejected our certificate; registering again", extra=kv(error=str(exc))
            )
            await self._identity.forget_cert()
            self._watch.forget_revision()
            return self._rng.uniform(0, self.backoff.initial_s)
        except RegistrationDeniedError as exc:
            return self._refused(
                LinkCondition.REGISTRATION_DENIED,
                f"registration: {exc}",
                "registration refused by the master",
            )
        except AgentError as exc:
            return self._unreachable(exc)
        raise AssertionError("a master session ends only by an exception")  # pragma: no cover

    def _unreachable(self, exc: AgentError) -> float:
        """The master failed (connection, time-out, 5xx): with several masters, the next one
        (one log line per switch, ``endpoints.py``); the wait before the next attempt."""
        self.status.set(LinkCondition.UNREACHABLE, f"master: unreachable: {exc}")
        endpoints = self._client.endpoints
        failed = endpoints.current
        # Full jitter: a fleet that lost the master together comes back spread out.
        delay = self.backoff.next_delay()  # (also starts the outage's clock)
        if not endpoints.several:
            log.warning(
                "master unreachable; pods keep running", extra=kv(master=failed, error=str(exc))
            )
            return delay
        untried = endpoints.failed()
        log.warning(
            "master unreachable; switching to the next master; pods keep running",
            extra=kv(master=failed, next=endpoints.current, error=str(exc)),
        )
        if untried:  # soon, spread: the nodes of a dead master do not arrive in one burst
            # (a silent master's nodes time out at their own renewal times: spread already)
            spread = SILENT_FAILOVER_SPREAD_S if isinstance(exc, MasterTimeoutError) else None
            return self._rng.uniform(0, min(spread or FAILOVER_SPREAD_S, self.backoff.cap_s))
        return delay  # every master failed in this outage: its back-off paces the rounds

    def _refused(self, condition: LinkCondition, message: str, what: str) -> float:
        self.status.set(condition, message)
        endpoints = self._client.endpoints
        log.error(what, extra=kv(master=endpoints.current, error=message))
        if endpoints.several:
            endpoints.failed()  # the next attempt asks another master (slowly still)
        return self._rng.uniform(0, self._denied_retry_s)

    async def _serve_node_api(self, ca_pem: bytes) -> None:
        cert, key = self._identity.cert_path, self._identity.key_path
        try:
            if self._node_api.running:
                await self._bridge.run(self._node_api.reload_cert, cert, key)
                return
            tls = await self._bridge.run(self._node_api.build_tls, cert, key, ca_pem)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise PkiError(f"node API certificate: {exc}") from exc
        try:
            await self._node_api.start(tls)
        except OSError as exc:
            log.error("node API cannot listen", extra=kv(error=str(exc)))

    async def _session(self, ca_pem: bytes) -> None:
        await self._serve_node_api(ca_pem)
        tls = await self._identity.client_tls(ca_pem)
        async with self._client.session(tls) as session:
            await self._lease.renew(session)  # proves the certificate works before going on
            # Only a working link ends the outage: resetting before this would let an agent
            # whose certificate is on disk retry every 0.5 s for as long as the master is down.
            self.backoff.reset()
            self._client.endpoints.succeeded()
            self.status.registered = True
            self.status.set(LinkCondition.CONNECTED, "")
            log.info("connected to the master", extra=kv(master=self._client.base_url))
            parts: dict[str, Callable[[MasterSession], Awaitable[None]]] = {
                "master-lease": self._lease.run,
                "master-watch": self._watch.run,
                "master-status": self._reporter.run,
                "master-rotation": self._rotation.run,
            }
            try:
                async with asyncio.TaskGroup() as group:
                    for name, run in parts.items():
                        group.create_task(forever(name, partial(run, session)), name=name)
            except BaseExceptionGroup as failed:
                ended = most_telling(failed)
                # The rotation finishes before the group ends (it shields its renewal): once
                # it stored a new pair, a 403 to a request made with the old certificate is
                # the master superseding it, not a reason to register again.
                if self._rotation.rotated and not isinstance(ended, TaskEndedError):
                    raise MasterUnavailableError(RECONNECT_ROTATED) from None
                raise ended from None


def most_telling(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that decides what the link does next: a bug first, then a rejected
    identity, then an outage."""
    flat: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        else:
            flat.append(item)
    for kind in (TaskEndedError, IdentityRejectedError, MasterUnavailableError):
        for exc in flat:
            if isinstance(exc, kind):
                return exc
    return flat[0]
