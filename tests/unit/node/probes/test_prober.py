"""The prober manager on the FakeRuntime and a fake clock: every verdict and transition."""

from __future__ import annotations

import random

import pytest

from agent.errors import RuntimeUnavailableError
from agent.node.handlers import HandlerResult
from agent.node.probes import prober as prober_module
from agent.node.probes.base import UNPROBED, ProbeFailure
from agent.types import ProbeKind
from tests.unit.node.probes.proberrig import exec_probe, probed_pod, prober_rig


async def test_readiness_follows_its_probe_both_ways() -> None:
    async with prober_rig() as rig:
        rig.runtime.answer("ready?", 1)
        pod = probed_pod(readinessProbe=exec_probe("ready?", failureThreshold=2))
        record = (await rig.run(pod))["c"]
        assert rig.state(pod, record).ready is False  # not ready until the probe passes
        assert rig.state(pod, record).started is True

        await rig.advance(0)
        assert rig.state(pod, record).ready is False
        rig.runtime.answer("ready?", 0)
        await rig.advance(10)
        assert rig.state(pod, record).ready is True
        assert rig.changes == [pod.uid]

        rig.runtime.answer("ready?", 1)
        await rig.advance(10)
        assert rig.state(pod, record).ready is True  # one failure of two
        await rig.advance(10)
        assert rig.state(pod, record).ready is False
        assert rig.changes == [pod.uid, pod.uid]
        rig.runtime.answer("ready?", 0)
        await rig.advance(10)
        assert rig.state(pod, record).ready is True
        assert rig.state(pod, record).failure is None  # readiness never kills


async def test_readiness_needs_success_threshold_passes_in_a_row() -> None:
    async with prober_rig() as rig:
        rig.runtime.answer("ready?", 0)
        pod = probed_pod(readinessProbe=exec_probe("ready?", successThreshold=3, periodSeconds=5))
        record = (await rig.run(pod))["c"]
        for _ in range(2):
            await rig.advance(5)
            assert rig.state(pod, record).ready is False
        await rig.advance(5)
        assert rig.state(pod, record).ready is True


async def test_liveness_failure_reaches_its_threshold_then_the_worker_ends() -> None:
    async with prober_rig() as rig:
        rig.runtime.answer("alive?", 0)
        pod = probed_pod(
            livenessProbe=exec_probe(
                "alive?", periodSeconds=3, failureThreshold=3, terminationGracePeriodSeconds=7
            )
        )
        record = (await rig.run(pod))["c"]
        assert rig.state(pod, record).ready is True  # no readiness probe: ready once started
        await rig.advance(0)
        rig.runtime.answer("alive?", 1)
        await rig.advance(3)
        await rig.advance(3)
        assert rig.state(pod, record).failure is None
        assert rig.unhealthy() == ["Liveness probe failed: command 'alive?' exited with 1: said 1"]
        await rig.advance(3)
        assert rig.state(pod, record).failure == ProbeFailure(
            ProbeKind.LIVENESS, "command 'alive?' exited with 1: said 1", 7
        )
        assert rig.changes == [pod.uid]
        # Recorded when the failures start and when they reach the threshold, not each time:
        # the same event twice, so one event counted twice (aggregated as Kubernetes does).
        assert [e["count"] for e in rig.events.list() if e["reason"] == "Unhealthy"] == [2]
        await rig.settle()
        assert rig.prober.workers == 0  # on hold until the container is replaced
        runs = rig.runtime.ran("alive?")
        await rig.advance(3)
        assert rig.runtime.ran("alive?") == runs


async def test_a_startup_probe_holds_liveness_and_readiness_off() -> None:
    async with prober_rig() as rig:
        rig.runtime.answer("started?", 1)
        rig.runtime.answer("alive?", 1)
        rig.runtime.answer("ready?", 0)
        pod = probed_pod(
            startupProbe=exec_probe("started?", periodSeconds=2, failureThreshold=10),
            livenessProbe=exec_probe("alive?", periodSeconds=2, failureThreshold=1),
            readinessProbe=exec_probe("ready?", periodSeconds=2),
        )
        record = (await rig.run(pod))["c"]
        for _ in range(5):
            await rig.advance(2)
        state = rig.state(pod, record)
        assert (state.started, state.ready, state.failure) == (False, False, None)
        assert rig.runtime.ran("alive?") == rig.runtime.ran("ready?") == 0
        assert rig.runtime.ran("started?") == 5

        rig.runtime.answer("started?", 0)
        await rig.advance(2)
        assert rig.state(pod, record).started is True
        assert rig.state(pod, record).ready is False  # readiness not probed yet
        await rig.advance(0)  # the liveness and readiness workers' first tick
        assert rig.runtime.ran("alive?") == rig.runtime.ran("ready?") == 1
        state = rig.state(pod, record)
        assert state.ready is True
        assert state.failure is not None and state.failure.kind is ProbeKind.LIVENESS
        await rig.advance(2)
        assert rig.runtime.ran("started?") == 6  # the startup worker ended when it passed


async def test_a_startup_probe_that_never_passes_fails_the_container() -> None:
    async with prober_rig() as rig:
        rig.runtime.answer("started?", 1)
        pod = probed_pod(startupProbe=exec_probe("started?", periodSeconds=1, failureThreshold=2))
        record = (await rig.run(pod))["c"]
        await rig.advance(0)
        await rig.advance(1)
        failure = rig.state(pod, record).failure
        assert failure is not None and failure.kind is ProbeKind.STARTUP
        assert failure.grace_s is None  # the pod's
        assert rig.unhealthy()[0].startswith("Startup probe failed: ")


async def test_workers_are_cancelled_when_the_container_stops_or_the_pod_goes() -> None:
    async with prober_rig() as rig:
        rig.runtime.answer("ready?", 0)
        pod = probed_pod(readinessProbe=exec_probe("ready?"), livenessProbe=exec_probe("ready?"))
        record = (await rig.run(pod))["c"]
        assert rig.prober.workers == 2
        rig.prober.sync_pod(pod, {}, "127.0.0.1")  # the container is no longer running
        await rig.settle()
        assert rig.prober.workers == 0
        assert rig.state(pod, record) == UNPROBED
        assert rig.clock.pending_s() == []

        other = probed_pod(uid="u2", name="other", readinessProbe=exec_probe("ready?"))
        await rig.run(other)
        assert rig.prober.workers == 1
        rig.prober.forget_pod(other.uid)
        await rig.settle()
        assert rig.prober.workers == 0


async def test_a_restarted_container_starts_over_with_new_workers() -> None:
    async with prober_rig() as rig:
        rig.runtime.answer("ready?", 0)
        pod = probed_pod(readinessProbe=exec_probe("ready?"))
        first = (await rig.run(pod))["c"]
        await rig.advance(0)
        assert rig.state(pod, first).ready is True
        rig.runtime.exit_container(first.id, 1)
        rig.prober.sync_pod(pod, {}, "127.0.0.1")
        second = await rig.run(pod)  # a new container of the pod: a new id, a fresh verdict
        assert rig.state(pod, second["c"]).ready is False
        assert rig.state(pod, first) == UNPROBED


async def test_containers_without_probes_cost_no_worker() -> None:
    async with prober_rig() as rig:
        pod = probed_pod()
        record = (await rig.run(pod))["c"]
        assert rig.prober.workers == 0
        assert rig.state(pod, record) == UNPROBED


async def test_an_unavailable_runtime_counts_neither_way() -> None:
    async with prober_rig() as rig:
        rig.runtime.answer("alive?", 0)
        pod = probed_pod(livenessProbe=exec_probe("alive?", failureThreshold=1))
        record = (await rig.run(pod))["c"]
        rig.runtime.fail("exec_start", RuntimeUnavailableError("docker is down"), times=None)
        for _ in range(5):
            await rig.advance(10)
        assert rig.state(pod, record).failure is None
        assert rig.unhealthy() == []


async def test_first_probes_are_spread_over_the_period_after_the_initial_delay() -> None:
    async with prober_rig(random.Random(15)) as rig:
        rig.runtime.answer("ready?", 0)
        for n in range(100):
            pod = probed_pod(
                uid=f"u{n}",
                name=f"web{n}",
                readinessProbe=exec_probe("ready?", periodSeconds=10, initialDelaySeconds=5),
            )
            await rig.run(pod)
        elapsed = 0.0
        while elapsed < 15:
            await rig.advance(0.5)
            elapsed += 0.5
        firsts = [t for t, _ in rig.runtime.execs]
        assert len(firsts) == 100  # one each: the second comes a period later
        assert all(5 <= t <= 15 for t in firsts)
        # Spread: no half-second slot of the period holds more than a fifth of the pods.
        slots = [int(t * 2) for t in firsts]
        assert max(slots.count(s) for s in set(slots)) <= 20
        assert len(set(slots)) >= 15


async def test_a_handler_that_raises_is_a_failed_probe_not_a_dead_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: object, **kwargs: object) -> HandlerResult:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(prober_module, "tcp_socket", broken)
    async with prober_rig() as rig:
        pod = probed_pod(livenessProbe={"tcpSocket": {"port": 1}, "failureThreshold": 1})
        record = (await rig.run(pod))["c"]
        await rig.advance(0)
        failure = rig.state(pod, record).failure
        assert failure is not None
        assert failure.message == "probe error: RuntimeError: parser bug"
