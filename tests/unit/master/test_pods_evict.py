"""``nodectl drain``'s eviction on the master (``PodStore.evict``, issue 17 item 5): a pod the
scheduler placed is Terminating on its node, then, once the node reports it stopped (or its
grace period passed), created again as a new pending pod for the scheduler, which places it on
another node (the drained one is cordoned); a pinned pod is refused unless forced (then
deleted), a finished one deleted, a mirror pod never touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.errors import ConflictError, MirrorConflictError, NotFoundError
from agent.master.pods import DELETION_MARGIN_S
from tests.unit.master.rig import MasterRig

pytestmark = pytest.mark.usefixtures("blockbuster")

RUNNING = {
    "phase": "Running",
    "containerStatuses": [{"name": "main", "state": {"running": {"startedAt": "x"}}}],
}
STOPPED = {
    "phase": "Running",
    "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 0}}}],
}


def manifest(name: str, node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 10,
        "containers": [{"name": "main", "image": "busybox:1"}],
    }
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


async def next_event(events: AsyncIterator[dict[str, Any]]) -> tuple[str, str]:
    event = await asyncio.wait_for(anext(events), 10.0)
    return event["type"], event["object"]["metadata"]["name"]


async def drained_rig(rig: MasterRig) -> MasterRig:
    """n1 and n2 Ready; ``placed`` (by the scheduler) and ``pinned`` running on n1; n1
    cordoned, as drain does first."""
    await rig.ready_node("n1")
    await rig.pods.apply(manifest("placed"))  # the only node: n1
    await rig.ready_node("n2")
    await rig.pods.apply(manifest("pinned", node="n1"))
    assert (await rig.pods.get("default", "placed"))["nodeName"] == "n1"
    for name in ("placed", "pinned"):
        await rig.pods.set_status("default", name, RUNNING, "n1")
    await rig.registry.set_unschedulable("n1", True)
    return rig


async def test_a_scheduled_pod_moves_once_its_node_reports_it_stopped(rig: MasterRig) -> None:
    await drained_rig(rig)
    old_uid = (await rig.pods.get("default", "placed"))["manifest"]["metadata"]["uid"]
    _, revision = await rig.pods.list()
    events = rig.pods.watch_node("n1", revision)
    assert await rig.pods.evict("default", "placed", dry_run=True) == "moved"
    assert not (await rig.pods.get("default", "placed")).get("deletionTimestamp")
    assert await rig.pods.evict("default", "placed") == "moved"
    terminating = await rig.pods.get("default", "placed")
    assert terminating["deletionTimestamp"] and terminating["nodeName"] == "n1"
    assert await next_event(events) == ("DELETED", "placed")  # the node stops it now
    assert await rig.pods.evict("default", "placed") == "terminating"  # again: no change
    await rig.pods.set_status("default", "placed", STOPPED, "n1")
    again = await rig.pods.get("default", "placed")
    assert (again["nodeName"], again["evictedFrom"], again["status"]) == (
        "",
        "n1",
        {"phase": "Pending"},
    )
    assert again["manifest"]["metadata"]["uid"] != old_uid  # a new pod, as a ReplicaSet's
    assert "nodeName" not in again["manifest"]["spec"] and "deletionTimestamp" not in again
    assert rig.pods.kick.is_set()
    assert await rig.pods.schedule_pending() == 1
    assert (await rig.pods.get("default", "placed"))["nodeName"] == "n2"
    assert ("Evicted", "evicted from node n1 (drain); placed again as a new pod") in rig.events(
        "Pod", "placed"
    )
    with pytest.raises(NotFoundError):  # the old node's late reports land nowhere
        await rig.pods.set_status("default", "placed", RUNNING, "n1")


async def test_a_moving_pod_whose_node_never_answers_moves_at_its_deadline(
    rig: MasterRig,
) -> None:
    await drained_rig(rig)
    await rig.pods.evict("default", "placed")
    rig.clock.advance(10 + DELETION_MARGIN_S + 1)
    assert await rig.pods.finalize_deletions() == 1
    assert (await rig.pods.get("default", "placed"))["nodeName"] == ""


async def test_a_pod_with_nothing_running_moves_at_once(rig: MasterRig) -> None:
    await drained_rig(rig)
    await rig.pods.set_status("default", "placed", STOPPED, "n1")
    assert await rig.pods.evict("default", "placed") == "moved"
    assert (await rig.pods.get("default", "placed"))["evictedFrom"] == "n1"


async def test_deleting_a_moving_pod_wins(rig: MasterRig) -> None:
    await drained_rig(rig)
    await rig.pods.evict("default", "placed")
    await rig.pods.delete("default", "placed")
    await rig.pods.set_status("default", "placed", STOPPED, "n1")
    with pytest.raises(NotFoundError):
        await rig.pods.get("default", "placed")


async def test_a_pinned_pod_is_refused_unless_forced_then_deleted(rig: MasterRig) -> None:
    await drained_rig(rig)
    for dry_run in (True, False):
        with pytest.raises(ConflictError, match=r"pinned to node n1 by its spec\.nodeName"):
            await rig.pods.evict("default", "pinned", dry_run=dry_run)
    assert await rig.pods.evict("default", "pinned", force=True, dry_run=True) == "deleted"
    assert not (await rig.pods.get("default", "pinned")).get("deletionTimestamp")
    assert await rig.pods.evict("default", "pinned", force=True) == "deleted"
    await rig.pods.set_status("default", "pinned", STOPPED, "n1")
    with pytest.raises(NotFoundError):  # gone for good: a pinned pod cannot move
        await rig.pods.get("default", "pinned")


async def test_a_finished_pod_is_deleted_never_run_again(rig: MasterRig) -> None:
    await drained_rig(rig)
    await rig.pods.set_status("default", "placed", {"phase": "Succeeded"}, "n1")
    assert await rig.pods.evict("default", "placed") == "deleted"
    with pytest.raises(NotFoundError):
        await rig.pods.get("default", "placed")


async def test_mirror_and_unbound_pods_are_refused(rig: MasterRig) -> None:
    await drained_rig(rig)
    await rig.pods.put_mirror("n1", manifest("static-n1"))
    with pytest.raises(MirrorConflictError, match="comes back from its manifest file"):
        await rig.pods.evict("default", "static-n1", force=True)
    await rig.registry.set_unschedulable("n2", True)
    await rig.pods.apply(manifest("waiting"))  # nowhere to go: unbound
    with pytest.raises(ConflictError, match="bound to no node"):
        await rig.pods.evict("default", "waiting")
    with pytest.raises(NotFoundError):
        await rig.pods.evict("default", "ghost")


async def test_a_grace_period_given_replaces_the_pods_own(rig: MasterRig) -> None:
    await drained_rig(rig)
    assert await rig.pods.evict("default", "placed", grace_s=2) == "moved"
    assert await rig.pods.evict("default", "pinned", force=True, grace_s=3) == "deleted"
    assert (await rig.pods.get("default", "placed"))["deletionGracePeriodSeconds"] == 2
    assert (await rig.pods.get("default", "pinned"))["deletionGracePeriodSeconds"] == 3
    rig.clock.advance(2 + DELETION_MARGIN_S + 0.5)  # the pods' own 10 s have not passed
    assert await rig.pods.finalize_deletions() == 1  # the moved pod placed again, the other
    assert (await rig.pods.get("default", "placed"))["nodeName"] == ""  # waits its 3 s
    rig.clock.advance(1)
    assert await rig.pods.finalize_deletions() == 1
