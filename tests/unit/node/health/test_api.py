"""The local read-only API (``agent.node.health.api.LocalApi``) on loopback: ``/healthz`` with
its reasons, ``/v1/pods``, ``/v1/events`` and ``/metrics`` from the real pod manager on the
FakeRuntime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.aio.metrics import CONTENT_TYPE
from agent.node.health.api import LocalApi
from agent.node.pods.manager import PodManager
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.managerrig import ManagerRig, manager_rig, static_pod
from tests.unit.node.pods.rig import NODE
from tests.unit.node.streaming.rig import HOST, free_port

pytestmark = pytest.mark.usefixtures("blockbuster")


@dataclass
class FakeHealth:
    reasons: list[str] = field(default_factory=list)
    runtime_up: bool = True
    runtime_errors: int = 0

    def problems(self) -> list[str]:
        return list(self.reasons)


@dataclass
class Local:
    pods: ManagerRig
    health: FakeHealth
    http: aiohttp.ClientSession

    @property
    def manager(self) -> PodManager:
        return self.pods.pods


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[Local]:
    async with manager_rig(tmp_path) as pods:
        health = FakeHealth()
        port = await pods.bridge.run(free_port)
        api = LocalApi(
            pods=pods.pods,
            events=pods.events,
            metrics=pods.metrics,
            health=health,
            node_name=NODE,
            host=HOST,
            port=port,
            run_blocking=pods.bridge.run,
        )
        await api.start()
        try:
            async with aiohttp.ClientSession(f"http://{HOST}:{port}") as http:
                yield Local(pods, health, http)
        finally:
            await api.stop()
            await api.stop()  # a second stop is harmless


async def test_healthz_is_ok_or_503_with_one_reason_per_line(local: Local) -> None:
    async with local.http.get("/healthz") as resp:
        assert (resp.status, await resp.text()) == (200, "ok")
    local.health.reasons = ["runtime: down", "checkpoint: EROFS"]
    async with local.http.get("/healthz") as resp:
        assert (resp.status, await resp.text()) == (503, "runtime: down\ncheckpoint: EROFS\n")


async def test_pods_and_events(local: Local) -> None:
    pod = static_pod("web")
    await local.pods.apply(pod)
    async with local.http.get("/v1/pods") as resp:
        body = await resp.json()
    assert (body["kind"], body["metadata"]) == ("PodList", {"nodeName": NODE})
    (item,) = body["items"]
    assert item["metadata"]["name"] == "web" and item["status"]["phase"] == "Running"
    async with local.http.get("/v1/events") as resp:
        events = await resp.json()
    assert events["kind"] == "EventList"
    assert {e["reason"] for e in events["items"]} >= {"Started"}


async def test_metrics_count_pods_by_phase_restarts_and_runtime_health(local: Local) -> None:
    web, done = static_pod("web"), static_pod("done", restartPolicy="Never")
    await local.pods.apply(web, done)
    app = next(r for r in await local.pods.app_records(web) if r.running)
    local.pods.runtime.exit_container(app.id, 1)
    worker = local.manager.workers[web.uid]
    worker.wake()
    await until(lambda: "main" in worker.book.restarts, "the exit seen")
    local.pods.clock.advance(10.0)
    await until(lambda: worker.restart_counts() == {"main": 1}, "restarted once")
    ended = next(r for r in await local.pods.app_records(done) if r.running)
    local.pods.runtime.exit_container(ended.id, 0)
    local.manager.workers[done.uid].wake()
    await until(lambda: local.manager.workers[done.uid].status["phase"] == "Succeeded", "done")
    local.health.runtime_up, local.health.runtime_errors = False, 4

    async with local.http.get("/metrics") as resp:
        assert resp.headers["content-type"] == CONTENT_TYPE
        text = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("node_agent_pods", (("phase", "Running"),))] == 1
    assert samples[("node_agent_pods", (("phase", "Succeeded"),))] == 1
    assert samples[("node_agent_pods", (("phase", "Failed"),))] == 0
    restarts = (("container", "main"), ("namespace", "default"), ("pod", "web"))
    assert samples[("node_agent_container_restarts", restarts)] == 1
    assert samples[("node_agent_runtime_up", ())] == 0
    assert samples[("node_agent_runtime_errors_total", ())] == 4
