"""The cluster-wide watches (``agent.master.watch``) through the master's API handlers: pods
with initial events and a bookmark, resumed from a revision, filtered by namespace, 410 once
compacted; nodes reported when what they show changes (a Ready flip) and never for a lease
renewal alone; bookmarks while quiet and the end of a watch at its bound."""

from __future__ import annotations

import dataclasses
import gc
import json
import tracemalloc

import pytest

from agent.master.api import NDJSON_TYPE, MasterApi
from agent.master.pki_files import ClusterPki
from agent.master.store.base import KeyValue
from agent.master.store.memory import MemoryStore
from agent.master.watch import INITIAL_EVENTS_END, WATCH_RETRY_AFTER_S, WATCHES_PER_CALLER
from tests.unit.master.rig import LEASE_GRACE_S, MasterRig, make_rig
from tests.unit.master.test_api import ADMIN, VIEWER, call, fails, lines, pod

pytestmark = pytest.mark.usefixtures("blockbuster")


@pytest.fixture
def api(rig: MasterRig) -> MasterApi:
    return MasterApi(rig.registry, rig.pods, ())


def summary(events: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [
        (e["type"], e["object"]["metadata"].get("name"))  # type: ignore[index]
        for e in events
    ]


async def test_a_pod_watch_starts_with_the_pods_then_a_bookmark_then_each_change(
    api: MasterApi, rig: MasterRig
) -> None:
    await rig.ready_node("n1")
    await call(api, "POST", "/v1/pods", pod("a", node="n1"))
    watch = await call(api, "GET", "/v1/pods?watch=1&sendInitialEvents=true")
    assert watch.content_type == NDJSON_TYPE
    try:
        added, bookmark = await lines(watch.stream, 2)
        assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "a")
        assert added["object"]["metadata"]["resourceVersion"] == str(added["resourceVersion"])
        assert bookmark["type"] == "BOOKMARK"
        assert bookmark["object"]["metadata"]["annotations"] == {INITIAL_EVENTS_END: "true"}
        await call(api, "POST", "/v1/pods", pod("b", node="n1"))
        await rig.pods.set_status("default", "b", {"phase": "Running"}, "n1")
        await call(api, "DELETE", "/v1/namespaces/default/pods/a")
        events = await lines(watch.stream, 3)
        assert summary(events) == [("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "a")]
        assert events[1]["object"]["status"]["phase"] == "Running"
        revisions = [e["resourceVersion"] for e in events]
        assert revisions == sorted(revisions) and revisions[0] > bookmark["resourceVersion"]
    finally:
        await watch.stream.aclose()  # type: ignore[union-attr]


async def test_a_pod_watch_resumes_after_a_revision_and_filters_by_namespace(
    api: MasterApi, rig: MasterRig
) -> None:
    await rig.ready_node("n1")
    await call(api, "POST", "/v1/pods", pod("a", node="n1"))
    listed = json.loads((await call(api, "GET", "/v1/pods")).body)
    rev = listed["resourceVersion"]
    other = pod("x", node="n1")
    other["metadata"]["namespace"] = "other"
    await call(api, "POST", "/v1/pods", other)
    await call(api, "POST", "/v1/pods", pod("b", node="n1"))
    await rig.pods.set_status("default", "a", {"phase": "Running"}, "n1")
    watch = await call(api, "GET", f"/v1/pods?watch=1&resourceVersion={rev}&namespace=default")
    try:
        # No initial events when resuming; the other namespace's pod is not seen; a existed
        # at the revision resumed from, so its change is MODIFIED, b was created after it.
        assert summary(await lines(watch.stream, 2)) == [("ADDED", "b"), ("MODIFIED", "a")]
    finally:
        await watch.stream.aclose()  # type: ignore[union-attr]


async def test_a_pod_watch_from_a_compacted_revision_is_gone(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki, store=MemoryStore(history=5))
    api = MasterApi(rig.registry, rig.pods, ())
    await rig.ready_node("n1")
    for i in range(12):
        await call(api, "POST", "/v1/pods", pod(f"p{i}", node="n1"))
    old = await call(api, "GET", "/v1/pods?watch=1&resourceVersion=1")
    chunks = [chunk async for chunk in old.stream]  # type: ignore[union-attr]
    [error] = [json.loads(c) for c in chunks]
    assert error["type"] == "ERROR" and error["object"]["error"]["code"] == 410


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("resourceVersion=x", "resourceVersion must be a revision"),
        ("resourceVersion=-1", "resourceVersion must be a revision"),
        ("sendInitialEvents=yes", "sendInitialEvents must be true or false"),
        ("timeoutSeconds=nan", "timeoutSeconds must be a positive number"),
        ("timeoutSeconds=0", "timeoutSeconds must be a positive number"),
    ],
)
async def test_bad_watch_parameters_are_refused_naming_them(
    api: MasterApi, query: str, problem: str
) -> None:
    for path in ("/v1/pods", "/v1/nodes"):
        _, error = await fails(api, "GET", f"{path}?watch=1&{query}")
        assert error["code"] == 400 and problem in error["message"]


async def test_a_quiet_watch_sends_bookmarks_and_ends_at_its_bound(
    api: MasterApi, rig: MasterRig
) -> None:
    api.watch_bookmark_s = 0.05
    await call(api, "POST", "/v1/pods", pod("a", node="n1"))
    watch = await call(api, "GET", "/v1/pods?watch=1&timeoutSeconds=0.3")
    events = [json.loads(chunk) async for chunk in watch.stream]  # type: ignore[union-attr]
    assert events[0]["type"] == "ADDED"
    assert [e["type"] for e in events[1:]] == ["BOOKMARK"] * (len(events) - 1)
    assert len(events) >= 3  # the initial-events bookmark and at least one heartbeat
    assert {e["resourceVersion"] for e in events[1:]} == {events[0]["resourceVersion"]}


async def test_a_quiet_node_watch_sends_bookmarks_too(api: MasterApi, rig: MasterRig) -> None:
    """A node watch compares the nodes every NODE_CHECK_S without sending anything; the quiet
    timer counted from those steps, so no BOOKMARK ever went out: nodectl took the silence
    for a dead connection, and a client gone without a word was never written to, its watch
    (comparing every node each second) living its whole 30 minutes."""
    api.watch_node_check_s = 0.01
    api.watch_bookmark_s = 0.05
    await rig.ready_node("n1")
    watch = await call(api, "GET", "/v1/nodes?watch=1&timeoutSeconds=0.4")
    events = [json.loads(chunk) async for chunk in watch.stream]  # type: ignore[union-attr]
    assert [e["type"] for e in events[:2]] == ["ADDED", "BOOKMARK"]
    assert len(events) >= 4 and {e["type"] for e in events[2:]} == {"BOOKMARK"}, events


async def test_a_node_watch_reports_a_ready_flip_but_not_a_lease_renewal(
    api: MasterApi, rig: MasterRig
) -> None:
    api.watch_node_check_s = 0.01
    await rig.ready_node("n1")
    watch = await call(api, "GET", "/v1/nodes?watch=1")
    try:
        added, bookmark = await lines(watch.stream, 2)
        assert added["type"] == "ADDED" and added["object"]["metadata"]["name"] == "n1"
        assert bookmark["type"] == "BOOKMARK"
        for _ in range(3):  # renewals move the heartbeat time only: no event
            rig.clock.advance(1.0)
            rig.registry.renew_lease("n1")
        rig.clock.advance(LEASE_GRACE_S + 1)  # the lease runs out: NotReady
        [flip] = await lines(watch.stream, 1)
        assert flip["type"] == "MODIFIED"
        [ready] = [c for c in flip["object"]["status"]["conditions"] if c["type"] == "Ready"]
        assert ready["status"] == "False"
        await rig.ready_node("n2")
        [joined] = await lines(watch.stream, 1)
        assert (joined["type"], joined["object"]["metadata"]["name"]) == ("ADDED", "n2")
        await call(api, "DELETE", "/v1/nodes/n2")
        [gone] = await lines(watch.stream, 1)
        assert (gone["type"], gone["object"]["metadata"]["name"]) == ("DELETED", "n2")
    finally:
        await watch.stream.aclose()  # type: ignore[union-attr]


async def test_a_node_watch_does_not_resume(api: MasterApi) -> None:
    watch = await call(api, "GET", "/v1/nodes?watch=1&resourceVersion=5")
    [error] = [json.loads(c) async for c in watch.stream]  # type: ignore[union-attr]
    assert error["type"] == "ERROR" and error["object"]["error"]["code"] == 410


async def test_apply_says_created_configured_or_unchanged_and_unchanged_writes_nothing(
    api: MasterApi, rig: MasterRig
) -> None:
    await rig.ready_node("n1")
    first = await call(api, "POST", "/v1/pods", pod("a", node="n1"))
    assert (first.status, dict(first.headers)) == (201, {"X-Apply-Result": "created"})
    revision = (await rig.store.list_prefix("/pods/"))[1]
    again = await call(api, "POST", "/v1/pods", pod("a", node="n1"))
    assert (again.status, dict(again.headers)) == (200, {"X-Apply-Result": "unchanged"})
    assert (await rig.store.list_prefix("/pods/"))[1] == revision  # no write, no watch event
    newer = pod("a", node="n1")
    newer["spec"]["containers"][0]["image"] = "busybox:2"
    changed = await call(api, "POST", "/v1/pods", newer)
    assert (changed.status, dict(changed.headers)) == (200, {"X-Apply-Result": "configured"})


async def test_a_caller_holds_at_most_its_share_of_watches(api: MasterApi, rig: MasterRig) -> None:
    """Before, a viewer opened as many watches as it liked (each a task, a store watch woken
    at every change and a queue, for up to 30 min; a node watch also compares every node each
    second). Past WATCHES_PER_CALLER: 429 with Retry-After; other callers are not affected; a
    watch gives its slot back when it ends or is closed, even one never read."""
    await rig.ready_node("n1")
    held = [
        await call(api, "GET", f"/v1/{kind}?watch=1", caller=VIEWER)
        for kind in ("pods", "nodes") * (WATCHES_PER_CALLER // 2)
    ]
    assert api.watch_slots.held(VIEWER.principal.name) == WATCHES_PER_CALLER
    for kind in ("pods", "nodes"):
        refused, error = await fails(api, "GET", f"/v1/{kind}?watch=1", caller=VIEWER)
        assert error["code"] == 429 and "watches already" in error["message"]
        assert refused.retry_after_s == WATCH_RETRY_AFTER_S  # type: ignore[attr-defined]
    other = await call(api, "GET", "/v1/pods?watch=1", caller=ADMIN)
    await lines(other.stream, 1)
    await held.pop().stream.aclose()  # type: ignore[union-attr]  # closed before any read
    short = await call(api, "GET", "/v1/pods?watch=1&timeoutSeconds=0.05", caller=VIEWER)
    assert [json.loads(c)["type"] async for c in short.stream] == ["BOOKMARK"]  # type: ignore[union-attr]
    assert api.watch_slots.held(VIEWER.principal.name) == WATCHES_PER_CALLER - 1  # it ended
    for response in [*held, other]:
        await response.stream.aclose()  # type: ignore[union-attr]
    assert api.watch_slots.held(VIEWER.principal.name) == 0
    assert api.watch_slots.held(ADMIN.principal.name) == 0


class CopyingStore(MemoryStore):
    """Lists fresh copies of the values, as SQLite and etcd do (the memory store shares its
    own, which no watch could be caught holding)."""

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        items, revision = await super().list_prefix(prefix)
        return [dataclasses.replace(i, value=bytes(bytearray(i.value))) for i in items], revision


async def test_a_pod_watch_does_not_hold_the_initial_list(cluster_pki: ClusterPki) -> None:
    """A watch started with the list held every listed pod's stored value for its whole life
    (up to 30 min): 10 MiB of pods cost 10 MiB per watch (measured: +10.6 MB per watch).
    Now what it keeps is the pods' keys."""
    rig = make_rig(cluster_pki, store=CopyingStore())
    api = MasterApi(rig.registry, rig.pods, ())
    await rig.ready_node("n1")
    for i in range(100):
        big = pod(f"p{i}", node="n1")
        big["metadata"]["annotations"] = {"filler": "x" * 100_000}
        await call(api, "POST", "/v1/pods", big)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        watch = await call(api, "GET", "/v1/pods?watch=1", caller=VIEWER)
        initial = await lines(watch.stream, 101)
        assert initial[-1]["type"] == "BOOKMARK"
        del initial
        gc.collect()
        held_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        await watch.stream.aclose()  # type: ignore[union-attr]
    assert held_bytes < 1_000_000, held_bytes  # the list: 10 MB
