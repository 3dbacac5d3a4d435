"""Lease renewals with the node's status, pod status reports only when changed, mirror pods,
and the node facts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.aio.bridge import ThreadBridge
from agent.errors import RuntimeUnavailableError
from agent.manifest import parse_pod
from agent.node.masterlink.facts import NodeFacts
from agent.node.masterlink.lease import STATUS_CHECK_S, STATUS_REFRESH_S
from agent.node.masterlink.status import final_status
from agent.node.runtime.fake import FakeRuntime
from tests.unit.node.asyncwait import until
from tests.unit.node.masterlink.fakemaster import NODE, pod_manifest
from tests.unit.node.masterlink.rig import link_rig


async def test_lease_carries_the_status_when_it_changed_and_now_and_then(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig, rig.session() as session:
        leases = rig.master.record.leases
        await rig.lease.renew(session)
        assert leases[-1]["status"]["conditions"] == rig.conditions
        assert leases[-1]["status"]["addresses"] == ["10.0.0.7"]
        assert rig.lease.renew_s == 1.0  # as the master says

        rig.clock.now += 1
        await rig.lease.renew(session)
        assert leases[-1] == {}  # nothing changed: a bare renewal

        rig.conditions[0] = {"type": "RuntimeReady", "status": "False"}
        rig.clock.now += 1
        await rig.lease.renew(session)
        assert leases[-1]["status"]["conditions"][0]["status"] == "False"

        rig.clock.now += STATUS_REFRESH_S
        await rig.lease.renew(session)
        assert "status" in leases[-1]  # sent again though unchanged

        rig.master.lease_renew_s = 0  # a nonsense interval is ignored
        rig.clock.now += 1
        await rig.lease.renew(session)
        assert rig.lease.renew_s == 1.0


async def test_node_facts_are_recomputed_only_every_status_check(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig, rig.session() as session:
        await rig.lease.renew(session)
        facts = rig.lease._facts  # type: ignore[attr-defined]
        facts.value = {**facts.value, "addresses": ["10.0.0.8"]}
        rig.clock.now += 1
        await rig.lease.renew(session)
        assert rig.master.record.leases[-1] == {}
        rig.clock.now += STATUS_CHECK_S
        await rig.lease.renew(session)
        assert rig.master.record.leases[-1]["status"]["addresses"] == ["10.0.0.8"]


async def test_lease_loop_renews_every_interval(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig, rig.session() as session:
        await rig.lease.renew(session)
        loop = asyncio.create_task(rig.lease.run(session))
        await until(lambda: rig.sleeps.parked == [1.0], "the loop waits one interval")
        loop.cancel()


async def test_status_is_reported_only_when_it_changed(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig, rig.session() as session:
        rig.master.add_pod(pod_manifest("a", uid="uid-a"), notify=False)
        await rig.watch.relist(session)
        worker = rig.pods.workers["uid-a"]
        await until(lambda: worker.synced_once.is_set(), "a synced")
        await until(lambda: worker.status.get("phase") == "Running", "a running")

        await rig.reporter.report_once(session)
        await rig.reporter.report_once(session)
        reported = [full for full, _ in rig.master.record.statuses]
        assert reported == ["default/a"]

        worker.status = {**worker.status, "phase": "Failed"}
        await rig.reporter.report_once(session)
        assert [s["phase"] for _, s in rig.master.record.statuses] == ["Running", "Failed"]

        rig.master.unavailable = True  # a failed report is retried next time
        worker.status = {**worker.status, "phase": "Succeeded"}
        await rig.reporter.report_once(session)
        rig.master.unavailable = False
        await rig.reporter.report_once(session)
        assert [s["phase"] for _, s in rig.master.record.statuses][-1] == "Succeeded"
        assert len(rig.master.record.statuses) == 3


async def test_events_ride_along_changed_only_static_ones_by_their_mirrors_name(
    tmp_path: Path,
) -> None:
    """After the statuses, what changed in the event record goes to the master (repeats with
    their new count), in pages; a static pod's events under its mirror's name; an outage
    retries the same page; a new session sends everything held again (the master files by
    count, so nothing doubles)."""
    async with link_rig(tmp_path) as rig, rig.session() as session:
        rig.master.add_pod(pod_manifest("a", uid="uid-a"), notify=False)
        await rig.watch.relist(session)
        static = parse_pod(pod_manifest("static-s"), source="file:/m/s.yaml")
        rig.pods.apply_source("file:", [static])
        for worker in list(rig.pods.workers.values()):
            await until(worker.synced_once.is_set, "synced")
        await rig.reporter.report_once(session)  # what the pods' starts recorded
        rig.master.record.events.clear()

        def back_off(name: str, uid: str) -> None:
            rig.events.record(
                kind="Pod",
                name=name,
                namespace="default",
                uid=uid,
                reason="BackOff",
                message="back-off 10s",
                warning=True,
            )

        back_off("a", "uid-a")
        back_off("static-s", static.uid)
        await rig.reporter.report_once(session)
        filed = {
            (e["involvedObject"]["name"], e["reason"], e["count"]) for e in rig.master.record.events
        }
        assert ("a", "BackOff", 1) in filed and ("static-s-n1", "BackOff", 1) in filed
        assert all(e["source"]["host"] == NODE for e in rig.master.record.events)

        rig.master.record.events.clear()
        await rig.reporter.report_once(session)
        assert rig.master.record.events == []  # nothing changed

        back_off("a", "uid-a")
        rig.master.unavailable = True
        await rig.reporter.report_once(session)
        rig.master.unavailable = False
        await rig.reporter.report_once(session)
        assert [(e["involvedObject"]["name"], e["count"]) for e in rig.master.record.events] == [
            ("a", 2)
        ]


async def test_static_pods_are_mirrored_once_per_spec_and_removed_with_their_file(
    tmp_path: Path,
) -> None:
    async with link_rig(tmp_path) as rig, rig.session() as session:
        source = "file:/etc/node-agent/manifests/s.yaml"
        static = parse_pod(pod_manifest("static-s"), source=source)
        rig.pods.apply_source("file:", [static])
        await rig.reporter.report_once(session)
        await rig.reporter.report_once(session)
        # Named as kubelet names mirror pods: <name>-<node>.
        assert rig.master.record.mirrors_put == ["default/static-s-n1"]
        assert rig.master.mirrors["default/static-s-n1"]["metadata"]["name"] == "static-s-n1"
        # Its status goes to the mirror.
        await until(lambda: rig.pods.workers[static.uid].synced_once.is_set(), "static pod synced")
        await rig.reporter.report_once(session)
        assert "default/static-s-n1" in [full for full, _ in rig.master.record.statuses]
        assert "default/static-s" not in [full for full, _ in rig.master.record.statuses]

        rig.pods.apply_source("file:", [])
        await rig.reporter.report_once(session)
        assert rig.master.record.mirrors_deleted == ["default/static-s-n1"]

        # A new session puts every mirror again.
        rig.pods.apply_source("file:", [static])
        loop = asyncio.create_task(rig.reporter.run(session))
        await until(lambda: len(rig.master.record.mirrors_put) == 2, "mirror put again")
        loop.cancel()


async def test_a_mirror_is_retried_after_an_outage_but_not_after_a_refusal(
    tmp_path: Path,
) -> None:
    async with link_rig(tmp_path) as rig, rig.session() as session:
        source = "file:/etc/node-agent/manifests/"
        static = parse_pod(pod_manifest("static-s"), source=source + "s.yaml")
        rig.pods.apply_source("file:", [static])
        rig.master.unavailable = True  # a 503 (or a time-out): the master could not answer
        await rig.reporter.report_once(session)
        rig.master.unavailable = False
        await rig.reporter.report_once(session)
        assert rig.master.record.mirrors_put == ["default/static-s-n1"]

        # A refusal (a pod of the master's holds the name) is not retried every loop, and the
        # static pod's status never lands on the master's pod.
        rig.master.add_pod(pod_manifest("static-t-n1"), notify=False)
        taken = parse_pod(pod_manifest("static-t"), source=source + "t.yaml")
        rig.pods.apply_source("file:", [static, taken])
        await until(lambda: rig.pods.workers[taken.uid].synced_once.is_set(), "static pod synced")
        for _ in range(3):
            await rig.reporter.report_once(session)
        put_t = "PUT /v1/nodes/n1/mirrorpods/default/static-t-n1"
        assert rig.master.record.requests.count(put_t) == 1
        assert "default/static-t-n1" not in [full for full, _ in rig.master.record.statuses]

        # A deletion the master could not answer is retried too.
        rig.master.unavailable = True
        rig.pods.apply_source("file:", [taken])
        await rig.reporter.report_once(session)
        rig.master.unavailable = False
        await rig.reporter.report_once(session)
        assert rig.master.record.mirrors_deleted == ["default/static-s-n1"]


async def test_a_mirror_taken_over_by_the_master_is_put_again_and_refused(
    tmp_path: Path,
) -> None:
    """An administrator's apply over a mirror wins on the master: the node's next status
    report finds its mirror gone, the next sync puts it again and logs the refusal."""
    async with link_rig(tmp_path) as rig, rig.session() as session:
        static = parse_pod(pod_manifest("static-s"), source="file:/m/s.yaml")
        rig.pods.apply_source("file:", [static])
        await until(lambda: rig.pods.workers[static.uid].synced_once.is_set(), "static pod synced")
        await rig.reporter.report_once(session)
        assert [full for full, _ in rig.master.record.statuses] == ["default/static-s-n1"]
        # The master's pod takes the name (what an apply over the mirror leaves behind).
        rig.master.mirrors.pop("default/static-s-n1")
        worker = rig.pods.workers[static.uid]
        worker.status = {**worker.status, "phase": "Failed"}
        await rig.reporter.report_once(session)  # 409: not a mirror any more
        await rig.reporter.report_once(session)  # put again: refused (the API's name)
        put = "PUT /v1/nodes/n1/mirrorpods/default/static-s-n1"
        assert rig.master.record.requests.count(put) == 2
        await rig.reporter.report_once(session)
        assert rig.master.record.requests.count(put) == 2  # not again every loop
        assert len(rig.master.record.statuses) == 1  # none landed on the master's pod


async def test_node_facts_read_the_host_and_the_runtime(tmp_path: Path) -> None:
    bridge = ThreadBridge(2, name="test")
    runtime = FakeRuntime("n1", capacity_bytes=(10 << 30) + 12345)
    try:
        facts = NodeFacts(bridge, runtime, state_dir=tmp_path, max_pods=7, api_addr="0.0.0.0:10250")
        status = await facts.status()
        assert status["capacity"]["pods"] == "7"
        assert int(status["capacity"]["cpu"]) >= 1
        host = status["addresses"][0] if status["addresses"] else "0.0.0.0"
        assert status["apiEndpoint"] in (f"{host}:10250", f"[{host}]:10250")
        assert status["imageFs"]["capacityBytes"] == 10 << 30  # rounded to MiB
        runtime.fail("image_fs_usage", RuntimeUnavailableError("down"))
        assert "imageFs" not in await facts.status()
    finally:
        bridge.close()


async def test_a_deleted_pod_gets_a_last_status_with_nothing_running(tmp_path: Path) -> None:
    """Once a deleted pod of the master's has left the node, its last status says its
    containers are gone (kubelet's ContainerStatusUnknown), so the master lets the
    Terminating pod go then rather than at its deadline; once, and never for static pods."""
    async with link_rig(tmp_path) as rig, rig.session() as session:
        rig.master.add_pod(pod_manifest("a", uid="uid-a"), notify=False)
        await rig.watch.relist(session)
        worker = rig.pods.workers["uid-a"]
        await until(lambda: worker.status.get("phase") == "Running", "a running")
        await rig.reporter.report_once(session)
        rig.pods.apply_source("api", [])
        await until(lambda: "uid-a" not in rig.pods.workers, "a removed from the node")
        await rig.reporter.report_once(session)
        await rig.reporter.report_once(session)
        reported = rig.master.record.statuses
        assert [full for full, _ in reported] == ["default/a", "default/a"]
        last = reported[-1][1]["containerStatuses"][0]
        assert last["state"]["terminated"]["reason"] == "ContainerStatusUnknown"
        assert last["ready"] is False
        assert reported[0][1]["containerStatuses"][0]["state"].keys() == {"running"}


def test_the_final_status_touches_only_running_containers() -> None:
    status = {
        "phase": "Running",
        "containerStatuses": [
            {"name": "a", "ready": True, "state": {"running": {"startedAt": "t"}}},
            {"name": "b", "ready": False, "state": {"terminated": {"exitCode": 3}}},
            "junk",
        ],
    }
    final = final_status(status)
    assert final["phase"] == "Running"
    a, b, junk = final["containerStatuses"]
    assert a["state"]["terminated"]["exitCode"] == 137 and not a["ready"]
    assert b["state"] == {"terminated": {"exitCode": 3}}
    assert junk == "junk"
    assert status["containerStatuses"][0]["state"] == {"running": {"startedAt": "t"}}
