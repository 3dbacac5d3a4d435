"""``/v1/images`` and ``POST /v1/images/gc`` on the local API socket (``node-agent images``),
against the real image GC manager on FakeRuntime; never on the loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from agent.cli import node_images
from agent.errors import RuntimeUnavailableError
from agent.node.health.api import LocalApi
from agent.node.imagegc.lastused import USAGE_FILE, LastUsedStore
from agent.node.imagegc.manager import GCReport, GCSettings, ImageGC
from agent.node.imagegc.metrics import ImageGCMetrics
from agent.node.imagegc.planner import GCPolicy
from agent.node.imagegc.reservations import ImageReservations
from tests.unit.node.health.test_api import FakeHealth
from tests.unit.node.imagegc.fakeclock import FakeClock
from tests.unit.node.pods.managerrig import ManagerRig, manager_rig
from tests.unit.node.pods.rig import NODE
from tests.unit.node.streaming.rig import HOST, free_port

pytestmark = pytest.mark.usefixtures("blockbuster")
MB = 1_000_000


class Broken:
    async def collect(self, *, dry_run: bool = False, force: bool = False) -> GCReport:
        raise RuntimeUnavailableError("docker: connection refused")


async def _serve(
    pods: ManagerRig, tmp_path: Path, images: object
) -> tuple[LocalApi, aiohttp.ClientSession, aiohttp.ClientSession]:
    port = await pods.bridge.run(free_port)
    api = LocalApi(
        pods=pods.pods,
        events=pods.events,
        metrics=pods.metrics,
        health=FakeHealth(),
        node_name=NODE,
        host=HOST,
        port=port,
        socket_path=tmp_path / "api.sock",
        bridge=pods.bridge,
        images=images,  # type: ignore[arg-type]
    )
    await api.start()
    unix = aiohttp.ClientSession(
        "http://local", connector=aiohttp.UnixConnector(str(api.socket_path))
    )
    http = aiohttp.ClientSession(f"http://{HOST}:{port}")
    return api, unix, http


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[ManagerRig]:
    async with manager_rig(tmp_path) as pods:
        yield pods


async def test_images_lists_why_and_gc_deletes_dry_run_does_not(
    rig: ManagerRig, tmp_path: Path
) -> None:
    clock = FakeClock()
    runtime = rig.runtime
    gc = ImageGC(
        runtime=runtime,
        reservations=ImageReservations(),
        store=LastUsedStore(tmp_path / USAGE_FILE),
        bridge=rig.bridge,
        settings=GCSettings(policy=GCPolicy(minimum_age_s=120, pinned_images=("busybox:*",))),
        clock=clock,
        metrics=ImageGCMetrics(CollectorRegistry()),
        tasks=rig.supervisor.scope("image-gc"),
        state_dir=tmp_path,
    )
    old = runtime.add_image("old:1", size_bytes=1 * MB)
    await gc.plan()
    clock.advance(600)
    young = runtime.add_image("young:1", size_bytes=1 * MB)
    runtime.capacity_bytes = (await runtime.image_fs_usage())["usedBytes"]  # full: GC frees 20 %
    api, unix, http = await _serve(rig, tmp_path, gc)
    try:
        async with http.get("/v1/images") as resp:
            assert resp.status == 404  # the loopback port serves no image list
        async with unix.get("/v1/images") as resp:
            listing = await resp.json()
        why = {i["tags"][0]: (i["delete"], i["reason"]) for i in listing["images"] if i["tags"]}
        assert why["old:1"] == (True, "disk-usage")
        assert why["busybox:1"] == (False, "pinned")
        assert why["young:1"] == (False, "too-young")
        async with unix.post("/v1/images/gc?dryRun=maybe") as resp:
            assert resp.status == 400
            assert "dryRun" in (await resp.json())["error"]
        async with unix.post("/v1/images/gc?dryRun=true") as resp:
            plan = await resp.json()
        assert plan["dryRun"] and {i["id"] for i in plan["images"] if i["delete"]} == {old.id}
        assert await runtime.inspect_image(old.id) is not None
        async with unix.post("/v1/images/gc") as resp:
            done = await resp.json()
        assert {i["id"]: i["result"] for i in done["images"] if i["result"]} == {old.id: "deleted"}
        assert await runtime.inspect_image(old.id) is None
        assert await runtime.inspect_image(young.id) is not None
    finally:
        await unix.close()
        await http.close()
        await api.stop()


async def test_an_engine_that_does_not_answer_is_a_503_with_the_reason(
    rig: ManagerRig, tmp_path: Path
) -> None:
    api, unix, http = await _serve(rig, tmp_path, Broken())
    try:
        async with unix.get("/v1/images") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"] == "docker: connection refused"
    finally:
        await unix.close()
        await http.close()
        await api.stop()


def test_the_cli_says_when_the_agent_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = node_images.main(tmp_path / "api.sock", "list", dry_run=False, output="text")
    assert code == node_images.EXIT_UNAVAILABLE
    assert "the agent is not running" in capsys.readouterr().err
