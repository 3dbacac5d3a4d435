"""Renewals a master could not report during a long store outage are not passed on as fresh
once the store is back (helper R's review of 6e1d619): every master takes a reported name as
renewed when the report reaches it, so a node that renewed at master a just before a's reports
began failing, and died meanwhile, would be judged Ready again at master b (the leader) for a
whole grace after a's outage, its lease having run out there long before."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agent.master import renewals
from agent.master.pki_files import ClusterPki
from tests.unit.master.rig import LEASE_GRACE_S, NodeKey, make_rig
from tests.unit.master.test_leadership import FlakyStore

pytestmark = pytest.mark.usefixtures("blockbuster")


async def test_names_kept_through_a_long_outage_are_dropped_not_reported_late(
    cluster_pki: ClusterPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(renewals, "REPORT_EVERY_S", 0.01)
    store = FlakyStore()
    a, b = make_rig(cluster_pki, store=store), make_rig(cluster_pki, store=store)
    await a.register(NodeKey("n1"))
    await a.register(NodeKey("n2"))
    await b.registry.load()
    at_a = renewals.RenewalExchange(store, a.registry, "a:1", clock=a.clock.monotonic)
    at_b = renewals.RenewalExchange(store, b.registry, "b:1")
    taken, n2_reported = b.registry.renewed_elsewhere, asyncio.Event()

    def take(names: Sequence[str]) -> bool:
        if "n2" in names:
            n2_reported.set()
        return taken(names)

    monkeypatch.setattr(b.registry, "renewed_elsewhere", take)
    tasks = [asyncio.create_task(t) for t in (at_a.report(), at_b.follow())]
    try:
        async with asyncio.timeout(30):
            await at_b.following.wait()
            b.clock.advance(LEASE_GRACE_S + 1)
            assert b.registry.readiness("n1") == ("False", "NodeLeaseExpired")
            store.failing = True
            a.registry.renew_lease("n1")  # n1's last renewal: then it dies
            store.refused.clear()
            await store.refused.wait()  # a's report with n1 failed: a keeps n1
            a.clock.advance(a.registry.config.lease_renew_s + 1)  # the outage lasts
            store.refused.clear()
            await store.refused.wait()
            store.failing = False
            store.accepted.clear()
            await store.accepted.wait()  # a reports again
            a.registry.renew_lease("n2")  # a fresh renewal, reported after the above
            await n2_reported.wait()
            assert b.registry.readiness("n2") == ("True", "NodeLeaseCurrent")
            # Reports reach b in order: the one after the outage was taken before n2's.
            assert b.registry.readiness("n1") == ("False", "NodeLeaseExpired")
            assert at_a.failing == ""
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await store.close()
