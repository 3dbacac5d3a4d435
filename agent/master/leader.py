"""Which master leads: the election that decides the one master running the work that must run
once per cluster (issue 19 item 2): the readiness judgement's consequences (eviction and
disruption mode), the expiry of waiting registrations and the compaction of the store's history.
Every master, leader or not, serves the API and records the renewals of the nodes talking to it
(agent.master.renewals shares them).

* One master (SQLite, memory): :class:`SoleLeader`, always its own leader.
* Several masters on etcd: :class:`EtcdElection`. A master campaigns by creating the key
  ``LEADER_KEY`` bound to an etcd lease of its own (``[store] leader_lease_ttl_s``) in one
  transaction (create revision 0: the key must not exist), keeps the lease alive every third of
  its TTL, and leads while the lease is valid by its own clock: it stops leading a quarter TTL
  before the lease could expire in etcd (``is_leader`` answers from the clock, so a keep-alive
  stuck in a partition cannot keep it leading), and at once when a keep-alive fails. The others
  watch the key (and read it every third of the TTL, which tells them etcd still answers) and
  campaign as soon as it is deleted: by the lease's expiry (the leader died or lost etcd) or by
  the leader's resignation (a clean stop revokes its lease).

A leader that stepped down on a failed keep-alive keeps trying the same lease until it would have
expired: a keep-alive that succeeds in time, with the key still holding this master's value,
resumes the leadership without a vacancy; otherwise it campaigns again like the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import NoReturn, Protocol

from agent.aio.logs import kv
from agent.errors import StoreError
from agent.master.store.base import EventType, KeyValue, WatchEvent

log = logging.getLogger(__name__)

LEADER_KEY = "/election/leader"
DEFAULT_LEASE_TTL_S = 10
MIN_LEASE_TTL_S = 2  # etcd's own minimum with its default heartbeat
MAX_LEASE_TTL_S = 300
KEEPALIVE_FRACTION = 1 / 3  # keep-alive (and a follower's read of the key) every TTL/3
STEP_DOWN_FRACTION = 1 / 4  # stop leading this share of the TTL before the lease could expire
RETRY_FIRST_S = 0.25  # after a failed campaign or a broken watch; doubling up to:
RETRY_MAX_S = 2.0
RESUME_RETRY_S = 0.25  # keep-alives of a leader that stepped down, until its lease is over
MAX_HOLDER_CHARS = 300  # of the identity read from the key (someone else may have written it)


class Leadership(Protocol):
    """What the master asks the election (the managers, /readyz, /metrics)."""

    def is_leader(self) -> bool:
        """Whether this master leads now (the leader-only work runs only then)."""
        ...

    def leader(self) -> str:
        """The identity of the master known to lead, '' when none is known."""
        ...

    def unknown(self) -> str:
        """'' when a leader is known, else why not (/readyz's reason)."""
        ...

    def in_touch_since(self) -> float | None:
        """The monotonic time since which this master has been in touch with the election
        (etcd answering, none of its answers more than a TTL apart); None while it is not."""
        ...

    async def run(self) -> NoReturn:
        """Campaign, lead or follow, for as long as the master runs."""
        ...

    async def resign(self) -> None:
        """Stop leading and let another master take over at once (a clean stop)."""
        ...


class SoleLeader:
    """One master on its own store: always the leader, known since it started."""

    def __init__(self, identity: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.identity = identity
        self._since = clock()

    def is_leader(self) -> bool:
        return True

    def leader(self) -> str:
        return self.identity

    def unknown(self) -> str:
        return ""

    def in_touch_since(self) -> float | None:
        return self._since

    async def run(self) -> NoReturn:
        await asyncio.Event().wait()  # nothing to do, ever
        raise AssertionError("unreachable")

    async def resign(self) -> None:
        return None


class LeaseStore(Protocol):
    """What the election needs of a store: etcd's leases and a create-if-absent bound to one
    (agent.master.store.etcd.EtcdStore)."""

    async def lease_grant(self, ttl_s: int) -> tuple[int, int]: ...

    async def lease_keepalive(self, lease: int) -> int: ...

    async def lease_revoke(self, lease: int) -> None: ...

    async def create_with_lease(
        self, key: str, value: bytes, lease: int
    ) -> tuple[bool, KeyValue | None, int]: ...

    async def get(self, key: str) -> KeyValue | None: ...

    def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]: ...


def check_lease_ttl(ttl_s: object, where: str) -> int:
    """The leader lease's TTL: whole seconds in [MIN_LEASE_TTL_S, MAX_LEASE_TTL_S]."""
    if (
        not isinstance(ttl_s, int | float)
        or isinstance(ttl_s, bool)
        or ttl_s != int(ttl_s)
        or not MIN_LEASE_TTL_S <= ttl_s <= MAX_LEASE_TTL_S
    ):
        raise ValueError(
            f"{where}: leader_lease_ttl_s must be whole seconds from {MIN_LEASE_TTL_S} to "
            f"{MAX_LEASE_TTL_S} (etcd leases are granted in seconds)"
        )
    return int(ttl_s)


def holder_of(value: bytes) -> str:
    """The identity in a leader key's value (JSON ``{"identity": ...}``); a value that is not
    one reads as ``?`` (still a holder: the key is taken)."""
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return "?"
    identity = data.get("identity") if isinstance(data, dict) else None
    if not isinstance(identity, str) or not identity:
        return "?"
    return identity[:MAX_HOLDER_CHARS]


class EtcdElection:
    def __init__(
        self,
        store: LeaseStore,
        identity: str,
        ttl_s: int = DEFAULT_LEASE_TTL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._store = store
        self.identity = identity
        self.ttl_s = ttl_s
        self._clock = clock
        self._on_change = on_change or (lambda leading: None)
        # This process's value of the key: the nonce tells its own key from a former
        # incarnation's (same identity) when it resumes after a failed keep-alive.
        self._value = json.dumps(
            {"identity": identity, "nonce": secrets.token_hex(8)}, sort_keys=True
        ).encode()
        self._lease: int | None = None
        self._leading = False
        self._valid_until = 0.0  # monotonic: the lease cannot have expired in etcd before this
        self._holder = ""  # the leader last seen (this master while leading)
        self._confirmed_at: float | None = None  # when the holder was last confirmed
        # In touch with etcd: the last answer, and the start of the run of answers none more
        # than a TTL apart (a vacancy between two leaders does not break it; an outage does).
        self._touched_at: float | None = None
        self._touch_from: float | None = None
        self._ttl_granted = float(ttl_s)
        self.touched = asyncio.Event()  # set once etcd has answered (the master's start waits)
        self._why = "leader election: not started"
        self.terms = 0  # how many times this master became leader (tests, logs)
        self.campaigns = 0  # rounds of _campaign (tests: a follower follows, not loops)
        self.reads = 0  # a follower's reads of the key that found it held

    # -- the questions ------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self._leading and self._clock() < self._valid_until - self._margin()

    def _margin(self) -> float:
        return self._ttl_granted * STEP_DOWN_FRACTION

    def leader(self) -> str:
        if self.is_leader():
            return self.identity
        if self._leading:
            return ""  # a leader whose lease is near its end: nobody is sure now
        fresh = self._confirmed_at is not None and (
            self._clock() - self._confirmed_at < self._ttl_granted
        )
        return self._holder if fresh else ""

    def unknown(self) -> str:
        if self.leader():
            return ""
        if self._leading:
            return "leader election: this master's lease is running out (keep-alives fail)"
        if self._confirmed_at is not None:
            return f"leader election: no word of the leader for over {self._ttl_granted:g} s"
        return self._why

    def in_touch_since(self) -> float | None:
        if self._touched_at is None or self._clock() - self._touched_at > self._ttl_granted:
            return None
        return self._touch_from

    # -- state changes ------------------------------------------------------------------------

    def _touch(self) -> None:
        now = self._clock()
        if self._touched_at is None or now - self._touched_at > self._ttl_granted:
            self._touch_from = now
        self._touched_at = now
        self.touched.set()

    def _confirm(self, holder: str) -> None:
        self._touch()
        if holder not in (self._holder, self.identity):
            log.info("leader: another master leads", extra=kv(leader=holder, me=self.identity))
        self._holder, self._confirmed_at = holder, self._clock()

    def _vacant(self) -> None:
        """The key is vacant (the leader went): no leader until a campaign wins."""
        self._touch()
        self._holder, self._confirmed_at = "", None
        self._why = "leader election: the leader's key is vacant; campaigning"

    def _lose(self, why: str) -> None:
        """Out of touch with etcd: no leader known."""
        self._step_down(why)
        self._holder, self._confirmed_at = "", None
        self._touched_at = self._touch_from = None
        self._why = why

    def _step_down(self, why: str) -> None:
        if self._leading:
            self._leading = False
            log.warning("leader: this master stops leading", extra=kv(reason=why))
            self._on_change(False)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> NoReturn:
        pause_s = RETRY_FIRST_S
        while True:
            try:
                await self._campaign()
                pause_s = RETRY_FIRST_S
            except StoreError as exc:
                self._lose(f"leader election: store: {exc}")
                log.warning(
                    "leader election: the store does not answer; no leader known",
                    extra=kv(error=str(exc), retry_s=pause_s),
                )
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, RETRY_MAX_S)

    async def _campaign(self) -> None:
        """One round: try to take the key; lead until the lease is lost, or follow until the
        key is vacant. Returns to campaign again; raises StoreError when etcd does not answer."""
        self.campaigns += 1
        sent = self._clock()
        lease, ttl = await self._store.lease_grant(self.ttl_s)
        self._lease, self._ttl_granted = lease, float(ttl)
        self._touch()
        try:
            created, holder, revision = await self._store.create_with_lease(
                LEADER_KEY, self._value, lease
            )
        except StoreError:
            await self._revoke_quietly(lease)  # unused (cancelled: it expires by itself)
            raise
        if created:
            await self._lead(lease, sent + ttl)
            return
        await self._revoke_quietly(lease)  # not leading: the key holds another master's lease
        if holder is None:
            return  # vacant again already: campaign at once
        await self._follow(holder, revision)

    async def _lead(self, lease: int, valid_until: float) -> None:
        self._valid_until = valid_until
        self._leading = True
        self.terms += 1
        self._confirm(self.identity)
        log.info(
            "leader: this master leads",
            extra=kv(me=self.identity, lease_ttl_s=self._ttl_granted, term=self.terms),
        )
        self._on_change(True)
        interval = self._ttl_granted * KEEPALIVE_FRACTION
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    self._valid_until = await self._keepalive(lease, self._valid_until)
                except StoreError as exc:
                    self._step_down(f"keep-alive failed: {exc}")
                    if not await self._resume(lease):
                        raise
                    log.info("leader: this master leads again (its lease held)")
                    self._leading = True
                    self._on_change(True)
                self._confirm(self.identity)
        finally:
            self._step_down("the leader's loop ended")

    async def _keepalive(self, lease: int, valid_until: float) -> float:
        """One keep-alive, bounded by the time the lease has left: the new validity."""
        sent = self._clock()
        left_s = valid_until - self._margin() - sent
        if left_s <= 0:
            raise StoreError("the lease ran out before a keep-alive could renew it")
        try:
            async with asyncio.timeout(left_s):
                ttl = await self._store.lease_keepalive(lease)
        except TimeoutError:
            raise StoreError(f"no keep-alive answer within {left_s:.1f} s") from None
        if ttl <= 0:
            raise StoreError("etcd no longer has the lease (expired or revoked)")
        return sent + ttl

    async def _resume(self, lease: int) -> bool:
        """After a failed keep-alive: the same lease renewed before it could expire, with the
        key still this process's, resumes the leadership (True)."""
        while self._clock() < self._valid_until - self._margin():
            await asyncio.sleep(RESUME_RETRY_S)
            try:
                valid_until = await self._keepalive(lease, self._valid_until)
                found = await self._store.get(LEADER_KEY)
            except StoreError:
                continue
            if found is None or found.value != self._value:
                return False
            self._valid_until = valid_until
            return True
        return False

    async def _follow(self, holder: KeyValue, revision: int) -> None:
        """Follow ``holder`` (read at ``revision``) until the key is vacant (return) or etcd
        does not answer (StoreError): a watch for the deletion from ``revision`` (the key's
        own revision may be compacted long since: a leader's key lives as long as it leads),
        and a read every third of the TTL."""
        self._confirm(holder_of(holder.value))
        vacant = asyncio.Event()

        async def watch() -> None:
            async for event in self._store.watch(LEADER_KEY, revision):
                if event.key != LEADER_KEY:
                    continue
                if event.type is EventType.DELETE:
                    vacant.set()
                    return
                self._confirm(holder_of(event.value))
            raise StoreError("the watch of the leader key ended")

        watcher = asyncio.create_task(watch(), name="leader-watch")
        try:
            while True:
                done, _ = await asyncio.wait(
                    {watcher}, timeout=self._ttl_granted * KEEPALIVE_FRACTION
                )
                if done:
                    watcher.result()  # vacant, or the watch's StoreError
                    self._vacant()
                    return
                found = await self._store.get(LEADER_KEY)
                if found is None:
                    self._vacant()
                    return
                self.reads += 1
                self._confirm(holder_of(found.value))
        finally:
            watcher.cancel()
            await asyncio.wait({watcher})
            if not watcher.cancelled():
                watcher.exception()  # retrieved: raised above already, or moot now

    async def _revoke_quietly(self, lease: int) -> None:
        with contextlib.suppress(StoreError):
            await self._store.lease_revoke(lease)
        if self._lease == lease:
            self._lease = None

    async def resign(self) -> None:
        lease = self._lease
        self._step_down("resigned (the master stops)")
        self._lose("leader election: resigned")
        if lease is not None:
            await self._revoke_quietly(lease)
