"""The pod worker with the prober, on the FakeRuntime and one fake clock: readiness drives the
containers' ``ready`` and the pod's Ready and ContainersReady conditions both ways; a liveness
failure kills the container (events Unhealthy, then Killing) and the restart policy restarts
it with back-off; a startup probe holds liveness and readiness off."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.aio.tasks import Supervisor
from agent.node.handlers import HandlerResult
from agent.node.pods.worker import PodWorker
from agent.node.probes import prober as prober_module
from agent.node.probes.prober import ProberManager
from agent.node.runtime.fake import Script
from agent.types import Pod
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.builders import UID, container, make_pod
from tests.unit.node.pods.rig import HOST_IP, Rig
from tests.unit.node.probes.proberrig import FirstTick, clock_sleep


@dataclasses.dataclass
class ProbedRig:
    rig: Rig
    prober: ProberManager
    workers: dict[str, PodWorker]

    async def start(self, pod: Pod) -> PodWorker:
        worker = self.rig.spawn(pod, deps=dataclasses.replace(self.rig.deps, prober=self.prober))
        self.workers[pod.uid] = worker
        await self.rig.wait_syncs(worker, 1)
        await self.settle()
        return worker

    async def settle(self) -> None:
        """Until every probe worker sleeps on the clock (and every woken sync has ended)."""
        before = -1
        while before != self.prober.probes_run:
            before = self.prober.probes_run
            for _ in range(20):
                await asyncio.sleep(0)

    async def tick(self, seconds: float) -> None:
        self.rig.clock.advance(seconds)
        await self.settle()

    def answer(self, command: str, code: int) -> None:
        self.rig.runtime.script_command([command], Script(exit_code=code))


@asynccontextmanager
async def probed_rig(tmp_path: Path) -> AsyncIterator[ProbedRig]:
    rig = Rig(tmp_path / "state")
    rig.runtime.add_image("img:1")
    workers: dict[str, PodWorker] = {}
    try:
        async with Supervisor() as supervisor:
            prober = ProberManager(
                runtime=rig.runtime,
                events=rig.events,
                clock=rig.clock,
                tasks=supervisor.scope("prober"),
                on_change=lambda uid: workers[uid].wake(),
                sleep=clock_sleep(rig.clock),
                rng=FirstTick(),
            )
            await prober.start()
            try:
                yield ProbedRig(rig, prober, workers)
            finally:
                await prober.stop()
    finally:
        await rig.close()


def status_of(worker: PodWorker) -> dict[str, Any]:
    [status] = worker.status["containerStatuses"]
    return dict(status)


def conditions(worker: PodWorker) -> dict[str, str]:
    return {c["type"]: c["status"] for c in worker.status["conditions"]}


def exec_probe(command: str, **timing: Any) -> dict[str, Any]:
    return {"exec": {"command": [command]}, **timing}


async def test_readiness_drives_ready_and_the_pod_conditions_both_ways(tmp_path: Path) -> None:
    async with probed_rig(tmp_path) as p:
        p.answer("ready?", 0)
        pod = make_pod(
            container(readinessProbe=exec_probe("ready?", periodSeconds=5, failureThreshold=1))
        )
        worker = await p.start(pod)
        # Running, but not ready before the probe passed.
        assert "running" in status_of(worker)["state"]
        assert (status_of(worker)["ready"], status_of(worker)["started"]) == (False, True)
        assert conditions(worker)["Ready"] == conditions(worker)["ContainersReady"] == "False"

        await p.tick(0)
        await until(lambda: status_of(worker)["ready"], "the container to be ready")
        assert conditions(worker)["Ready"] == conditions(worker)["ContainersReady"] == "True"

        p.answer("ready?", 1)
        await p.tick(5)
        await until(lambda: not status_of(worker)["ready"], "the container to be unready")
        assert conditions(worker)["Ready"] == conditions(worker)["ContainersReady"] == "False"
        assert "running" in status_of(worker)["state"]  # readiness never restarts
        assert status_of(worker)["restartCount"] == 0

        p.answer("ready?", 0)
        await p.tick(5)
        await until(lambda: conditions(worker)["Ready"] == "True", "the pod to be Ready again")


async def test_liveness_failure_kills_and_the_policy_restarts_with_back_off(
    tmp_path: Path,
) -> None:
    async with probed_rig(tmp_path) as p:
        p.answer("alive?", 1)
        probe = exec_probe(
            "alive?", periodSeconds=5, failureThreshold=2, terminationGracePeriodSeconds=3
        )
        worker = await p.start(make_pod(container(livenessProbe=probe)))
        first = p.rig.runtime.one(UID, "c")
        await p.tick(0)
        assert p.rig.runtime.one(UID, "c").running  # one failure of two
        await p.tick(5)
        await until(
            lambda: (
                status_of(worker)["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
            ),
            "the killed container to wait for its restart",
        )
        assert ("stop", first.name, "3") in p.rig.runtime.trace  # the probe's grace period
        reasons = [e["reason"] for e in p.rig.events.list()]
        assert reasons.index("Unhealthy") < reasons.index("Killing")
        killing = [e for e in p.rig.events.list() if e["reason"] == "Killing"]
        assert killing[0]["message"] == "Container c failed liveness probe, will be restarted"
        assert p.prober.workers == 0  # the stopped container's probe is gone
        assert p.rig.clock.pending_s() == [10.0]  # back-off: the first restart waits 10 s

        await p.tick(10)
        await until(lambda: p.rig.runtime.one(UID, "c").attempt == 1, "the restart")
        assert status_of(worker)["restartCount"] == 1
        assert p.prober.workers == 1  # the new container is probed afresh
        await p.tick(0)
        await p.tick(5)
        await until(
            lambda: (
                "back-off 20s" in status_of(worker)["state"].get("waiting", {}).get("message", "")
            ),
            "the second kill's back-off to double",
        )


async def test_never_restart_policy_leaves_a_killed_container_terminated(tmp_path: Path) -> None:
    async with probed_rig(tmp_path) as p:
        p.answer("alive?", 1)
        pod = make_pod(
            container(livenessProbe=exec_probe("alive?", failureThreshold=1)),
            restart_policy="Never",
        )
        worker = await p.start(pod)
        await p.tick(0)
        await until(lambda: "terminated" in status_of(worker)["state"], "the kill")
        assert worker.status["phase"] == "Failed"
        assert p.rig.runtime.one(UID, "c").attempt == 0


async def test_a_startup_probe_holds_liveness_off_until_it_passes(tmp_path: Path) -> None:
    async with probed_rig(tmp_path) as p:
        p.answer("started?", 1)
        p.answer("alive?", 1)
        pod = make_pod(
            container(
                startupProbe=exec_probe("started?", periodSeconds=1, failureThreshold=100),
                livenessProbe=exec_probe("alive?", periodSeconds=1, failureThreshold=1),
            )
        )
        worker = await p.start(pod)
        for _ in range(10):
            await p.tick(1)
        assert p.rig.runtime.one(UID, "c").running
        assert (status_of(worker)["started"], status_of(worker)["ready"]) == (False, False)

        p.answer("started?", 0)
        await p.tick(1)
        await until(lambda: status_of(worker)["started"], "the container to count as started")
        assert status_of(worker)["ready"] is True  # no readiness probe: ready once started
        await p.tick(0)  # liveness's first probe, failing
        await until(lambda: not p.rig.runtime.one(UID, "c").running, "the liveness kill")


async def test_removing_the_pod_cancels_its_probes(tmp_path: Path) -> None:
    async with probed_rig(tmp_path) as p:
        p.answer("ready?", 0)
        worker = await p.start(make_pod(container(readinessProbe=exec_probe("ready?"))))
        assert p.prober.workers == 1
        worker.terminate()
        await p.rig.finished(worker)
        await p.settle()
        assert p.prober.workers == 0


@pytest.mark.parametrize(("host_network", "address"), [(False, "10.88.0."), (True, HOST_IP)])
async def test_network_probes_go_to_the_pod_ip_or_the_node_address_on_the_host_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host_network: bool, address: str
) -> None:
    asked: list[tuple[str, int]] = []

    async def tcp_socket(host: str, port: int, timeout_s: float, sleep: object) -> HandlerResult:
        asked.append((host, port))
        return HandlerResult(True)

    monkeypatch.setattr(prober_module, "tcp_socket", tcp_socket)
    async with probed_rig(tmp_path) as p:
        probe = {"tcpSocket": {"port": "http"}, "periodSeconds": 5}
        ports = [{"name": "http", "containerPort": 8080}]
        extra: dict[str, Any] = {"hostNetwork": True} if host_network else {}
        worker = await p.start(make_pod(container(ports=ports, readinessProbe=probe), **extra))
        await p.tick(0)
        await until(lambda: status_of(worker)["ready"], "the container to be ready")
        [(host, port)] = asked
        assert host.startswith(address) and port == 8080
        assert host == worker.status["podIP"]


async def test_a_liveness_kill_runs_the_pre_stop_hook_first(tmp_path: Path) -> None:
    async with probed_rig(tmp_path) as p:
        p.answer("alive?", 1)
        p.answer("drain", 3)  # a preStop that fails: its event shows that it ran, and when
        pod = make_pod(
            container(
                livenessProbe=exec_probe("alive?", failureThreshold=1),
                lifecycle={"preStop": {"exec": {"command": ["drain"]}}},
            )
        )
        await p.start(pod)
        await p.tick(0)
        await until(lambda: not p.rig.runtime.one(UID, "c").running, "the liveness kill")
        reasons = [e["reason"] for e in p.rig.events.list()]
        assert reasons.index("Unhealthy") < reasons.index("Killing")
        assert reasons.index("Killing") < reasons.index("FailedPreStopHook")


async def test_on_failure_restarts_a_liveness_killed_container_that_exits_0(
    tmp_path: Path,
) -> None:
    """Kubernetes restarts a container it killed for its liveness probe under every policy
    but Never, whatever its exit code: one that traps SIGTERM and exits 0 is still
    unhealthy. The kill is booked, so the decision survives an agent restart."""
    async with probed_rig(tmp_path) as p:
        p.answer("alive?", 1)
        p.rig.runtime.script_command(["serve"], Script(exit_code=None, stop_exit_code=0))
        pod = make_pod(
            container(command=["serve"], livenessProbe=exec_probe("alive?", failureThreshold=1)),
            restart_policy="OnFailure",
        )
        worker = await p.start(pod)
        await p.tick(0)
        await until(
            lambda: (
                status_of(worker)["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
            ),
            "the killed container to wait for its restart",
        )
        assert p.rig.runtime.one(UID, "c").exit_code == 0
        assert worker.book.killed_unhealthy == {"c": 0}
        assert worker.status["phase"] == "Running"  # not Succeeded: it will run again
        await p.tick(10)
        await until(lambda: p.rig.runtime.one(UID, "c").attempt == 1, "the restart")


async def test_on_failure_leaves_a_container_that_exits_0_on_its_own(tmp_path: Path) -> None:
    """The booked kill is of one attempt: a later attempt that ends 0 by itself completes."""
    async with probed_rig(tmp_path) as p:
        p.rig.runtime.script_command(["job"], Script(exit_code=0))
        worker = await p.start(make_pod(container(command=["job"]), restart_policy="OnFailure"))
        await until(lambda: worker.status["phase"] == "Succeeded", "the pod to succeed")
        assert worker.book.killed_unhealthy == {}
        assert p.rig.runtime.one(UID, "c").attempt == 0
