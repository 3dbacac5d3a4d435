"""Waiting for the runtime at boot, and following it: events wake workers, relists catch what
events missed, containers of unknown pods are adopted for removal, the runtime's health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.errors import RuntimeUnavailableError
from agent.manifest import parse_pod
from agent.node.health.state import RuntimeHealth
from agent.node.pods.manager import PodManager
from agent.node.pods.runtime_watch import RuntimeGate, RuntimeWatcher
from agent.node.runtime.base import ContainerSpec
from agent.node.runtime.fake import FakeRuntime
from agent.types import (
    KIND_APP,
    LABEL_CONTAINER,
    LABEL_KIND,
    LABEL_NODE,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
)
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.managerrig import IMAGE, manager_rig
from tests.unit.node.pods.rig import NODE


@dataclass
class Watch:
    runtime: FakeRuntime
    pods: PodManager
    health: RuntimeHealth
    watcher: RuntimeWatcher
    sleeps: list[float]


@asynccontextmanager
async def watching(tmp_path: Path) -> AsyncIterator[Watch]:
    """The pod manager (its own rig) behind the runtime gate, and a watcher not started."""
    async with manager_rig(tmp_path, start=False) as rig:
        health = RuntimeHealth()
        sleeps: list[float] = []

        async def sleep(delay_s: float) -> None:
            sleeps.append(delay_s)
            await asyncio.sleep(0.001)

        watcher = RuntimeWatcher(
            rig.runtime,
            rig.pods,
            health,
            relist_interval_s=3600,
            tasks=rig.supervisor.scope("runtime-watch"),
            sleep=sleep,
        )
        gate = RuntimeGate(rig.runtime, health, sandbox_image="pause:1", sleep=sleep)
        await gate.start()
        await rig.pods.start()
        try:
            yield Watch(rig.runtime, rig.pods, health, watcher, sleeps)
        finally:
            await watcher.stop()
            await gate.stop()


def stray_spec(uid: str) -> ContainerSpec:
    return ContainerSpec(
        name=f"stray-{uid}",
        image=IMAGE,
        labels={
            LABEL_NODE: NODE,
            LABEL_POD_UID: uid,
            LABEL_POD_NAME: "stray",
            LABEL_POD_NAMESPACE: "default",
            LABEL_CONTAINER: "main",
            LABEL_KIND: KIND_APP,
        },
    )


def pod(name: str) -> object:
    return parse_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never"}]},
        },
        source="file:/m/x.yaml",
        node_name=NODE,
    )


async def test_the_gate_waits_for_the_runtime_with_back_off(tmp_path: Path) -> None:
    runtime = FakeRuntime(NODE)
    health = RuntimeHealth()
    runtime.fail("ping", RuntimeUnavailableError("docker: connection refused"), times=6)
    delays: list[float] = []

    async def sleep(delay_s: float) -> None:
        delays.append(delay_s)

    gate = RuntimeGate(runtime, health, sandbox_image="pause:1", sleep=sleep)
    await gate.start()
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert health.up and health.error == ""
    assert await runtime.inspect_image("pause:1") is not None


async def test_orphans_found_at_start_are_removed_once_sources_had_their_say(
    tmp_path: Path,
) -> None:
    async with watching(tmp_path) as w:
        stray = await w.runtime.create_container(stray_spec("uid-stray"))
        await w.runtime.start_container(stray)
        # Found only by a relist: the watcher adopts it for removal.
        await w.watcher.start()
        w.watcher._relist_now.set()
        await until(lambda: w.runtime.calls["remove_container"] >= 1, "stray removed")
        await until(lambda: "uid-stray" not in w.pods.workers, "its teardown worker done")
        assert [r for r in await w.runtime.list_containers() if r.pod_uid == "uid-stray"] == []


async def test_events_wake_workers_and_a_dead_engine_is_health(tmp_path: Path) -> None:
    async with watching(tmp_path) as w:
        await w.watcher.start()
        the_pod = pod("a")
        w.pods.apply_source("file:", [the_pod])  # type: ignore[list-item]
        worker = w.pods.workers[the_pod.uid]  # type: ignore[attr-defined]
        await until(lambda: worker.synced_once.is_set(), "a synced")
        app = next(r for r in await w.runtime.list_containers() if not r.is_sandbox and r.running)
        w.runtime.exit_container(app.id, 1)  # the die event wakes the worker: it books a restart
        await until(lambda: "main" in worker.book.restarts, "worker woken by the event")

        w.runtime.set_down()
        await until(lambda: not w.health.up, "runtime down seen")
        assert w.health.error.startswith("runtime: ")
        w.runtime.set_down(False)
        await until(lambda: w.health.up, "runtime back after a relist")


async def test_a_relist_wakes_changed_pods_and_keeps_its_view_when_the_runtime_fails(
    tmp_path: Path,
) -> None:
    async with watching(tmp_path) as w:
        the_pod = pod("b")
        w.pods.apply_source("file:", [the_pod])  # type: ignore[list-item]
        worker = w.pods.workers[the_pod.uid]  # type: ignore[attr-defined]
        await until(lambda: worker.synced_once.is_set(), "b synced")
        seen = await w.watcher.relist({})
        assert the_pod.uid in seen  # type: ignore[attr-defined]
        assert await w.watcher.relist(seen) == seen
        w.runtime.fail("list_pod_uids", RuntimeUnavailableError("gone"))
        assert await w.watcher.relist(seen) is seen
        assert not w.health.up
        assert await w.watcher.relist(seen) == seen
        assert w.health.up


async def test_an_event_of_a_pod_without_a_worker_makes_a_relist_remove_it(
    tmp_path: Path,
) -> None:
    async with watching(tmp_path) as w:
        await w.watcher.start()
        await until(lambda: w.runtime.calls["events"] == 1, "the watcher follows events")
        stray = await w.runtime.create_container(stray_spec("uid-late"))  # after the start
        await w.runtime.start_container(stray)
        await until(lambda: w.runtime.calls["remove_container"] >= 1, "stray removed")
        await until(lambda: "uid-late" not in w.pods.workers, "its teardown worker done")
        assert w.runtime.calls["list_pod_uids"] >= 1  # found by the relist the event asked for


async def test_an_exec_wakes_no_worker(tmp_path: Path) -> None:
    """A probe's or nodectl's exec changes no container state: its events are not a reason to
    sync the pod (a relist and an inspect of each of its containers)."""
    async with watching(tmp_path) as w:
        await w.watcher.start()
        the_pod = pod("a")
        w.pods.apply_source("file:", [the_pod])  # type: ignore[list-item]
        worker = w.pods.workers[the_pod.uid]  # type: ignore[attr-defined]
        await until(lambda: worker.synced_once.is_set(), "a synced")
        # The sync's own start events may still be on their way to the watcher under load:
        # count only what comes after them.
        await until(lambda: w.runtime.events_pending == 0, "the sync's events taken")
        woken: list[str] = []
        wake = w.pods.wake

        def recording_wake(uid: str) -> bool:
            woken.append(uid)
            return wake(uid)

        w.pods.wake = recording_wake  # type: ignore[method-assign]
        app = next(r for r in await w.runtime.list_containers() if not r.is_sandbox and r.running)
        session = await w.runtime.exec_start(app.id, ["true"], stdin=False, tty=False)
        assert await session.exit_code(30.0) is not None  # no event: execs are not lifecycle
        w.runtime.exit_container(app.id, 1)  # then a die, after them in the stream
        await until(lambda: "main" in worker.book.restarts, "the die event's wake-up")
        assert woken == [the_pod.uid]  # type: ignore[attr-defined]
