"""Graceful deletion on the master (issue 17 item 1, kubectl's ``Terminating``): a deleted pod
whose containers its node reported running stays, marked with ``deletionTimestamp``, until the
node reports nothing running or its grace period (plus a margin) has passed; its node is told
it is deleted at once, and never gets it back from a relist. A pod with nothing running goes at
once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.errors import ConflictError, NotFoundError
from agent.master.pods import DELETION_MARGIN_S, pod_object
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


def manifest(name: str, grace_s: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": "n1",
            "terminationGracePeriodSeconds": grace_s,
            "containers": [{"name": "main", "image": "busybox:1"}],
        },
    }


async def running_pod(rig: MasterRig, name: str, grace_s: int = 10) -> None:
    await rig.pods.apply(manifest(name, grace_s))
    await rig.pods.set_status("default", name, RUNNING, "n1")


async def next_event(events: AsyncIterator[dict[str, Any]]) -> tuple[str, str]:
    event = await asyncio.wait_for(anext(events), 10.0)
    return event["type"], event["object"]["metadata"]["name"]


async def test_a_running_pod_is_terminating_until_its_node_reports_it_stopped(
    rig: MasterRig,
) -> None:
    await running_pod(rig, "web")
    _, revision = await rig.pods.list()
    events = rig.pods.watch_node("n1", revision)
    await rig.pods.delete("default", "web")
    shown = pod_object(await rig.pods.get("default", "web"))
    assert shown["metadata"]["deletionTimestamp"]
    assert shown["metadata"]["deletionGracePeriodSeconds"] == 10
    assert await next_event(events) == ("DELETED", "web")  # the node stops it now
    await rig.pods.delete("default", "web")  # again: nothing changes, no error
    with pytest.raises(ConflictError, match="is being deleted"):
        await rig.pods.apply(manifest("web"))
    await rig.pods.set_status("default", "web", RUNNING | {"reason": "x"}, "n1")
    assert await rig.pods.get("default", "web")  # still running there
    await rig.pods.set_status("default", "web", STOPPED, "n1")
    with pytest.raises(NotFoundError):
        await rig.pods.get("default", "web")
    await rig.pods.apply(manifest("web"))  # the name is free again


async def test_a_relisting_node_never_gets_a_terminating_pod_back(rig: MasterRig) -> None:
    await running_pod(rig, "web")
    await running_pod(rig, "db")
    await rig.pods.delete("default", "web")
    _, revision = await rig.pods.list()
    events = rig.pods.watch_node("n1", revision)
    await rig.pods.set_status("default", "web", RUNNING | {"reason": "y"}, "n1")
    # A status report of the terminating pod is another DELETED for the node, never ADDED.
    assert await next_event(events) == ("DELETED", "web")


async def test_the_grace_period_bounds_the_wait(rig: MasterRig) -> None:
    await running_pod(rig, "web", grace_s=10)
    await rig.pods.delete("default", "web")
    rig.clock.advance(10 + DELETION_MARGIN_S - 1)
    assert await rig.pods.finalize_deletions() == 0
    assert await rig.pods.get("default", "web")
    rig.clock.advance(2)
    assert await rig.pods.finalize_deletions() == 1
    with pytest.raises(NotFoundError):
        await rig.pods.get("default", "web")


@pytest.mark.parametrize(
    "status",
    [
        None,  # never reported: nothing runs
        {"phase": "Pending"},
        {"phase": "Succeeded", "containerStatuses": RUNNING["containerStatuses"]},
        STOPPED,
    ],
)
async def test_a_pod_with_nothing_running_goes_at_once(
    rig: MasterRig, status: dict[str, Any] | None
) -> None:
    await rig.pods.apply(manifest("web"))
    if status is not None:
        await rig.pods.set_status("default", "web", status, "n1")
    await rig.pods.delete("default", "web")
    with pytest.raises(NotFoundError):
        await rig.pods.get("default", "web")


async def test_a_deletions_grace_period_replaces_the_pods_own(rig: MasterRig) -> None:
    """``nodectl delete --grace-period=N``: the node hears N with the deletion (its watch
    event's ``deletionGracePeriodSeconds``) and the master's deadline follows N."""
    await running_pod(rig, "web", grace_s=300)
    _, revision = await rig.pods.list()
    events = rig.pods.watch_node("n1", revision)
    await rig.pods.delete("default", "web", grace_s=2)
    event = await asyncio.wait_for(anext(events), 10.0)
    assert event["type"] == "DELETED"
    assert event["object"]["metadata"]["deletionGracePeriodSeconds"] == 2
    rig.clock.advance(2 + DELETION_MARGIN_S + 1)
    assert await rig.pods.finalize_deletions() == 1
