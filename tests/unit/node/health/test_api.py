"""The local health port and read-only API (``agent.node.health.api.LocalApi``): ``/healthz``
with its reasons and ``/metrics`` on the loopback port, which never shows a pod's spec;
``/v1/pods`` and ``/v1/events`` only on the private Unix socket; from the real pod manager on
the FakeRuntime."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.aio.metrics import CONTENT_TYPE
from agent.errors import ConfigError
from agent.node.health.api import LocalApi
from agent.node.pods.manager import PodManager
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.managerrig import IMAGE, ManagerRig, manager_rig, static_pod
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
    http: aiohttp.ClientSession  # the loopback port
    unix: aiohttp.ClientSession  # the socket
    api: LocalApi

    @property
    def manager(self) -> PodManager:
        return self.pods.pods


def local_api(pods: ManagerRig, health: FakeHealth, port: int, socket_path: Path) -> LocalApi:
    return LocalApi(
        pods=pods.pods,
        events=pods.events,
        metrics=pods.metrics,
        health=health,
        node_name=NODE,
        host=HOST,
        port=port,
        socket_path=socket_path,
        bridge=pods.bridge,
    )


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[Local]:
    async with manager_rig(tmp_path) as pods:
        health = FakeHealth()
        port = await pods.bridge.run(free_port)
        api = local_api(pods, health, port, tmp_path / "api.sock")
        await api.start()
        try:
            async with (
                aiohttp.ClientSession(f"http://{HOST}:{port}") as http,
                aiohttp.ClientSession(
                    "http://local", connector=aiohttp.UnixConnector(str(api.socket_path))
                ) as unix,
            ):
                yield Local(pods, health, http, unix, api)
        finally:
            await api.stop()
            await api.stop()  # a second stop is harmless


async def test_healthz_is_ok_or_503_with_one_reason_per_line(local: Local) -> None:
    for http in (local.http, local.unix):
        async with http.get("/healthz") as resp:
            assert (resp.status, await resp.text()) == (200, "ok")
    local.health.reasons = ["runtime: down", "checkpoint: EROFS"]
    async with local.http.get("/healthz") as resp:
        assert (resp.status, await resp.text()) == (503, "runtime: down\ncheckpoint: EROFS\n")


SECRET = "s3cr3t-env-value"


async def test_the_port_serves_no_pod_spec_the_socket_does(local: Local) -> None:
    env = [{"name": "DB_PASSWORD", "value": SECRET}]
    await local.pods.apply(
        static_pod("web", {"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "env": env})
    )
    for path in ("/v1/pods", "/v1/events", "/v1/pods/", "/pods", "/v1/namespaces/default/pods"):
        async with local.http.get(path) as resp:
            assert resp.status == 404, path
            assert SECRET not in await resp.text()
    async with local.http.get("/metrics") as resp:
        text = await resp.text()
    assert resp.status == 200 and 'pod="web"' in text
    assert SECRET not in text and "DB_PASSWORD" not in text
    async with local.unix.get("/v1/pods") as resp:
        assert resp.status == 200
        assert SECRET in await resp.text()  # root's socket: the same read-only API as before


async def test_the_socket_is_the_owners_only_from_its_first_moment(local: Local) -> None:
    st = await local.pods.bridge.run(os.stat, local.api.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def stale_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # closed without unlink: what a killed agent leaves


async def test_a_stale_socket_is_replaced_and_the_socket_removed_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    async with manager_rig(tmp_path / "state") as pods:
        await pods.bridge.run(stale_socket, path)
        port = await pods.bridge.run(free_port)
        api = local_api(pods, FakeHealth(), port, path)
        await api.start()
        try:
            connector = aiohttp.UnixConnector(str(path))
            async with (
                aiohttp.ClientSession("http://local", connector=connector) as unix,
                unix.get("/v1/pods") as resp,
            ):
                assert resp.status == 200
        finally:
            await api.stop()
        assert not await pods.bridge.run(os.path.lexists, path)


async def test_a_file_in_the_sockets_place_is_kept_and_the_start_fails(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    async with manager_rig(tmp_path / "state") as pods:
        await pods.bridge.run(path.write_text, "not mine")
        port = await pods.bridge.run(free_port)
        api = local_api(pods, FakeHealth(), port, path)
        with pytest.raises(ConfigError, match=r"api\.sock exists and is not a socket"):
            await api.start()
        await api.stop()
        assert await pods.bridge.run(path.read_text) == "not mine"


async def test_pods_and_events(local: Local) -> None:
    pod = static_pod("web")
    await local.pods.apply(pod)
    async with local.unix.get("/v1/pods") as resp:
        body = await resp.json()
    assert (body["kind"], body["metadata"]) == ("PodList", {"nodeName": NODE})
    (item,) = body["items"]
    assert item["metadata"]["name"] == "web" and item["status"]["phase"] == "Running"
    async with local.unix.get("/v1/events") as resp:
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
