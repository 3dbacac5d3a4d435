"""The pod worker with sd_notify containers (issue 15 item 5), on the FakeRuntime with the fake
clock, the FakeNotify gate and the FakeProber: sockets before containers, READY=1 gates started/ready and the
probes, a stale attempt's word does not count, a missed watchdog restarts with back-off, the
pod's sockets close with it; and the spec a notify container gets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockBuster

from agent.manifest import parse_pod
from agent.node.notify.fake import FakeNotify
from agent.node.pods.specs import app_spec
from agent.node.pods.worker import PodWorker
from agent.node.probes.fake import FakeProber
from agent.node.runtime.base import Mount
from agent.types import Pod
from tests.unit.node.pods.builders import UID, make_ctx
from tests.unit.node.pods.rig import Rig


def notify_pod(restart_policy: str = "Always") -> Pod:
    return parse_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "uid": UID,
                "annotations": {
                    "node-agent.io/notify": "web",
                    "node-agent.io/notify-watchdog-seconds": "10",
                },
            },
            "spec": {
                "restartPolicy": restart_policy,
                "containers": [
                    {"name": "web", "image": "img:1"},
                    {"name": "plain", "image": "img:1"},
                ],
            },
        },
        source="api",
        node_name="n1",
    )


@pytest.fixture
async def rig(tmp_path: Path, blockbuster: BlockBuster) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "state")
    rig.runtime.add_image("img:1")
    yield rig
    await rig.close()


@pytest.fixture
def notify(rig: Rig) -> FakeNotify:
    return FakeNotify(clock=rig.clock, timers=rig.clock)


@pytest.fixture
def prober(rig: Rig) -> FakeProber:
    return FakeProber(clock=rig.clock, timers=rig.clock, on_change=lambda uid: None)


async def start(rig: Rig, notify: FakeNotify, prober: FakeProber, pod: Pod) -> PodWorker:
    deps = replace(rig.deps, notify=notify, prober=prober)
    worker = rig.spawn(pod, deps=deps)
    await rig.wait_syncs(worker, 1)
    return worker


def probed(prober: FakeProber) -> set[str]:
    """The containers the worker last told the prober run (so that they get probed)."""
    return set(prober.synced.get(UID, {}))


def statuses(worker: PodWorker) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in worker.status["containerStatuses"]}


def conditions(worker: PodWorker) -> dict[str, str]:
    return {c["type"]: c["status"] for c in worker.status["conditions"]}


async def test_sockets_before_containers_and_ready_only_after_ready_1(
    rig: Rig, notify: FakeNotify, prober: FakeProber
) -> None:
    worker = await start(rig, notify, prober, notify_pod())
    # The sockets were synced before any container was created; each attempt begins unready.
    assert notify.calls[:3] == [("sync", UID), ("begin", "web", "0"), ("begin", "plain", "0")]
    web, plain = statuses(worker)["web"], statuses(worker)["plain"]
    assert "running" in web["state"]
    assert (web["started"], web["ready"]) == (False, False)
    assert (plain["started"], plain["ready"]) == (True, True)
    assert conditions(worker)["Ready"] == "False"
    assert worker.status["phase"] == "Running"
    # READY=1 is the startup gate: no probe runs on web before it.
    assert probed(prober) == {"plain"}

    await rig.step(worker, lambda: notify.send(UID, "web", b"READY=1\nSTATUS=serving \x1b"))
    web = statuses(worker)["web"]
    assert (web["started"], web["ready"]) == (True, True)
    assert web["state"]["running"]["message"] == "serving \\x1b"  # STATUS=, as the hub escaped it
    assert "message" not in statuses(worker)["plain"]["state"]["running"]
    assert conditions(worker) == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert probed(prober) == {"web", "plain"}

    # RELOADING=1: ready ends, started stays.
    await rig.step(worker, lambda: notify.send(UID, "web", b"RELOADING=1"))
    web = statuses(worker)["web"]
    assert (web["started"], web["ready"]) == (True, False)
    assert conditions(worker)["Ready"] == "False"


async def test_the_word_of_another_attempt_does_not_count(
    rig: Rig, notify: FakeNotify, prober: FakeProber
) -> None:
    worker = await start(rig, notify, prober, notify_pod())
    # The gate's word is of attempt 7 (e.g. a state file from before), not of the running 0.
    notify.begin(UID, "web", 7)
    await rig.step(worker, lambda: notify.send(UID, "web", b"READY=1"))
    said = notify.view(UID, "web")
    assert said is not None and (said.attempt, said.ready) == (7, True)
    assert statuses(worker)["web"]["ready"] is False
    assert probed(prober) == {"plain"}


async def test_missed_watchdog_kills_and_restarts_with_back_off(
    rig: Rig, notify: FakeNotify, prober: FakeProber
) -> None:
    worker = await start(rig, notify, prober, notify_pod())
    await rig.step(worker, lambda: notify.send(UID, "web", b"READY=1"))
    first = rig.runtime.one(UID, "web")
    assert first.running

    await rig.step(worker, lambda: rig.clock.advance(10))  # no WATCHDOG=1 for the interval
    assert not rig.runtime.one(UID, "web").running  # stopped, not yet restarted
    events = [(e["reason"], e["message"]) for e in rig.events.list()]
    assert ("Unhealthy", "container web: sd_notify watchdog: no WATCHDOG=1 for 10s") in events
    assert any(reason == "Killing" for reason, _ in events)
    await rig.step(worker)  # the exit is seen: back-off before the restart
    web = statuses(worker)["web"]
    assert web["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert ("begin", "web", "1") not in notify.calls

    await rig.advance(worker, rig.backoff.initial_s)
    second = rig.runtime.one(UID, "web")
    assert second.running and second.attempt == 1
    assert ("begin", "web", "1") in notify.calls  # the new attempt must say READY=1 again
    web = statuses(worker)["web"]
    assert (web["ready"], web["restartCount"]) == (False, 1)
    assert rig.runtime.one(UID, "plain").attempt == 0  # the other container was left alone


async def test_the_pods_sockets_close_with_it(
    rig: Rig, notify: FakeNotify, prober: FakeProber
) -> None:
    worker = await start(rig, notify, prober, notify_pod())
    worker.terminate()
    await rig.finished(worker)
    assert notify.calls[-1] == ("close", UID)


def test_a_notify_container_gets_its_socket_dir_and_environment() -> None:
    ctx = make_ctx(Path("/state"))
    pod = notify_pod()
    web = app_spec(ctx, pod, pod.spec.containers[0], 0, "sb", "")
    assert Mount(f"/state/pods/{UID}/notify/web", "/run/node-agent/notify", True) in web.mounts
    assert web.env["NOTIFY_SOCKET"] == "/run/node-agent/notify/notify.sock"
    assert web.env["WATCHDOG_USEC"] == "10000000"
    plain = app_spec(ctx, pod, pod.spec.containers[1], 0, "sb", "")
    assert not plain.mounts
    assert "NOTIFY_SOCKET" not in plain.env and "WATCHDOG_USEC" not in plain.env
