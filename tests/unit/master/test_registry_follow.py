"""The registry's record cache follows the store's watch (issue 19 item 2, audit items 1 and 4):
two registries on one memory store stand for two masters on one etcd. What one does to a node
(delete, deny, a new key, cordon, approval) reaches the other's authorization answer
(``is_current_node``), its listings and its waiting pollers once the watch delivers it; a
compacted history relists; a broken watch resumes; this master's own delete is never undone by
an older change the watch delivers late."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from agent.errors import NameConflictError, StoreError
from agent.master import registry as registry_module
from agent.master.pki_files import ClusterPki
from agent.master.registry import NodeRegistry
from agent.master.store.base import WatchEvent
from agent.master.store.memory import MemoryStore
from tests.unit.master.rig import MasterRig, NodeKey, make_rig
from tests.unit.node.asyncwait import until

pytestmark = pytest.mark.usefixtures("blockbuster")


@contextlib.asynccontextmanager
async def following(*registries: NodeRegistry) -> AsyncIterator[None]:
    """Each registry loaded and following the store, as the master runs it; stopped after."""
    tasks = []
    for registry in registries:
        await registry.load()
        tasks.append(asyncio.create_task(registry.follow()))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert task.cancelled()  # still running until cancelled: it never returned


def two_masters(cluster_pki: ClusterPki, store: MemoryStore | None = None) -> tuple[MasterRig, ...]:
    shared = store or MemoryStore()
    return make_rig(cluster_pki, store=shared), make_rig(cluster_pki, store=shared)


def caught_up(rig: MasterRig) -> bool:
    return rig.registry._revision == rig.store.revision


async def test_a_node_deleted_on_one_master_is_refused_by_the_other(
    cluster_pki: ClusterPki,
) -> None:
    a, b = two_masters(cluster_pki)
    async with following(a.registry, b.registry):
        node = await a.ready_node("n1")
        await until(lambda: b.registry.is_current_node("n1", node.key_id), "b sees n1")
        await b.registry.delete("n1")
        await until(lambda: not a.registry.is_current_node("n1", node.key_id), "a drops n1")
        assert "n1" not in {r["name"] for r in await a.registry.records()}
        assert "n1" not in a.registry.leases  # its lease on a goes with it
        assert a.registry.api_endpoint("n1") is None


async def test_deny_a_new_key_and_cordon_on_one_master_reach_the_other(
    cluster_pki: ClusterPki,
) -> None:
    a, b = two_masters(cluster_pki)
    async with following(a.registry, b.registry):
        first = await a.ready_node("n1")
        await a.ready_node("n2")
        await until(lambda: b.registry.is_current_node("n1", first.key_id), "b sees n1")

        # A new key accepted on b: a refuses the old one and admits the new one.
        new = NodeKey("n1")
        with pytest.raises(NameConflictError):
            await b.register(new)
        await b.registry.approve("n1", force_replace=True, fingerprint=f"sha256:{new.key_id}")
        await until(lambda: a.registry.is_current_node("n1", new.key_id), "a takes the new key")
        assert not a.registry.is_current_node("n1", first.key_id)
        assert "n1" not in a.registry.leases  # the old key's lease is not the new one's

        # Cordoned on a: b's listing (what its scheduler reads) has it.
        await a.registry.set_unschedulable("n2", True)
        await until(lambda: caught_up(b), "b catches up")
        found = await b.registry.get_record("n2")
        assert found is not None and found[0]["unschedulable"] is True

        # Denied on b: a refuses it.
        await b.registry.deny("n1", "stolen")
        await until(lambda: not a.registry.is_current_node("n1", new.key_id), "a refuses n1")
        found = await a.registry.get_record("n1")
        assert found is not None and found[0]["registration"] == "Denied"


async def test_a_poller_on_one_master_is_answered_by_an_approval_on_the_other(
    cluster_pki: ClusterPki,
) -> None:
    a, b = two_masters(cluster_pki)
    a.policy("approval")
    async with following(a.registry, b.registry):
        node = NodeKey("n1")
        queued = await a.register(node)
        assert queued.status == 202
        rid = queued.body["requestId"]
        await until(lambda: b.registry._cache.get("n1") is not None, "b sees the request")
        poll = asyncio.create_task(a.registry.poll(rid, 30.0))
        await until(lambda: "n1" in a.registry._changed, "a's poller waits")
        await b.registry.approve("n1")
        answer = await asyncio.wait_for(poll, 10.0)  # a bound for a failing test, not a timing
        assert answer.status == 200 and answer.body["certificate"]


async def test_a_compacted_history_relists(cluster_pki: ClusterPki) -> None:
    a, b = two_masters(cluster_pki, MemoryStore(history=4))
    await b.registry.load()  # b loaded, then away while a changes more than the history holds
    async with following(a.registry):
        node = await a.ready_node("n1")
        for flag in (True, False, True, False, True):
            await a.registry.set_unschedulable("n1", flag)
        gone = await a.ready_node("n2")
        await a.registry.delete("n2")
    assert b.registry._revision < b.store.revision - 4
    async with following(b.registry):
        await until(lambda: b.registry.is_current_node("n1", node.key_id), "b relisted n1")
        await until(lambda: caught_up(b), "b catches up")
        assert not b.registry.is_current_node("n2", gone.key_id)
        found = await b.registry.get_record("n1")
        assert found is not None and found[0]["unschedulable"] is True
        await a.registry.set_unschedulable("n1", False)  # and follows again after the relist
        await until(lambda: caught_up(b), "b catches up again")
        found = await b.registry.get_record("n1")
        assert found is not None and found[0]["unschedulable"] is False


class BreakingStore(MemoryStore):
    """A memory store whose first ``breaks`` watches fail (the store away) before any event."""

    def __init__(self, breaks: int) -> None:
        super().__init__()
        self.breaks = breaks

    def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        if self.breaks > 0:
            self.breaks -= 1
            return self._broken()
        return super().watch(prefix, after_revision)

    async def _broken(self) -> AsyncIterator[WatchEvent]:
        await asyncio.sleep(0)
        raise StoreError("etcd: the watch stream broke")
        yield  # pragma: no cover  (an async generator)


async def test_a_broken_watch_resumes_from_the_revision_reached(
    cluster_pki: ClusterPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "FOLLOW_RETRY_FIRST_S", 0.01)
    store = BreakingStore(breaks=2)
    a, b = two_masters(cluster_pki, store)
    async with following(b.registry):
        node = await a.ready_node("n1")
        await until(lambda: b.registry.is_current_node("n1", node.key_id), "b resumes")
        assert store.breaks == 0


async def test_an_own_delete_is_not_undone_by_older_changes_delivered_late(
    cluster_pki: ClusterPki,
) -> None:
    a, b = two_masters(cluster_pki)
    await a.registry.load()
    node = await b.ready_node("n1")  # a has not followed these yet
    await b.registry.set_unschedulable("n1", True)
    await a.registry.delete("n1")
    seen: list[bool] = []
    apply = a.registry._apply

    def spy(event: WatchEvent) -> None:
        apply(event)
        seen.append(a.registry.is_current_node("n1", node.key_id))

    a.registry._apply = spy  # type: ignore[method-assign]
    async with following_loaded(a.registry):
        await until(lambda: caught_up(a), "a catches up")
    assert seen and not any(seen)  # the late PUTs never brought n1 back, even for a moment
    assert a.registry._gone == {}  # forgotten once the watch passed the deletion
    assert await a.registry.get_record("n1") is None


@contextlib.asynccontextmanager
async def following_loaded(registry: NodeRegistry) -> AsyncIterator[None]:
    """``registry`` following from the revision it has (no load first)."""
    task = asyncio.create_task(registry.follow())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
