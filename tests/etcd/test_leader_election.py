"""The leader election (agent.master.leader) on the real test etcd, in one process: two
candidates under one prefix (each with its own store, as two masters have), short leases.

One leads and the other knows who; a resignation hands over at once; a leader cut off from etcd
(a proxy on its road cut, the other's road intact) stops leading before its lease could expire,
and only then does the other take over; the key another master wrote badly still counts as
taken."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable

import pytest

from agent.master.leader import LEADER_KEY, EtcdElection, holder_of
from agent.master.store.etcd import EtcdStore
from tests.etcd.proxy import TcpProxy
from tests.etcd.server import EtcdServer

pytestmark = pytest.mark.usefixtures("blockbuster")

TTL_S = 2  # etcd's minimum with its default heartbeat: the tests' figures are in TTLs


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> float:
    """Wait for ``condition`` (polled every 20 ms); the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)
    return loop.time() - start


@contextlib.asynccontextmanager
async def candidate(
    endpoint: str, prefix: str, tls: ssl.SSLContext | None, name: str
) -> AsyncIterator[tuple[EtcdElection, EtcdStore]]:
    store = await EtcdStore.open([endpoint], prefix=prefix, tls=tls)
    election = EtcdElection(store, name, TTL_S)
    task = asyncio.create_task(election.run())
    try:
        yield election, store
    finally:
        task.cancel()
        await asyncio.wait({task})
        await election.resign()
        await store.close()


async def test_one_leads_the_other_knows_and_a_resignation_hands_over(
    etcd: EtcdServer, etcd_prefix: str
) -> None:
    tls = etcd.ssl_context()
    async with candidate(etcd.endpoint, etcd_prefix, tls, "a") as (a, store):
        await until(a.is_leader, "a leading")
        async with candidate(etcd.endpoint, etcd_prefix, tls, "b") as (b, _):
            await until(lambda: b.leader() == "a", "b knowing a leads")
            assert not b.is_leader() and b.unknown() == ""
            assert b.in_touch_since() is not None
            found = await store.get(LEADER_KEY)
            assert found is not None and holder_of(found.value) == "a"
            await a.resign()
            took = await until(b.is_leader, "b leading after a resigned")
            assert took < TTL_S  # a revoked lease: no waiting for it to expire
            assert not a.is_leader()
            print(f"handover after a resignation: {took * 1000:.0f} ms")


async def test_a_leader_cut_off_from_etcd_steps_down_before_the_other_takes_over(
    etcd: EtcdServer, etcd_prefix: str
) -> None:
    tls = etcd.ssl_context()
    proxy = TcpProxy(etcd.client_port)
    await proxy.start()
    road = f"https://127.0.0.1:{proxy.port}"
    try:
        async with candidate(road, etcd_prefix, tls, "cut") as (cut, _):
            await until(cut.is_leader, "the candidate behind the proxy leading")
            async with candidate(etcd.endpoint, etcd_prefix, tls, "other") as (other, _):
                await until(lambda: other.leader() == "cut", "the other knowing who leads")
                loop = asyncio.get_running_loop()
                await proxy.cut()
                cut_at = loop.time()
                stepped_down_at: list[float] = []

                def stepped_down() -> bool:
                    if not cut.is_leader() and not stepped_down_at:
                        stepped_down_at.append(loop.time())
                    return bool(stepped_down_at)

                def taken_over() -> bool:
                    stepped_down()
                    return other.is_leader()

                await until(taken_over, "the other leading")
                took_over_at = loop.time()
                assert stepped_down_at, "the cut leader still leads"
                # The order that matters: never two leaders at once.
                assert stepped_down_at[0] < took_over_at
                assert cut.in_touch_since() is None and cut.leader() == ""
                print(
                    f"cut leader stepped down {stepped_down_at[0] - cut_at:.2f} s after the cut, "
                    f"the other led {took_over_at - cut_at:.2f} s after it (TTL {TTL_S} s)"
                )
                await proxy.mend()
                await until(lambda: cut.leader() == "other", "the mended one following")
                assert not cut.is_leader()
    finally:
        await proxy.cut()


async def test_a_key_of_garbage_is_still_a_holder(etcd: EtcdServer, etcd_prefix: str) -> None:
    tls = etcd.ssl_context()
    store = await EtcdStore.open([etcd.endpoint], prefix=etcd_prefix, tls=tls)
    try:
        lease, _ = await store.lease_grant(TTL_S)
        created, _, _ = await store.create_with_lease(LEADER_KEY, b"\xff not json", lease)
        assert created
        async with candidate(etcd.endpoint, etcd_prefix, tls, "late") as (late, _):
            await until(lambda: late.leader() == "?", "the holder read as '?'")
            assert not late.is_leader()
            await store.lease_revoke(lease)
            await until(late.is_leader, "the late one leading once the key went")
    finally:
        await store.close()


async def test_a_follower_follows_a_leader_whose_key_is_older_than_the_history(
    etcd: EtcdServer, etcd_prefix: str
) -> None:
    """A leader's key keeps the revision it was created at for as long as it leads; once etcd
    is compacted past it, a master starting then must still follow (its watch starts at the
    revision it read the key at), not lose touch and campaign again and again."""
    tls = etcd.ssl_context()
    async with candidate(etcd.endpoint, etcd_prefix, tls, "old") as (old, _):
        await until(old.is_leader, "the first leading")
        writer = await EtcdStore.open([etcd.endpoint], prefix=etcd_prefix, tls=tls, history=1)
        try:
            for i in range(3):
                await writer.put(f"/other/{i}", b"x")
            await writer.compact_if_due()  # history of 1: compacted to the last put
        finally:
            await writer.close()
        async with candidate(etcd.endpoint, etcd_prefix, tls, "new") as (new, _):
            await until(lambda: new.reads >= 2, "the new one reading the held key twice")
            assert new.leader() == "old" and new.campaigns == 1
            assert new.in_touch_since() is not None
