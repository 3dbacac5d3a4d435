"""Lease renewals shared between masters (several masters on one etcd; issue 19 item 2).

A node renews its lease at the master it talks to, every ``lease_renew_s``; the renewal stays in
that master's memory (a renewal writes nothing to the store). So that every master — the leader
above all, which judges readiness and evicts — sees every node's renewals, each master writes,
every ``REPORT_EVERY_S``, the names of the nodes renewed at it since its last report to its own
key ``/renewals/<identity>`` (one put, at most ``REPORT_MAX_NAMES`` names a put), and every master
watches ``/renewals/`` and takes each reported name as renewed at the moment the report reaches
it (its own clock: no clock of another machine is compared). Why this and not each lease in the
store: docs/decisions.md, "Leader election and shared renewals".

The view of the renewals is complete from the moment the watch is set up (:meth:`since`); the
watch broken (the store away) makes it incomplete (None) until it is set up again, from the
store's current revision: the reports missed meanwhile are not replayed, the registry judges no
node NotReady until a full grace has passed in the new view.

A report is another master's write in an etcd that may be shared: its value is parsed and
bounded (a JSON object ``{"nodes": [names]}``, valid node names, at most ``REPORT_MAX_NAMES``),
anything else is ignored with a warning; names of nodes without a record are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import NoReturn

from agent.aio.logs import kv
from agent.errors import StoreError
from agent.master.registry import NodeRegistry
from agent.master.store.base import EventType, Store
from agent.names import is_node_name

log = logging.getLogger(__name__)

RENEWALS_PREFIX = "/renewals/"
REPORT_EVERY_S = 1.0  # how late another master may learn of a renewal (plus the watch's delay)
REPORT_MAX_NAMES = 2_000  # names a put: ~130 KiB at most, well under etcd's 1.5 MiB request
FOLLOW_RETRY_FIRST_S = 0.25
FOLLOW_RETRY_MAX_S = 2.0


def report_value(names: list[str]) -> bytes:
    return json.dumps({"nodes": names}, separators=(",", ":")).encode()


def parse_report(value: bytes) -> list[str] | None:
    """The names of a report, or None when the value is not one."""
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return None
    names = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(names, list) or len(names) > REPORT_MAX_NAMES:
        return None
    if not all(isinstance(n, str) and is_node_name(n) for n in names):
        return None
    return names


class RenewalExchange:
    def __init__(
        self,
        store: Store,
        registry: NodeRegistry,
        identity: str,
        *,
        on_ready: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._registry = registry
        self._key = RENEWALS_PREFIX + identity
        self._on_ready = on_ready or (lambda: None)
        self._clock = clock
        self._since: float | None = None
        self.following = asyncio.Event()  # set once the watch was first set up
        self.failing = ""  # why the last report failed ('' when it did not)
        self._failing_since: float | None = None  # the first failure of the current run
        self.reported = 0  # names written (tests, logs)
        registry.sharing = True

    def since(self) -> float | None:
        """Since when (monotonic) this master has seen every report; None when it cannot."""
        return self._since

    def refused(self) -> str:
        """Why a renewal cannot be passed on now ('' when it can): the last report failed, or
        this master does not see the others' reports."""
        if self.failing:
            return f"renewals cannot be reported to the other masters ({self.failing})"
        if self._since is None:
            return "the other masters' renewals are not followed (the store's watch is down)"
        return ""

    async def report(self) -> NoReturn:
        """Write the nodes renewed here, every ``REPORT_EVERY_S`` (an empty report too: it
        proves the road to the store); a failed write keeps them for the next (one warning
        per run of failures), for a renewal interval at most (:meth:`_too_late`)."""
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            names = self._registry.take_renewed()
            if names and self._too_late():
                log.warning(
                    "renewals: dropped, too old to report as renewed now",
                    extra=kv(nodes=len(names), failing_for_s=self._clock() - self._failing_at()),
                )
                names = []
            try:
                for start in range(0, max(len(names), 1), REPORT_MAX_NAMES):
                    chunk = names[start : start + REPORT_MAX_NAMES]
                    await self._store.put(self._key, report_value(chunk))
                    self.reported += len(chunk)
            except StoreError as exc:
                self._registry.give_back(names)
                if not self.failing:
                    log.warning(
                        "renewals: the report to the other masters failed; kept for the next",
                        extra=kv(error=str(exc), nodes=len(names)),
                    )
                self.failing = str(exc)[:300] or exc.__class__.__name__
                if self._failing_since is None:
                    self._failing_since = self._clock()
                continue
            if self.failing:
                log.info("renewals: reported again", extra=kv(nodes=len(names)))
            self.failing, self._failing_since = "", None

    def _failing_at(self) -> float:
        return self._clock() if self._failing_since is None else self._failing_since

    def _too_late(self) -> bool:
        """Whether the names kept from failed reports are too old to pass on: every master
        takes a reported name as renewed when the report reaches it, so names kept through a
        long outage would renew, at every master, leases that ran out meanwhile (a node that
        died during the outage judged Ready again for a grace). Renewals are refused here
        while reports fail, so those names were all renewed before the run of failures began;
        after a renewal interval a live node has renewed again at a master that can report."""
        return self._clock() - self._failing_at() > self._registry.config.lease_renew_s

    async def withdraw(self) -> None:
        """Remove this master's report key (a clean stop: nothing of it stays in the store;
        a master that died leaves its last report, which its next start replaces)."""
        with contextlib.suppress(StoreError):
            await self._store.delete(self._key)

    async def follow(self) -> NoReturn:
        """Take every master's reports as renewals, for as long as the master runs."""
        pause_s = FOLLOW_RETRY_FIRST_S
        while True:
            try:
                _, revision = await self._store.list_prefix(RENEWALS_PREFIX)
                self._since = self._clock()
                self.following.set()
                async for event in self._store.watch(RENEWALS_PREFIX, revision):
                    pause_s = FOLLOW_RETRY_FIRST_S
                    if event.type is not EventType.PUT:
                        continue
                    names = parse_report(event.value)
                    if names is None:
                        log.warning(
                            "renewals: a report that is not one is ignored",
                            extra=kv(key=event.key[:200], revision=event.revision),
                        )
                        continue
                    if self._registry.renewed_elsewhere(names):
                        self._on_ready()
                raise StoreError("the watch of the renewals ended")  # it never should
            except StoreError as exc:  # CompactedError included: set up again from now
                if self._since is not None:
                    log.warning(
                        "renewals: the watch broke; no node is judged NotReady until a grace "
                        "has passed once it is set up again",
                        extra=kv(error=str(exc), retry_s=pause_s),
                    )
                self._since = None
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, FOLLOW_RETRY_MAX_S)
