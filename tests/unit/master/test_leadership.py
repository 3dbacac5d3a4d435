"""What the leader election changes in one master (agent.master.leader, agent.master.renewals),
without etcd: the registry judges a node NotReady only while it sees every renewal (a master out
of touch says Unknown, ``MasterOutOfTouch``, and counts NotReady time from when its view came
back), renewals reported by other masters count as renewals (names of unknown nodes skipped;
two masters' registries on one memory store: a renewal at one reaches the other, a report that
cannot be written makes the master refuse renewals until one is written again),
/readyz and /metrics say who leads, a master that cannot pass renewals on refuses them with
503, and the leader-only loops (eviction, registration expiry) do nothing on a follower.

The election itself runs against the real etcd: tests/etcd/test_leader_election.py."""

from __future__ import annotations

import asyncio
from typing import NoReturn

import pytest

from agent.aio.tasks import Supervisor
from agent.errors import StoreError
from agent.master import renewals
from agent.master.api import MasterApi
from agent.master.app import Eviction, RegistrationExpiry
from agent.master.pki_files import ClusterPki
from agent.master.store.memory import MemoryStore
from tests.unit.master.rig import LEASE_GRACE_S, MasterRig, NodeKey, make_rig
from tests.unit.master.test_api import NOBODY, call, fails, node_caller

pytestmark = pytest.mark.usefixtures("blockbuster")


class Follower:
    """A Leadership that is not the leader; in touch since ``since`` (None: out of touch)."""

    def __init__(self, since: float | None, leader: str = "m1:6443") -> None:
        self.since = since
        self._leader = leader

    def is_leader(self) -> bool:
        return False

    def leader(self) -> str:
        return self._leader if self.since is not None else ""

    def unknown(self) -> str:
        return "" if self.since is not None else "leader election: store: connection refused"

    def in_touch_since(self) -> float | None:
        return self.since

    async def run(self) -> NoReturn:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def resign(self) -> None:
        return None


async def test_out_of_touch_a_node_without_renewals_is_unknown_never_not_ready(
    rig: MasterRig,
) -> None:
    await rig.register(NodeKey("n1"))
    registry, clock = rig.registry, rig.clock
    view: list[float | None] = [clock.monotonic()]
    registry.view_since = lambda: view[0]
    clock.advance(LEASE_GRACE_S + 5)
    assert registry.readiness("n1") == ("False", "NodeLeaseExpired")
    view[0] = None  # the store went away
    assert registry.readiness("n1") == ("Unknown", "MasterOutOfTouch")
    assert registry.not_ready_for_s("n1") is None
    clock.advance(600)
    assert registry.readiness("n1") == ("Unknown", "MasterOutOfTouch")
    view[0] = clock.monotonic()  # back in touch: a grace before any judgement
    assert registry.readiness("n1") == ("Unknown", "MasterStarting")
    clock.advance(LEASE_GRACE_S + 3)
    assert registry.readiness("n1") == ("False", "NodeLeaseExpired")
    assert registry.not_ready_for_s("n1") == pytest.approx(3)  # from the view's return


async def test_renewals_reported_by_other_masters_count(rig: MasterRig) -> None:
    await rig.register(NodeKey("n1"))
    registry, clock = rig.registry, rig.clock
    clock.advance(LEASE_GRACE_S + 1)
    assert registry.readiness("n1")[0] == "False"
    assert registry.renewed_elsewhere(["n1", "stranger"]) is True  # n1's first lease here
    assert registry.readiness("n1") == ("True", "NodeLeaseCurrent")
    assert "stranger" not in registry.leases  # no record, not remembered
    assert registry.renewed_elsewhere(["n1"]) is False


async def test_renewals_here_are_kept_for_the_report_only_when_shared(rig: MasterRig) -> None:
    registry = rig.registry
    registry.renew_lease("a")
    assert registry.take_renewed() == []  # alone: nothing to report
    registry.sharing = True
    registry.renew_lease("b")
    registry.renew_lease("a")
    assert registry.take_renewed() == ["a", "b"]
    assert registry.take_renewed() == []
    registry.give_back(["a"])  # a report that failed goes with the next
    assert registry.take_renewed() == ["a"]


async def test_readyz_and_metrics_say_who_leads(rig: MasterRig) -> None:
    api = MasterApi(rig.registry, rig.pods, ())
    assert (await call(api, "GET", "/readyz", caller=NOBODY)).status == 200
    metrics = (await call(api, "GET", "/metrics", caller=NOBODY)).body.decode()
    assert "\nnode_master_leader 1.0\n" in metrics  # alone: its own leader
    api.leadership = Follower(rig.clock.monotonic())
    metrics = (await call(api, "GET", "/metrics", caller=NOBODY)).body.decode()
    assert "\nnode_master_leader 0.0\n" in metrics
    assert (await call(api, "GET", "/readyz", caller=NOBODY)).status == 200  # a leader known
    api.leadership = Follower(None)
    answer = await call(api, "GET", "/readyz", caller=NOBODY)
    assert (answer.status, answer.body) == (
        503,
        b"not ready: leader election: store: connection refused\n",
    )


async def test_a_master_that_cannot_pass_renewals_on_refuses_them(rig: MasterRig) -> None:
    node = await rig.ready_node("n1")
    api = MasterApi(rig.registry, rig.pods, ())
    path = "/v1/nodes/n1/lease"
    assert (await call(api, "PUT", path, {}, caller=node_caller(node))).status == 200
    api.renewals_refused = lambda: "renewals cannot be reported to the other masters (refused)"
    error, body = await fails(api, "PUT", path, {}, caller=node_caller(node))
    assert error.http_status == 503
    assert body["message"].startswith("lease not renewed here: renewals cannot be reported")


class Counted(Follower):
    """A Leadership counting how often the loops asked; the leader when ``leads``."""

    def __init__(self, leads: bool) -> None:
        super().__init__(0.0)
        self.leads = leads
        self.asked = 0
        self.enough = asyncio.Event()

    def is_leader(self) -> bool:
        self.asked += 1
        if self.asked >= 10:
            self.enough.set()
        return self.leads


async def run_loops(rig: MasterRig, leadership: Counted, done: asyncio.Event) -> None:
    """The eviction and registration-expiry loops, until ``done`` (or 30 s: a failure)."""

    async def pause(_seconds: float) -> None:
        await asyncio.sleep(0.001)

    supervisor = Supervisor()
    async with supervisor:
        managers = [
            Eviction(rig.pods, 0.001, supervisor.scope("eviction"), leadership),
            RegistrationExpiry(
                rig.registry, supervisor.scope("expiry"), pause=pause, leadership=leadership
            ),
        ]
        for manager in managers:
            await manager.start()
        async with asyncio.timeout(30):
            await done.wait()
        for manager in managers:
            await manager.stop()


async def test_a_follower_neither_evicts_nor_expires_registrations(rig: MasterRig) -> None:
    calls: list[str] = []
    both = asyncio.Event()

    async def counted_evict() -> int:
        calls.append("evict")
        if "expire" in calls:
            both.set()
        return 0

    async def counted_expire() -> int:
        calls.append("expire")
        if "evict" in calls:
            both.set()
        return 0

    rig.pods.evict_from_unready_nodes = counted_evict  # type: ignore[method-assign]
    rig.registry.expire_pending = counted_expire  # type: ignore[method-assign]
    follower = Counted(leads=False)
    await run_loops(rig, follower, follower.enough)
    assert calls == []  # asked ten times, did nothing
    leader = Counted(leads=True)
    await run_loops(rig, leader, both)


class FlakyStore(MemoryStore):
    """A memory store whose puts fail while ``failing`` (etcd away for the reports); the
    events say a put failed, and one went through again."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.refused = asyncio.Event()
        self.accepted = asyncio.Event()

    async def put(self, key: str, value: bytes) -> int:
        if self.failing:
            self.refused.set()
            raise StoreError("etcd: no endpoint answers (connection refused)")
        revision = await super().put(key, value)
        self.accepted.set()
        return revision


async def test_renewals_reach_the_other_master_through_the_store(
    cluster_pki: ClusterPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(renewals, "REPORT_EVERY_S", 0.01)
    store = FlakyStore()
    a, b = make_rig(cluster_pki, store=store), make_rig(cluster_pki, store=store)
    await a.register(NodeKey("n1"))
    await b.registry.load()  # b knows the record, not the lease
    became_ready = asyncio.Event()
    at_a = renewals.RenewalExchange(store, a.registry, "a:1")
    at_b = renewals.RenewalExchange(store, b.registry, "b:1", on_ready=became_ready.set)
    tasks = [asyncio.create_task(t) for t in (at_a.report(), at_a.follow(), at_b.follow())]
    try:
        async with asyncio.timeout(30):
            await at_a.following.wait()
            await at_b.following.wait()
            assert at_b.since() is not None and at_b.refused() == ""
            b.clock.advance(LEASE_GRACE_S + 1)
            assert b.registry.readiness("n1") == ("False", "NodeLeaseExpired")
            a.registry.renew_lease("n1")  # at master a only
            await became_ready.wait()
            assert b.registry.readiness("n1") == ("True", "NodeLeaseCurrent")
            store.failing = True  # a's reports fail: a refuses renewals, keeps the names
            a.registry.renew_lease("n1")
            store.refused.clear()
            await store.refused.wait()  # the report after it failed
            assert at_a.refused().startswith("renewals cannot be reported to the other masters")
            store.failing = False
            store.accepted.clear()
            await store.accepted.wait()  # the next one went through
            assert at_a.refused() == "" and a.registry.take_renewed() == []  # n1 went with it
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await store.close()
