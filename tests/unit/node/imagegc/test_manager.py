"""The image GC manager on FakeRuntime with a fake clock: a run frees down to the low
threshold LRU first, the last-used record survives a restart, a pod admitted between plan and
deletion keeps its image, dead containers are bounded, DiskPressure is set and cleared."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.aio.bridge import ThreadBridge
from agent.aio.tasks import Supervisor
from agent.node import crashpoints
from agent.node.imagegc.lastused import USAGE_FILE, LastUsedStore
from agent.node.imagegc.manager import GCSettings, ImageGC
from agent.node.imagegc.metrics import ImageGCMetrics
from agent.node.imagegc.planner import GCPolicy
from agent.node.imagegc.pressure import PressurePolicy
from agent.node.imagegc.reservations import ImageReservations
from agent.node.runtime.base import ContainerSpec, ContainerState
from agent.node.runtime.fake import FakeRuntime
from agent.types import LABEL_ATTEMPT, LABEL_CONTAINER, LABEL_NODE, LABEL_POD_UID
from tests.unit.node.imagegc.fakeclock import FakeClock

pytestmark = pytest.mark.usefixtures("blockbuster")

MB = 1_000_000
SANDBOX = "node-agent/pause:0.1"


class Rig:
    def __init__(self, tmp_path: Path, bridge: ThreadBridge, supervisor: Supervisor) -> None:
        self.clock = FakeClock()
        self.runtime = FakeRuntime("n1", clock=self.clock, capacity_bytes=100 * MB)
        self.reservations = ImageReservations()
        self.tmp_path = tmp_path
        self.bridge = bridge
        self.supervisor = supervisor
        self.settings = GCSettings(
            policy=GCPolicy(
                high_percent=85,
                low_percent=80,
                minimum_age_s=120,
                pinned_images=("keep/*",),
                sandbox_image=SANDBOX,
            ),
            period_s=3600,
            disk_check_interval_s=3600,
            dead_per_container=1,
            dead_total=None,
            pressure=PressurePolicy(imagefs_min_percent=15, nodefs_min_percent=0, margin_percent=5),
        )

    def gc(self, registry: CollectorRegistry | None = None) -> ImageGC:
        return ImageGC(
            runtime=self.runtime,
            reservations=self.reservations,
            store=LastUsedStore(self.tmp_path / USAGE_FILE),
            bridge=self.bridge,
            settings=self.settings,
            clock=self.clock,
            metrics=ImageGCMetrics(registry or CollectorRegistry()),
            tasks=self.supervisor.scope("image-gc"),
            state_dir=self.tmp_path,
        )

    async def fill(self, gc: ImageGC, count: int, size: int = 10 * MB) -> list[str]:
        """``count`` images app/0 .. app/n-1, first seen one minute apart (app/0 the least
        recently used), then all older than the minimum age."""
        ids = []
        for i in range(count):
            ids.append(self.runtime.add_image(f"app/{i}:1", size_bytes=size).id)
            await gc.plan()
            self.clock.advance(60)
        self.clock.advance(1000)
        return ids


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    bridge = ThreadBridge(2, name="imagegc-test")
    try:
        async with Supervisor() as supervisor:
            yield Rig(tmp_path, bridge, supervisor)
    finally:
        bridge.close()


async def test_a_run_frees_down_to_the_low_threshold_lru_first(rig: Rig) -> None:
    rig.runtime.add_image(SANDBOX, size_bytes=1 * MB)
    gc = rig.gc()
    await gc.start()
    try:
        ids = await rig.fill(gc, 9)
        # 91 MB of 100: over 85 %; down to <= 80 % means 11 MB at least: two images
        report = await gc.collect()
        assert report.plan.triggered
        gone = [i for i, image_id in enumerate(ids) if image_id in report.results]
        assert gone == [0, 1]
        assert all(report.results[ids[i]] == "deleted" for i in gone)
        usage = await rig.runtime.image_fs_usage()
        assert usage["usedBytes"] <= 80 * MB
        assert await rig.runtime.inspect_image(SANDBOX) is not None
        again = await gc.collect()  # under the high threshold now: nothing to do
        assert again.results == {}
    finally:
        await gc.stop()


async def test_the_lru_order_survives_a_restart(rig: Rig) -> None:
    gc = rig.gc()
    await gc.start()
    names = [f"app/{i}:1" for i in range(5)]
    for name in reversed(names):  # app/4 seen first ... app/0 last
        rig.runtime.add_image(name, size_bytes=1 * MB)
        await gc.plan()
        rig.clock.advance(60)
    before = [v.image.repo_tags[0] for v in (await gc.plan()).verdicts]
    await gc.stop()
    assert before == list(reversed(names))
    path = rig.tmp_path / USAGE_FILE
    assert stat.S_IMODE((await rig.bridge.run(path.stat)).st_mode) == 0o600

    rig.clock.advance(3600)  # a new agent, an hour later: the record, not "now", orders them
    again = rig.gc()
    await again.start()
    try:
        after = [v.image.repo_tags[0] for v in (await again.plan()).verdicts]
        assert after == before
        assert again.last_used == gc.last_used
    finally:
        await again.stop()


async def test_a_run_writes_the_record_it_observed_less_what_it_deleted(rig: Rig) -> None:
    """The record's write overlaps the deletions; the file a run leaves is the newest record:
    the image the run saw first is in it, the images it deleted are not."""
    gc = rig.gc()
    await gc.start()
    try:
        ids = await rig.fill(gc, 9)
        late = rig.runtime.add_image("late/0:1", size_bytes=1 * MB)  # first seen by the run
        report = await gc.collect()
        assert [i for i in ids if i in report.results] == ids[:2]
        on_disk = await rig.bridge.run(LastUsedStore(rig.tmp_path / USAGE_FILE).load)
        assert on_disk == gc.last_used
        assert late.id in on_disk
        assert not set(ids[:2]) & set(on_disk)
    finally:
        await gc.stop()


async def test_a_pod_admitted_between_plan_and_delete_keeps_its_image(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold(point: str) -> None:
        assert point == "imagegc-before-delete"
        held.set()
        await release.wait()

    monkeypatch.setattr(crashpoints, "hold", hold)
    gc = rig.gc()
    await gc.start()
    try:
        ids = await rig.fill(gc, 9)
        run = asyncio.create_task(gc.collect())
        await held.wait()  # planned (app/0 and app/1 are the LRU pair), nothing deleted yet
        assert await rig.runtime.inspect_image(ids[0]) is not None
        async with rig.reservations.pinning("pod-uid-1") as pin:  # the admission
            found = await rig.runtime.inspect_image("app/0:1")
            assert found is not None
            pin.add(found.id)
        release.set()
        report = await run
        assert report.results[ids[0]].startswith("refused: reserved")
        assert await rig.runtime.inspect_image(ids[0]) is not None
        assert report.results[ids[1]] == "deleted"
    finally:
        await gc.stop()


async def test_dead_containers_beyond_the_bounds_are_removed(rig: Rig) -> None:
    rig.settings = GCSettings(policy=rig.settings.policy, dead_per_container=1, dead_total=2)
    gc = rig.gc()
    runtime = rig.runtime
    runtime.add_image("busybox:1")
    ids = {}
    for pod in ("p1", "p2"):
        for attempt in range(3):
            spec = ContainerSpec(
                name=f"app_{pod}_{attempt}",
                image="busybox:1",
                labels={
                    LABEL_NODE: "n1",
                    LABEL_POD_UID: pod,
                    LABEL_CONTAINER: "app",
                    LABEL_ATTEMPT: str(attempt),
                },
            )
            cid = await runtime.create_container(spec)
            await runtime.start_container(cid)
            runtime.exit_container(cid, 1)
            rig.clock.advance(10)
            ids[(pod, attempt)] = cid
    removed = await gc.collect_containers()
    left = {(r.pod_uid, r.attempt) for r in await runtime.list_containers()}
    # per container: the latest (attempt 2, dead) counts as the one kept: attempts 0, 1 go
    assert left == {("p1", 2), ("p2", 2)}
    assert removed == 4
    assert all(r.state is ContainerState.EXITED for r in await runtime.list_containers())


async def test_disk_pressure_is_set_then_cleared_with_hysteresis(rig: Rig) -> None:
    gc = rig.gc()
    kicked: list[bool] = []
    gc.kick = lambda: kicked.append(True)  # type: ignore[method-assign]
    big = rig.runtime.add_image("big:1", size_bytes=86 * MB)  # 14 % free < 15 %
    state = await gc.check_disk()
    assert state.pressure and gc.condition()["status"] == "True"
    assert "imagefs.available 14.0% < 15%" in state.message
    assert kicked == [True]  # a GC run at once
    small = rig.runtime.add_image("small:1", size_bytes=1 * MB)
    await rig.runtime.remove_image(big.id)
    rig.runtime.add_image("mid:1", size_bytes=82 * MB)  # 17 % free: above 15, under 15 + 5
    assert (await gc.check_disk()).pressure
    await rig.runtime.remove_image("mid:1")
    rig.runtime.add_image("mid:2", size_bytes=78 * MB)  # 21 % free: clears
    cleared = await gc.check_disk()
    assert not cleared.pressure
    assert gc.condition() == {
        "type": "DiskPressure",
        "status": "False",
        "reason": "KubeletHasNoDiskPressure",
        "message": "",
    }
    assert small.id


async def test_an_image_with_several_tags_is_untagged_then_removed(rig: Rig) -> None:
    gc = rig.gc()
    ids = await rig.fill(gc, 9)
    rig.runtime.add_image("alias/of-app0:2", image_id=ids[0])  # a second reference
    report = await gc.collect()
    assert report.results[ids[0]] == "deleted"
    assert await rig.runtime.inspect_image(ids[0]) is None
    assert await rig.runtime.inspect_image("alias/of-app0:2") is None


async def test_the_metrics_count_runs_deletions_refusals_and_bytes(rig: Rig) -> None:
    registry = CollectorRegistry()
    gc = rig.gc(registry)
    rig.runtime.add_image(SANDBOX, size_bytes=1 * MB)
    ids = await rig.fill(gc, 9)
    await rig.reservations.reserve("pod-1", [ids[0]])
    await gc.collect()

    def value(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, labels)
        assert found is not None, name
        return found

    assert value("node_agent_image_gc_runs_total") == 1
    assert value("node_agent_image_gc_deleted_images_total") == 2  # app/1, app/2
    assert value("node_agent_image_gc_refused_total", reason="reserved") == 1
    assert value("node_agent_image_gc_refused_total", reason="sandbox") == 1
    assert value("node_agent_image_gc_freed_bytes_total") == 20 * MB
    assert value("node_agent_images") == 10
    assert value("node_agent_image_fs_capacity_bytes") == 100 * MB
