"""The node's lease on the master, carrying the node's status (facts and conditions).

The lease is renewed every ``leaseRenewSeconds`` (the master says how often). Its body carries
the node's status when it changed, and at least every ``STATUS_REFRESH_S`` so the master's view
heals even if one update was lost. Facts (addresses, capacity, image filesystem) are recomputed
every ``STATUS_CHECK_S``; conditions (runtime, checkpoint) are cheap and urgent and are checked
at every renewal, so the master learns of a Docker outage or a full disk within one interval.
Resource usage (``nodectl top``) rides along whenever a new sample was taken (agent.node.usage).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from agent.node.masterlink.client import REQUEST_TIMEOUT_S, MasterSession
from agent.node.masterlink.endpoints import SILENT_MASTER_TIMEOUT_S

LEASE_TIMEOUT_FACTOR = 2.0  # a lease renewal may take this many renew intervals
LEASE_RENEW_DEFAULT_S = 10.0
STATUS_CHECK_S = 60.0  # how often the node's own facts are recomputed
STATUS_REFRESH_S = 300.0  # the status is sent at least this often even when unchanged

Sleep = Callable[[float], Awaitable[None]]
Conditions = Callable[[], list[dict[str, str]]]


class StatusFacts(Protocol):
    async def status(self) -> dict[str, Any]: ...


class Usage(Protocol):
    """The node's resource usage for ``nodectl top`` (agent.node.usage.UsageSampler)."""

    async def report(self) -> dict[str, Any] | None: ...


def renew_timeout_s(renew_s: float, *, several: bool, steady: bool) -> float:
    """How long a renewal may take: two renewal intervals (at most ``REQUEST_TIMEOUT_S``); a
    steady renewal with other masters to go to, ``SILENT_MASTER_TIMEOUT_S`` (endpoints.py: a
    silent master is left for another within 15 s)."""
    timeout_s = min(REQUEST_TIMEOUT_S, LEASE_TIMEOUT_FACTOR * renew_s)
    if steady and several:
        return min(timeout_s, SILENT_MASTER_TIMEOUT_S)
    return timeout_s


class LeaseKeeper:
    def __init__(
        self,
        node_name: str,
        facts: StatusFacts,
        *,
        conditions: Conditions,
        sleep: Sleep,
        clock: Callable[[], float] = time.monotonic,
        usage: Usage | None = None,
    ) -> None:
        self._node_name = node_name
        self._usage = usage
        self._facts = facts
        self._conditions = conditions
        self._sleep = sleep
        self._clock = clock
        self.renew_s = LEASE_RENEW_DEFAULT_S
        self._facts_value: dict[str, Any] = {}
        self._checked_at = float("-inf")
        self._sent: dict[str, Any] = {}
        self._sent_at = float("-inf")

    async def renew(self, session: MasterSession, *, steady: bool = False) -> None:
        """Renew once; the first renewal of a session proves the certificate works (``steady``:
        one of the renewals after it)."""
        now = self._clock()
        if now - self._checked_at >= STATUS_CHECK_S:
            self._checked_at = now
            self._facts_value = await self._facts.status()
        # "master": the master this session talks to (`nodectl get nodes -o wide` shows it).
        status = {**self._facts_value, "conditions": self._conditions(), "master": session.base_url}
        body: dict[str, Any] = {}
        if status != self._sent or now - self._sent_at >= STATUS_REFRESH_S:
            body["status"] = status
        if self._usage is not None:
            # A new sample only (at most every USAGE_SAMPLE_S); the master keeps the latest.
            usage = await self._usage.report()
            if usage is not None:
                body["usage"] = usage
        # A partition drops packets silently: the lease renewal is what notices it, well before
        # the master's grace period ends, and its failure tears down the session with it.
        timeout_s = renew_timeout_s(self.renew_s, several=session.several, steady=steady)
        answer = await session.call(
            "PUT", f"/v1/nodes/{self._node_name}/lease", body, timeout_s=timeout_s
        )
        if "status" in body:
            self._sent = status
            self._sent_at = now
        renew_s = answer.get("leaseRenewSeconds") if isinstance(answer, dict) else None
        if isinstance(renew_s, int | float) and renew_s > 0:
            self.renew_s = float(renew_s)

    async def run(self, session: MasterSession) -> None:
        """Renew every interval until a renewal fails (which ends the session)."""
        while True:
            await self._sleep(self.renew_s)
            await self.renew(session, steady=True)
