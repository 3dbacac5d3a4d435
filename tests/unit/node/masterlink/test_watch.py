"""The master as a pod source: list then watch, ADDED/MODIFIED/DELETED, resource versions,
resume after a reconnect, relist on 410, and junk on the watch (the defect: a malformed line
used to end the whole agent)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from agent.errors import MasterAnswerMalformedError
from agent.node.health.metrics import NodeMetrics
from agent.node.masterlink.state import LinkCondition
from agent.node.masterlink.watch import MasterPodSource, decode_event, decode_listing
from agent.types import Pod
from tests.unit.node.asyncwait import until
from tests.unit.node.masterlink.fakemaster import pod_manifest
from tests.unit.node.masterlink.rig import Rig, link_rig

WATCH_MAX_BYTES = 4096

VALID_OBJECT = pod_manifest("x")
JUNK: list[tuple[str, bytes]] = [
    ("random bytes", b"\x8f\xff\x00\x13garbage\xfe\xc3("),
    ("truncated JSON", b'{"type": "ADDED", "object": {"metadata": {"name": "tr'),
    ("a JSON array", b"[1, 2, 3]"),
    ("a JSON string", b'"ADDED"'),
    ("JSON null", b"null"),
    ("no type", json.dumps({"object": VALID_OBJECT}).encode()),
    ("unknown type", json.dumps({"type": "RENAMED", "object": VALID_OBJECT}).encode()),
    ("no object", b'{"type": "ADDED"}'),
    ("object not an object", b'{"type": "DELETED", "object": 7}'),
    ("metadata a string", b'{"type": "ADDED", "object": {"metadata": "x"}}'),
    (
        "name a number",
        json.dumps(
            {"type": "ADDED", "object": {"metadata": {"name": 5, "namespace": "default"}}}
        ).encode(),
    ),
    (
        "annotations a list",
        json.dumps(
            {
                "type": "ADDED",
                "object": {"metadata": {"name": "x", "namespace": "d", "annotations": []}},
            }
        ).encode(),
    ),
    (
        "resourceVersion not a number",
        json.dumps({"type": "ADDED", "object": VALID_OBJECT, "resourceVersion": "ten"}).encode(),
    ),
    (
        "resourceVersion a boolean",
        json.dumps({"type": "ADDED", "object": VALID_OBJECT, "resourceVersion": True}).encode(),
    ),
    ("ERROR without error", b'{"type": "ERROR", "object": "boom"}'),
    ("a line over the limit", b'{"type": "ADDED", "pad": "' + b"x" * WATCH_MAX_BYTES + b'"}'),
]


async def connected(rig: Rig, watches: int = 1) -> None:
    await until(lambda: rig.status.condition is LinkCondition.CONNECTED, "link connected")
    await until(lambda: len(rig.master.record.watches) >= watches, "pod watch open")


async def test_junk_on_the_watch_is_counted_relisted_and_leaves_the_pods_alone(
    tmp_path: Path,
) -> None:
    async with link_rig(tmp_path, watch_max_bytes=WATCH_MAX_BYTES) as rig:
        rig.master.add_pod(pod_manifest("before"), notify=False)
        await rig.link.start()
        await connected(rig)
        await until(lambda: rig.api_pods() == {"default/before"}, "assigned pod desired")
        await until(lambda: len(rig.runtime._containers) >= 2, "its containers created")
        await until(
            lambda: (
                rig.pods.workers and all(w.synced_once.is_set() for w in rig.pods.workers.values())
            ),
            "its first sync",
        )
        running_before = await rig.app_containers()
        assert running_before

        for n, (what, junk) in enumerate(JUNK):
            lists, watches = rig.master.record.lists, len(rig.master.record.watches)
            rig.master.send(junk)
            await until(
                lambda lists=lists, watches=watches: (
                    rig.master.record.lists > lists and len(rig.master.record.watches) > watches
                ),
                f"a relist and a new watch after {what}",
            )
            assert rig.metrics.master_watch_errors == n + 1, what
            assert rig.status.condition is LinkCondition.CONNECTED, what
            # The watch works after the relist: a valid event is applied.
            rig.master.add_pod(pod_manifest(f"after-{n}"))
            await until(lambda n=n: f"default/after-{n}" in rig.api_pods(), f"event after {what}")

        assert rig.metrics.master_watch_errors == len(JUNK)
        assert "default/before" in rig.api_pods()
        running_after = await rig.app_containers()
        assert {k: v for k, v in running_after.items() if k in running_before} == running_before
        # Every junk line cost one relist (plus the first listing), never a reconnect.
        assert rig.master.record.lists == len(JUNK) + 1
        assert len(rig.master.record.leases) == 1
        assert rig.sleeps.quick_calls.count(1.0) >= len(JUNK)  # JUNK_RELIST_DELAY_S each


async def test_events_apply_in_order_and_resource_versions_are_kept(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig:
        rig.master.echo_status = False  # the revisions move by this test's changes only
        rig.master.add_pod(pod_manifest("a", uid="uid-a"), notify=False)
        attempt = asyncio.create_task(rig.link.attempt())
        await connected(rig)
        assert rig.api_pods() == {"default/a"}
        assert rig.watch.revision == rig.master.revision
        assert rig.master.record.watches == [rig.master.revision]

        rig.master.add_pod(pod_manifest("b", uid="uid-b"))
        await until(lambda: rig.api_pods() == {"default/a", "default/b"}, "b added")
        worker_b = rig.pods.workers["uid-b"]
        # MODIFIED with the same spec (a status echo): nothing is replaced.
        rig.master.add_pod(pod_manifest("b", uid="uid-b"))
        await until(lambda: rig.watch.revision == rig.master.revision, "echo seen")
        assert rig.pods.workers["uid-b"] is worker_b and not worker_b.terminating
        # MODIFIED with a new spec: the pod is updated in place.
        rig.master.add_pod(pod_manifest("b", uid="uid-b", image="busybox:2"))
        await until(
            lambda: rig.pods.workers["uid-b"].pod.spec.containers[0].image == "busybox:2",
            "b replaced",
        )
        rig.master.delete_pod("default/a")
        await until(lambda: rig.api_pods() == {"default/b"}, "a deleted")
        # A DELETED of a pod the node never had changes nothing.
        rig.master.send(
            json.dumps(
                {"type": "DELETED", "object": pod_manifest("ghost"), "resourceVersion": 99}
            ).encode()
        )
        await until(lambda: rig.watch.revision == 99, "revision from the event")
        assert rig.api_pods() == {"default/b"}
        assert rig.metrics.master_watch_errors == 0
        assert not attempt.done()
        attempt.cancel()


async def test_mirror_pods_and_unparsable_manifests_are_not_desired_state(
    tmp_path: Path,
) -> None:
    async with link_rig(tmp_path) as rig:
        rig.master.add_pod(pod_manifest("keep", uid="uid-keep"), notify=False)
        mirror = pod_manifest("static-x")
        mirror["metadata"]["annotations"] = {"node-agent.io/mirror": "true"}
        rig.master.add_pod(mirror, notify=False)
        attempt = asyncio.create_task(rig.link.attempt())
        await connected(rig)
        assert rig.api_pods() == {"default/keep"}

        # A pod the node cannot parse: counted, not run; no relist (the listing says the same).
        bad = pod_manifest("bad")
        bad["spec"]["containers"] = "not a list"
        lists = rig.master.record.lists
        rig.master.add_pod(bad)
        await until(lambda: rig.metrics.master_watch_errors == 1, "bad manifest counted")
        # An unparsable new version of a running pod leaves the running one alone.
        broken = pod_manifest("keep", uid="uid-keep")
        broken["spec"]["containers"][0]["image"] = ""
        rig.master.add_pod(broken)
        # (At least: the master echoes each status report of the pod with its manifest.)
        await until(lambda: rig.metrics.master_watch_errors >= 2, "broken update counted")
        assert rig.api_pods() == {"default/keep"}
        assert rig.pods.workers["uid-keep"].pod.spec.containers[0].image == "busybox:1"
        assert rig.master.record.lists == lists
        attempt.cancel()


async def test_a_restarted_node_keeps_a_pod_whose_new_manifest_it_cannot_parse(
    tmp_path: Path,
) -> None:
    async with link_rig(tmp_path) as rig:
        rig.master.add_pod(pod_manifest("keep", uid="uid-keep"), notify=False)
        attempt = asyncio.create_task(rig.link.attempt())
        await connected(rig)
        await until(lambda: rig.pods.workers["uid-keep"].synced_once.is_set(), "keep runs")
        running = await rig.app_containers()
        attempt.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attempt
        # The agent restarts: the pod runs on from the checkpoint, and the master source
        # starts as a new one does, knowing no pod and no revision.
        rig.watch.pods = {}
        rig.watch.forget_revision()
        # Meanwhile the master got a version of the pod this node cannot parse.
        broken = pod_manifest("keep", uid="uid-keep")
        broken["spec"]["containers"][0]["image"] = ""
        rig.master.add_pod(broken, notify=False)

        attempt = asyncio.create_task(rig.link.attempt())
        await connected(rig, watches=2)
        assert rig.metrics.master_watch_errors >= 1
        assert rig.api_pods() == {"default/keep"}
        assert not rig.pods.workers["uid-keep"].terminating
        assert rig.pods.workers["uid-keep"].pod.spec.containers[0].image == "busybox:1"
        assert await rig.app_containers() == running
        assert set(rig.watch.pods) == {"default/keep"}  # still the master's pod: a DELETED ends it
        rig.master.delete_pod("default/keep")
        await until(lambda: rig.api_pods() == set(), "keep deleted by the master")
        attempt.cancel()


async def test_a_reconnect_resumes_the_watch_without_a_relist(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig:
        rig.master.add_pod(pod_manifest("a"), notify=False)
        first = asyncio.create_task(rig.link.attempt())
        await connected(rig)
        rig.master.add_pod(pod_manifest("b"))
        await until(lambda: "default/b" in rig.api_pods(), "b")
        rig.master.end_watches()  # the master ended the stream: an outage of the session
        wait_s = await asyncio.wait_for(first, 5)
        # (Taken once the session is over: until then, status echoes move it.)
        seen = rig.watch.revision
        assert 0 <= wait_s <= rig.link.backoff.ceiling_s
        assert rig.status.condition is LinkCondition.UNREACHABLE
        assert "pod watch ended" in rig.status.message

        rig.master.add_pod(pod_manifest("c"), notify=False)  # happened while away
        second = asyncio.create_task(rig.link.attempt())
        await until(lambda: len(rig.master.record.watches) == 2, "second watch")
        assert rig.master.record.watches[-1] == seen
        assert rig.master.record.lists == 1  # resumed: no relist
        second.cancel()


async def test_410_gone_relists_in_place(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig:
        rig.master.echo_status = False  # the revisions move by this test's changes only
        rig.master.add_pod(pod_manifest("a"), notify=False)
        rig.master.gone_once = True  # the first watch is already too old
        attempt = asyncio.create_task(rig.link.attempt())
        await connected(rig, watches=2)
        assert rig.master.record.lists == 2
        assert rig.master.record.watches == [rig.master.revision, rig.master.revision]

        # In-band 410 on a running watch: relist at once, the session goes on.
        rig.master.add_pod(pod_manifest("b"), notify=False)
        rig.master.send(
            json.dumps(
                {"type": "ERROR", "object": {"error": {"code": 410, "message": "compacted"}}}
            ).encode()
        )
        await until(lambda: rig.master.record.lists == 3, "relist after in-band 410")
        await until(lambda: rig.api_pods() == {"default/a", "default/b"}, "b from the listing")
        await until(lambda: len(rig.master.record.watches) == 3, "watching again")
        assert rig.metrics.master_watch_errors == 0
        assert not attempt.done()

        # Another in-band error ends the session like an outage.
        rig.master.send(
            json.dumps(
                {"type": "ERROR", "object": {"error": {"code": 500, "message": "store"}}}
            ).encode()
        )
        await asyncio.wait_for(attempt, 5)
        assert rig.status.condition is LinkCondition.UNREACHABLE
        assert "store" in rig.status.message


async def test_a_malformed_listing_is_an_outage_that_keeps_the_pods(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig:
        rig.master.add_pod(pod_manifest("a"), notify=False)
        attempt = asyncio.create_task(rig.link.attempt())
        await connected(rig)
        rig.master.pods["default/broken"] = {"metadata": {"name": 3}}
        rig.master.send(b"junk")  # forces a relist, which now fails
        await asyncio.wait_for(attempt, 5)
        assert rig.status.condition is LinkCondition.UNREACHABLE
        assert rig.metrics.master_watch_errors == 2
        assert rig.api_pods() == {"default/a"}


@pytest.mark.parametrize(
    "line",
    [
        b'{"type": "ADDED", "object": {"metadata": {"name": "a", "namespace": ""}}}',
        b'{"type": "ADDED", "object": {"metadata": {"name": "a", "namespace": "d"}},'
        b' "resourceVersion": -1}',
        b"\xff\xfe",
    ],
)
def test_decode_event_refuses(line: bytes) -> None:
    with pytest.raises(MasterAnswerMalformedError):
        decode_event(line)


def test_decode_event_and_listing_accept_the_wire_format() -> None:
    event = decode_event(
        json.dumps({"type": "ADDED", "object": VALID_OBJECT, "resourceVersion": "12"}).encode()
    )
    assert (event.type, event.full_name, event.resource_version) == ("ADDED", "default/x", 12)
    assert (
        decode_event(
            b'{"type": "DELETED", "object": ' + json.dumps(VALID_OBJECT).encode() + b"}"
        ).resource_version
        is None
    )
    items, revision = decode_listing({"items": [VALID_OBJECT], "resourceVersion": 3})
    assert (len(items), revision) == (1, 3)
    for bad in ({"items": {}}, {"items": []}, [], {"items": [1], "resourceVersion": 1}):
        with pytest.raises(MasterAnswerMalformedError):
            decode_listing(bad)


class _Sink:
    """A PodSink that records what it is told."""

    def __init__(self) -> None:
        self.applied: list[tuple[list[str], dict[str, int]]] = []

    def apply_source(
        self, prefix: str, pods: Iterable[Pod], *, deletion_grace_s: Mapping[str, int] = {}
    ) -> None:
        self.applied.append(([p.full_name for p in pods], dict(deletion_grace_s)))

    def pods_of_source(self, prefix: str) -> dict[str, Pod]:
        return {}


def test_a_deletions_grace_period_reaches_the_pods_teardown() -> None:
    """``nodectl delete --grace-period``: the master's DELETED carries
    ``deletionGracePeriodSeconds``; the node stops that pod within it (once)."""

    async def sleep(_: float) -> None:
        pass

    sink = _Sink()
    source = MasterPodSource("n1", sink, NodeMetrics(), sleep=sleep)
    web = pod_manifest("web", uid="u-web")
    line = {"type": "ADDED", "object": web, "resourceVersion": 1}
    assert source._on_line(json.dumps(line).encode())
    deleted = {**web, "metadata": {**web["metadata"], "deletionGracePeriodSeconds": 3}}
    line = {"type": "DELETED", "object": deleted, "resourceVersion": 2}
    assert source._on_line(json.dumps(line).encode())
    assert sink.applied == [(["default/web"], {}), ([], {"u-web": 3})]
    # A malformed grace period is the pod's own (nothing passed).
    source._on_line(json.dumps({"type": "ADDED", "object": web}).encode())
    deleted["metadata"]["deletionGracePeriodSeconds"] = "3"
    source._on_line(json.dumps({"type": "DELETED", "object": deleted}).encode())
    assert sink.applied[-1] == ([], {})
