"""A node's capacity is never exceeded by bindings racing on one store (issue 19 item 2): two
masters' pod stores sharing one memory store, and two applies on one master, each seeing the
last free slots of a node at once. The allocation record ``/alloc/<node>`` (agent.master.pods)
makes the second binder onto a node look again; these tests fail without it (every racer saw
the node free and bound there)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from agent.master.pki_files import ClusterPki
from agent.master.pods import ALLOC_PREFIX, PODS_PREFIX, RESERVATION_TTL_S, alloc_key
from agent.master.store.memory import MemoryStore
from tests.unit.master.rig import MasterRig, make_rig
from tests.unit.master.test_pods import condition, manifest

SLOTS = 3
RACERS = 8
FULL = "0/1 nodes are available: 1 too many pods"


async def two_masters(cluster_pki: ClusterPki, slots: int) -> tuple[MasterRig, MasterRig]:
    """Two masters on one memory store, both knowing node n1 Ready with ``slots`` pod slots."""
    store = MemoryStore()
    a, b = make_rig(cluster_pki, store=store), make_rig(cluster_pki, store=store)
    await a.ready_node("n1", pods=str(slots))
    await b.registry.load()
    b.registry.renew_lease("n1")
    await b.registry.note_ready("n1")
    return a, b


async def placement(rig: MasterRig) -> Counter[str]:
    items, _ = await rig.store.list_prefix(PODS_PREFIX)
    return Counter(json.loads(item.value)["nodeName"] for item in items)


async def test_two_masters_applying_at_once_fill_a_node_exactly(cluster_pki: ClusterPki) -> None:
    a, b = await two_masters(cluster_pki, SLOTS)
    applied = await asyncio.gather(
        *(
            (a if i % 2 else b).pods.apply(manifest(f"p{i}", cpu="10m", memory="1Mi"))
            for i in range(RACERS)
        )
    )
    assert await placement(a) == Counter({"n1": SLOTS, "": RACERS - SLOTS})
    pending = [obj for obj, _ in applied if not obj["nodeName"]]
    assert len(pending) == RACERS - SLOTS
    assert all(condition(obj)["message"] == FULL for obj in pending)
    # The reservations left on the record (dropped at the next write of it) are of pods
    # bound since: none counts twice, none of a pod that lost its place.
    assert await a.pods.schedule_pending() == 0
    [record], _ = await a.store.list_prefix(ALLOC_PREFIX)
    bound = {obj["manifest"]["metadata"]["uid"] for obj, _ in applied if obj["nodeName"]}
    assert record.key == alloc_key("n1")
    assert len(json.loads(record.value)["reserved"].keys() & bound) > 0
    assert json.loads(record.value)["reserved"].keys() <= bound


async def test_applies_at_once_on_one_master_fill_a_node_exactly(cluster_pki: ClusterPki) -> None:
    a, _ = await two_masters(cluster_pki, SLOTS)
    applied = await asyncio.gather(*(a.pods.apply(manifest(f"p{i}")) for i in range(RACERS)))
    assert await placement(a) == Counter({"n1": SLOTS, "": RACERS - SLOTS})
    pending = [obj for obj, _ in applied if not obj["nodeName"]]
    assert all(condition(obj)["message"] == FULL for obj in pending)


async def test_a_reservation_its_binder_never_completed_holds_the_slot_until_it_expires(
    cluster_pki: ClusterPki,
) -> None:
    """A master that died between reserving and binding: its reservation holds the place for
    RESERVATION_TTL_S (it might still bind), then is forgotten."""
    a, _ = await two_masters(cluster_pki, 1)
    dead = {"pod": "default/ghost", "cpu": 0, "memory": 0, "at": a.clock.time()}
    await a.store.put(alloc_key("n1"), json.dumps({"reserved": {"ghost-uid": dead}}).encode())
    blocked, _ = await a.pods.apply(manifest("web"))
    assert condition(blocked)["message"] == FULL
    a.clock.advance(RESERVATION_TTL_S + 1)
    a.registry.renew_lease("n1")
    assert await a.pods.schedule_pending() == 1
    assert await placement(a) == Counter({"n1": 1})
