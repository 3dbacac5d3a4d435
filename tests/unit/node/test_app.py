"""The composition root on the FakeRuntime: start order, readiness, a stop that leaves every
container running and writes the checkpoint, a failed task that stops the daemon in order."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.errors import TaskEndedError
from agent.node.app import NodeAgent, detect_host_ip
from agent.node.runtime.base import ContainerState
from agent.node.runtime.fake import FakeRuntime
from tests.helpers import free_port
from tests.unit.node.asyncwait import until
from tests.unit.node.masterlink.fakemaster import FakeMaster
from tests.unit.node.masterlink.fakemaster import pod_manifest as fake_pod_manifest
from tests.unit.node.masterlink.rig import FakeNodeApi

IMAGE = "busybox:1"
DEADLINE_S = 10.0


class RecordingNotifier:
    def __init__(self) -> None:
        self.states: list[str] = []

    def ready(self, status: str = "") -> bool:
        self.states.append("READY")
        return True

    def stopping(self) -> bool:
        self.states.append("STOPPING")
        return True

    def watchdog(self) -> bool:
        self.states.append("WATCHDOG")
        return True

    def watchdog_interval_s(self) -> float | None:
        return None


def manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never"}],
        },
    }


def config(tmp_path: Path, **values: Any) -> AgentConfig:
    manifests = tmp_path / "manifests"
    manifests.mkdir(exist_ok=True)
    settings: dict[str, Any] = {
        "node_name": "n1",
        "state_dir": tmp_path / "state",
        "manifest_dir": manifests,
        "health_addr": f"127.0.0.1:{free_port()}",
        "manifest_poll_interval_s": 0.2,
        "relist_interval_s": 0.5,
        **values,
    }
    return AgentConfig(**settings)


def runtime() -> FakeRuntime:
    fake = FakeRuntime("n1")
    fake.add_image(IMAGE, size_bytes=1 << 20)
    return fake


async def get(url: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(fetch)


async def app_containers(fake: FakeRuntime) -> dict[str, ContainerState]:
    return {r.name: r.state for r in await fake.list_containers() if not r.is_sandbox}


async def test_start_order_ready_and_a_stop_that_leaves_pods_running(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (cfg.manifest_dir / "a.json").write_text(json.dumps(manifest("a")))  # type: ignore[operator]
    fake = runtime()
    notifier = RecordingNotifier()
    agent = NodeAgent(cfg, runtime=fake, notifier=notifier, host_ip="127.0.0.1")
    assert [m.name for m in agent.lifecycle.managers] == [
        "local-api",
        "watchdog",
        "runtime",
        "prober",
        "notify",
        "pods",
        "manifest-dir",
        "runtime-watch",
        "image-gc",
        "readiness",
    ]
    task = asyncio.create_task(agent.run())
    await until(lambda: agent.health.ready, "agent ready")
    assert agent.lifecycle.started == tuple(m.name for m in agent.lifecycle.managers)
    status, body = await get(f"http://{cfg.health_addr}/healthz")
    assert (status, body) == (200, "ok")
    before = await app_containers(fake)
    assert list(before.values()) == [ContainerState.RUNNING]

    agent.request_stop()
    await asyncio.wait_for(task, DEADLINE_S)
    assert task.result() is None
    assert await app_containers(fake) == before  # nothing stopped, nothing removed
    assert notifier.states[0] == "WATCHDOG" and "READY" in notifier.states
    assert notifier.states[-1] == "STOPPING"
    assert checkpointed(cfg) == ["a"]


def checkpointed(cfg: AgentConfig) -> list[str]:
    saved = json.loads((cfg.state_dir / "checkpoint.json").read_text())
    return sorted(e["manifest"]["metadata"]["name"] for e in saved["data"]["pods"].values())


async def test_stopped_while_the_runtime_is_down_keeps_the_checkpoint(tmp_path: Path) -> None:
    """Stopped before the pods were restored, the agent knows no pods: it must not write that
    down, or its next start would remove every container as undesired."""
    cfg = config(tmp_path)
    (cfg.manifest_dir / "a.json").write_text(json.dumps(manifest("a")))  # type: ignore[operator]
    fake = runtime()
    first = NodeAgent(cfg, runtime=fake, notifier=RecordingNotifier(), host_ip="127.0.0.1")
    task = asyncio.create_task(first.run())
    await until(lambda: first.health.ready, "agent ready")
    first.request_stop()
    await asyncio.wait_for(task, DEADLINE_S)
    assert checkpointed(cfg) == ["a"]

    fake.set_down()
    second = NodeAgent(cfg, runtime=fake, notifier=RecordingNotifier(), host_ip="127.0.0.1")
    task = asyncio.create_task(second.run())
    await until(lambda: "runtime" in second.lifecycle.started, "waiting for the runtime")
    await until(lambda: "runtime:" in "".join(second.health.problems()), "runtime down")
    second.request_stop()
    await asyncio.wait_for(task, DEADLINE_S)
    assert second.lifecycle.started == ()
    assert checkpointed(cfg) == ["a"]


async def test_an_eternal_loop_that_returns_stops_the_daemon_in_order(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fake = runtime()
    agent = NodeAgent(cfg, runtime=fake, notifier=RecordingNotifier(), host_ip="127.0.0.1")
    ended = asyncio.Event()

    async def events_end() -> None:
        await ended.wait()

    stopped: list[str] = []
    for manager in agent.lifecycle.managers:
        original = manager.stop

        async def stop(name: str = manager.name, original: Any = original) -> None:
            stopped.append(name)
            await original()

        manager.stop = stop  # type: ignore[method-assign]
    watcher = next(m for m in agent.lifecycle.managers if m.name == "runtime-watch")
    watcher._relist_loop = events_end  # type: ignore[attr-defined]
    task = asyncio.create_task(agent.run())
    await until(lambda: agent.health.ready, "agent ready")
    ended.set()
    with pytest.raises(BaseExceptionGroup) as failed:
        await asyncio.wait_for(task, DEADLINE_S)
    assert failed.group_contains(TaskEndedError, match="'relist'")
    assert stopped == [m.name for m in reversed(agent.lifecycle.managers)]


async def test_with_a_master_the_link_starts_after_the_pods_and_stops_before_them(
    tmp_path: Path,
) -> None:
    master = await FakeMaster(tmp_path / "master").start()
    try:
        master.add_pod(fake_pod_manifest("from-master"), notify=False)
        cfg = config(
            tmp_path,
            master=(master.url,),
            ca_cert_hash=(master.pin,),
            node_labels=("zone=a",),
            master_backoff_max_s=1.0,
        )
        fake = runtime()
        node_api = FakeNodeApi()
        agent = NodeAgent(
            cfg,
            runtime=fake,
            notifier=RecordingNotifier(),
            host_ip="127.0.0.1",
            node_api=lambda pods, bridge: node_api,
        )
        names = [m.name for m in agent.lifecycle.managers]
        assert names.index("master-link") > names.index("runtime-watch") > names.index("pods")
        task = asyncio.create_task(agent.run())
        await until(lambda: agent.link is not None and agent.link.status.connected, "linked")
        await until(lambda: agent.health.ready, "ready")
        await until(
            lambda: (
                {p.full_name for p in agent.pods.pods_of_source("api").values()}
                == {"default/from-master"}
            ),
            "the master's pod desired",
        )
        lease = master.record.leases[0]
        assert [c["type"] for c in lease["status"]["conditions"]] == [
            "RuntimeReady",
            "CheckpointWritable",
            "DiskPressure",
        ]
        assert master.record.registrations[0]["labels"] == {"zone": "a"}
        assert node_api.running
        agent.request_stop()
        await asyncio.wait_for(task, DEADLINE_S)
        assert not node_api.running
        assert "from-master" in checkpointed(cfg)
    finally:
        await master.stop()


def test_detect_host_ip_is_an_ipv4_address() -> None:
    assert ipaddress.ip_address(detect_host_ip()).version == 4
