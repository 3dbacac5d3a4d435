"""The Prober contract (agent/node/probes/base.py): what the pod worker relies on, the same tests
for every implementation.

A test module runs the suite by subclassing :class:`ProberContract` in a ``Test*`` class with a
``harness`` fixture yielding a :class:`ProberHarness` (tests/unit/node/probes/
test_prober_contract.py: ``FakeProber``, and ``ProberManager`` with exec probes on the
FakeRuntime and with httpGet/tcpSocket probes to real loopback servers).

Time is a fake clock in every harness; the harness's first probe of a schedule runs at the
start of its window (no jitter). Tests advance at most one period at a time. The contract:

* a container without probes, one the prober does not know, and one that stopped: UNPROBED;
* per running container (by id) one probe schedule per kind; ``sync_pod`` with the same
  containers again changes nothing; a container missing from ``running`` (or ``forget_pod``,
  idempotent) ends its schedules: no probe runs and no change is reported afterwards;
* the first probe ``initialDelaySeconds`` after the container started, then once per period;
* readiness: False (started True) until ``successThreshold`` passes in a row, False again after
  ``failureThreshold`` failures in a row, never a failure;
* a startup probe: started and ready False, and neither readiness nor liveness probed, until it
  passes; after it passed it is not run again; ``failureThreshold`` failures: a STARTUP failure;
* liveness: ``failureThreshold`` failures in a row: a LIVENESS failure with the probe's
  ``terminationGracePeriodSeconds``; the schedule ends;
* a probe that could not tell counts neither way;
* every verdict change (ready, started, failure) calls ``on_change(pod uid)``, and only those;
* ``Unhealthy`` warning events when a run of failures starts and when it reaches the threshold.
"""

from __future__ import annotations

from typing import Any, Protocol

import pytest

from agent.events import EventRecorder
from agent.manifest import parse_pod
from agent.node.probes.base import UNPROBED, Prober
from agent.node.runtime.base import ContainerRecord
from agent.types import Pod, ProbeKind

POD_IP = "127.0.0.1"


class ProberHarness(Protocol):
    """What differs between implementations, for one test. Probes are of container ``c``."""

    prober: Prober
    events: EventRecorder
    changes: list[str]
    """Pod uids, one per ``on_change`` call, in order."""

    def probe(self, kind: ProbeKind, **timing: int) -> dict[str, Any]:
        """The manifest of a ``kind`` probe whose answers the harness controls."""
        ...

    async def answer(self, kind: ProbeKind, ok: bool | None) -> None:
        """From now on the ``kind`` probe passes (True), fails (False) or cannot tell (None;
        liveness only: every harness answers it by exec)."""
        ...

    async def run(self, pod: Pod) -> dict[str, ContainerRecord]:
        """Start the pod's containers and tell the prober they run."""
        ...

    async def stopped(self, pod: Pod) -> None:
        """Tell the prober none of the pod's containers runs any more."""
        ...

    async def forget(self, pod_uid: str) -> None:
        """``forget_pod``, and let it take effect."""
        ...

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass; returns once the probes that fell due have run."""
        ...

    def runs(self, kind: ProbeKind) -> int:
        """Probes of ``kind`` run so far."""
        ...

    @property
    def workers(self) -> int:
        """Probe schedules running now."""
        ...


def probed_pod(uid: str = "u1", name: str = "web", **probes: Any) -> Pod:
    """A pod of one container ``c`` with ``probes`` (manifest fields)."""
    return parse_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "img:1", **probes}]},
        },
        source="api",
        node_name="n1",
    )


def unhealthy(harness: ProberHarness) -> list[str]:
    """Each Unhealthy event as many times as it happened (repeats aggregate into ``count``)."""
    return [
        e["message"]
        for e in harness.events.list()
        if e["reason"] == "Unhealthy"
        for _ in range(e["count"])
    ]


class ProberContract:
    """The tests; a subclass provides the ``harness`` fixture."""

    async def test_without_probes_or_unknown_a_container_is_unprobed(
        self, harness: ProberHarness
    ) -> None:
        pod = probed_pod()
        record = (await harness.run(pod))["c"]
        assert harness.prober.state(pod.uid, record.id) == UNPROBED
        assert harness.prober.state("no-such-pod", "no-such-id") == UNPROBED
        assert UNPROBED.started and UNPROBED.ready and UNPROBED.failure is None
        assert harness.workers == 0

    async def test_readiness_starts_false_and_follows_its_thresholds_both_ways(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.READINESS, False)
        probe = harness.probe(ProbeKind.READINESS, periodSeconds=5, failureThreshold=2)
        pod = probed_pod(readinessProbe=probe)
        record = (await harness.run(pod))["c"]
        state = harness.prober.state(pod.uid, record.id)
        assert (state.started, state.ready, state.failure) == (True, False, None)

        await harness.advance(0)
        assert harness.runs(ProbeKind.READINESS) == 1
        assert harness.prober.state(pod.uid, record.id).ready is False
        assert harness.changes == []  # no verdict changed
        await harness.answer(ProbeKind.READINESS, True)
        await harness.advance(5)
        assert harness.prober.state(pod.uid, record.id).ready is True
        assert harness.changes == [pod.uid]

        await harness.answer(ProbeKind.READINESS, False)
        await harness.advance(5)
        assert harness.prober.state(pod.uid, record.id).ready is True  # one failure of two
        await harness.advance(5)
        assert harness.prober.state(pod.uid, record.id).ready is False
        assert harness.changes == [pod.uid, pod.uid]
        for _ in range(3):
            await harness.advance(5)
        assert harness.prober.state(pod.uid, record.id).failure is None  # readiness never kills
        assert harness.changes == [pod.uid, pod.uid]  # still unready: nothing new to say
        assert harness.workers == 1

    async def test_readiness_needs_success_threshold_passes_in_a_row(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.READINESS, True)
        probe = harness.probe(ProbeKind.READINESS, periodSeconds=5, successThreshold=3)
        pod = probed_pod(readinessProbe=probe)
        record = (await harness.run(pod))["c"]
        await harness.advance(0)
        await harness.advance(5)
        await harness.answer(ProbeKind.READINESS, False)
        await harness.advance(5)  # the run of passes is broken
        await harness.answer(ProbeKind.READINESS, True)
        await harness.advance(5)
        await harness.advance(5)
        assert harness.prober.state(pod.uid, record.id).ready is False
        await harness.advance(5)
        assert harness.prober.state(pod.uid, record.id).ready is True
        assert harness.runs(ProbeKind.READINESS) == 6

    async def test_the_first_probe_waits_for_the_initial_delay_then_one_per_period(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.READINESS, True)
        probe = harness.probe(ProbeKind.READINESS, periodSeconds=4, initialDelaySeconds=7)
        await harness.run(probed_pod(readinessProbe=probe))
        for _ in range(6):
            await harness.advance(1)
        assert harness.runs(ProbeKind.READINESS) == 0
        await harness.advance(1)
        assert harness.runs(ProbeKind.READINESS) == 1
        await harness.advance(3)
        assert harness.runs(ProbeKind.READINESS) == 1
        await harness.advance(1)
        assert harness.runs(ProbeKind.READINESS) == 2

    async def test_liveness_failure_threshold_fails_the_container_and_ends_its_schedule(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.LIVENESS, True)
        probe = harness.probe(
            ProbeKind.LIVENESS, periodSeconds=3, failureThreshold=3, terminationGracePeriodSeconds=7
        )
        pod = probed_pod(livenessProbe=probe)
        record = (await harness.run(pod))["c"]
        assert harness.prober.state(pod.uid, record.id).ready is True  # no readiness probe
        await harness.advance(0)
        await harness.answer(ProbeKind.LIVENESS, False)
        await harness.advance(3)
        await harness.advance(3)
        assert harness.prober.state(pod.uid, record.id).failure is None
        assert len(unhealthy(harness)) == 1  # when the run of failures started
        assert harness.changes == []
        await harness.advance(3)
        failure = harness.prober.state(pod.uid, record.id).failure
        assert failure is not None and failure.kind is ProbeKind.LIVENESS
        assert failure.grace_s == 7 and failure.message
        assert harness.changes == [pod.uid]
        events = unhealthy(harness)
        assert len(events) == 2  # ... and when it reached the threshold, not each failure
        assert events[-1] == f"Liveness probe failed: {failure.message}"
        assert harness.workers == 0
        runs = harness.runs(ProbeKind.LIVENESS)
        await harness.advance(3)
        await harness.advance(3)
        assert harness.runs(ProbeKind.LIVENESS) == runs  # on hold until the container goes

    async def test_a_probe_that_cannot_tell_counts_neither_way(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.LIVENESS, None)
        probe = harness.probe(ProbeKind.LIVENESS, periodSeconds=2, failureThreshold=1)
        pod = probed_pod(livenessProbe=probe)
        record = (await harness.run(pod))["c"]
        await harness.advance(0)
        for _ in range(4):
            await harness.advance(2)
        assert harness.prober.state(pod.uid, record.id).failure is None
        assert unhealthy(harness) == [] and harness.changes == []
        await harness.answer(ProbeKind.LIVENESS, False)
        await harness.advance(2)
        assert harness.prober.state(pod.uid, record.id).failure is not None

    async def test_a_startup_probe_holds_readiness_and_liveness_off_until_it_passes(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.STARTUP, False)
        await harness.answer(ProbeKind.LIVENESS, False)
        await harness.answer(ProbeKind.READINESS, True)
        pod = probed_pod(
            startupProbe=harness.probe(ProbeKind.STARTUP, periodSeconds=2, failureThreshold=10),
            livenessProbe=harness.probe(ProbeKind.LIVENESS, periodSeconds=2, failureThreshold=1),
            readinessProbe=harness.probe(ProbeKind.READINESS, periodSeconds=2),
        )
        record = (await harness.run(pod))["c"]
        await harness.advance(0)
        for _ in range(4):
            await harness.advance(2)
        state = harness.prober.state(pod.uid, record.id)
        assert (state.started, state.ready, state.failure) == (False, False, None)
        assert harness.runs(ProbeKind.STARTUP) == 5
        assert harness.runs(ProbeKind.LIVENESS) == harness.runs(ProbeKind.READINESS) == 0
        assert harness.workers == 1

        await harness.answer(ProbeKind.STARTUP, True)
        await harness.advance(2)
        assert harness.prober.state(pod.uid, record.id).started is True
        assert harness.changes[0] == pod.uid
        await harness.advance(0)  # the first probes of readiness and liveness (at the latest)
        assert harness.runs(ProbeKind.LIVENESS) == harness.runs(ProbeKind.READINESS) == 1
        state = harness.prober.state(pod.uid, record.id)
        assert state.ready is True
        assert state.failure is not None and state.failure.kind is ProbeKind.LIVENESS
        assert harness.workers == 1  # readiness; startup and liveness ended
        await harness.advance(2)
        assert harness.runs(ProbeKind.STARTUP) == 6  # not run again once it passed

    async def test_a_startup_probe_that_never_passes_fails_the_container(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.STARTUP, False)
        probe = harness.probe(ProbeKind.STARTUP, periodSeconds=1, failureThreshold=2)
        pod = probed_pod(startupProbe=probe)
        record = (await harness.run(pod))["c"]
        await harness.advance(0)
        await harness.advance(1)
        failure = harness.prober.state(pod.uid, record.id).failure
        assert failure is not None and failure.kind is ProbeKind.STARTUP
        assert failure.grace_s is None  # the pod's grace period
        assert unhealthy(harness)[0].startswith("Startup probe failed: ")
        assert harness.changes == [pod.uid]

    async def test_a_stopped_container_is_unprobed_and_reported_on_no_more(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.READINESS, True)
        await harness.answer(ProbeKind.LIVENESS, True)
        pod = probed_pod(
            readinessProbe=harness.probe(ProbeKind.READINESS, periodSeconds=2),
            livenessProbe=harness.probe(ProbeKind.LIVENESS, periodSeconds=2),
        )
        record = (await harness.run(pod))["c"]
        assert harness.workers == 2
        await harness.stopped(pod)
        assert harness.workers == 0
        assert harness.prober.state(pod.uid, record.id) == UNPROBED
        await harness.answer(ProbeKind.LIVENESS, False)
        for _ in range(3):
            await harness.advance(2)
        assert harness.runs(ProbeKind.READINESS) == harness.runs(ProbeKind.LIVENESS) == 0
        assert harness.changes == [] and unhealthy(harness) == []

    async def test_a_restarted_container_starts_over_with_fresh_verdicts(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.READINESS, True)
        pod = probed_pod(readinessProbe=harness.probe(ProbeKind.READINESS, periodSeconds=2))
        first = (await harness.run(pod))["c"]
        await harness.advance(0)
        assert harness.prober.state(pod.uid, first.id).ready is True
        await harness.stopped(pod)
        second = (await harness.run(pod))["c"]  # a new container of the pod: a new id
        assert second.id != first.id
        assert harness.prober.state(pod.uid, second.id).ready is False
        assert harness.prober.state(pod.uid, first.id) == UNPROBED
        await harness.advance(0)
        assert harness.prober.state(pod.uid, second.id).ready is True

    async def test_syncing_the_same_containers_again_changes_nothing(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.READINESS, True)
        pod = probed_pod(readinessProbe=harness.probe(ProbeKind.READINESS, periodSeconds=2))
        running = await harness.run(pod)
        await harness.advance(0)
        for _ in range(3):
            harness.prober.sync_pod(pod, running, POD_IP)
        assert harness.workers == 1
        assert harness.prober.state(pod.uid, running["c"].id).ready is True
        await harness.advance(2)
        assert harness.runs(ProbeKind.READINESS) == 2  # one schedule, not four
        assert harness.changes == [pod.uid]

    async def test_forget_pod_ends_its_probes_only_and_is_idempotent(
        self, harness: ProberHarness
    ) -> None:
        await harness.answer(ProbeKind.READINESS, True)
        probe = harness.probe(ProbeKind.READINESS, periodSeconds=2)
        gone = probed_pod(uid="u1", name="gone", readinessProbe=probe)
        kept = probed_pod(uid="u2", name="kept", readinessProbe=probe)
        gone_record = (await harness.run(gone))["c"]
        kept_record = (await harness.run(kept))["c"]
        assert harness.workers == 2
        await harness.forget(gone.uid)
        await harness.forget(gone.uid)
        await harness.forget("no-such-pod")
        assert harness.workers == 1
        await harness.advance(0)
        assert harness.prober.state(gone.uid, gone_record.id) == UNPROBED
        assert harness.prober.state(kept.uid, kept_record.id).ready is True
        assert harness.changes == [kept.uid]
        assert harness.runs(ProbeKind.READINESS) == 1

    @pytest.mark.parametrize("kind", [ProbeKind.READINESS, ProbeKind.LIVENESS])
    async def test_probes_run_on_a_fixed_schedule(
        self, harness: ProberHarness, kind: ProbeKind
    ) -> None:
        await harness.answer(kind, True)
        await harness.run(
            probed_pod(**{f"{kind.value}Probe": harness.probe(kind, periodSeconds=3)})
        )
        await harness.advance(0)
        for expected in range(2, 6):
            await harness.advance(3)
            assert harness.runs(kind) == expected
