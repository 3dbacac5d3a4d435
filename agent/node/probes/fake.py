"""``FakeProber``: the :class:`~agent.node.probes.base.Prober` protocol with scripted verdicts,
for unit tests of the pod worker.

It keeps the prober manager's (:mod:`agent.node.probes.prober`) semantics — the same contract
suite (``tests/contracts/prober.py``) runs against both — but nothing is probed: what each
probe answers is set by the test (``answer``), and probes run on the timers a test's fake clock
fires, not in tasks:

* one probe schedule per running container and probe kind, keyed by container id; a startup
  probe holds readiness and liveness off (their schedules do not exist until it passed);
* the first run ``initialDelaySeconds`` after the container started plus ``rng.uniform(0,
  period)``, then once per period;
* readiness False until ``successThreshold`` passes in a row, back after ``failureThreshold``
  failures in a row; liveness and startup fail for good after ``failureThreshold`` failures in
  a row (their schedule ends); an answer of None (the runtime could not tell) counts neither
  way; ``on_change(pod uid)`` on every verdict change; ``Unhealthy`` events when a run of
  failures starts and when it reaches the threshold;
* a container missing from ``sync_pod``'s ``running``, or ``forget_pod``, ends its schedules.

What a test reads: ``synced`` (the containers the last ``sync_pod`` said run, by pod), ``runs``
(probes run, by container name and kind), ``probes_run`` and ``workers`` as on the real one.
A probe nobody scripted fails (as an unscripted exec fails in the FakeRuntime).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.aio.clock import Clock
from agent.events import EventRecorder
from agent.node.handlers import HandlerResult
from agent.node.probes.base import UNPROBED, ProbeFailure, ProbeState
from agent.node.probes.prober import has_probes
from agent.node.runtime.base import ContainerRecord
from agent.types import Container, Pod, Probe, ProbeKind

_KIND_WORD = {
    ProbeKind.STARTUP: "Startup",
    ProbeKind.READINESS: "Readiness",
    ProbeKind.LIVENESS: "Liveness",
}


class Timer(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """A test's fake clock (tests/unit/node/pods/fakeclock.py)."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer: ...


@dataclass(slots=True)
class _Schedule:
    probe: Probe
    due_s: float
    timer: Timer | None = None
    successes: int = 0
    failures: int = 0


@dataclass(slots=True)
class _Probed:
    pod: Pod
    container: Container
    record: ContainerRecord
    started: bool
    ready: bool
    failure: ProbeFailure | None = None
    schedules: dict[ProbeKind, _Schedule] = field(default_factory=dict)

    def state(self) -> ProbeState:
        return ProbeState(self.started, self.started and self.ready, self.failure)


class FakeProber:
    """See the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock,
        timers: Timers,
        on_change: Callable[[str], None],
        events: EventRecorder | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._timers = timers
        self._on_change = on_change
        self._events = events
        self._rng = rng or random.Random()
        self._pods: dict[str, dict[str, _Probed]] = {}
        self._answers: dict[tuple[str, ProbeKind], HandlerResult | None] = {}
        self.synced: dict[str, dict[str, str]] = {}  # pod uid -> container name -> id
        self.runs: Counter[tuple[str, ProbeKind]] = Counter()
        self.probes_run = 0

    # -- test controls -----------------------------------------------------------------------

    def answer(self, container: str, kind: ProbeKind, result: HandlerResult | None) -> None:
        """From now on the ``kind`` probe of every container named ``container`` answers
        ``result`` (None: the runtime could not tell)."""
        self._answers[(container, kind)] = result

    @property
    def workers(self) -> int:
        """Probe schedules running now (the real one's probe worker tasks)."""
        return sum(
            1
            for probed in self._pods.values()
            for entry in probed.values()
            for schedule in entry.schedules.values()
            if schedule.timer is not None
        )

    # -- Prober --------------------------------------------------------------------------------

    def sync_pod(self, pod: Pod, running: Mapping[str, ContainerRecord], pod_ip: str) -> None:
        self.synced[pod.uid] = {name: record.id for name, record in running.items()}
        probed = self._pods.get(pod.uid, {})
        alive = {record.id for record in running.values()}
        for container_id in [cid for cid in probed if cid not in alive]:
            self._cancel(probed.pop(container_id))
        for name, record in running.items():
            container = pod.container(name)
            if container is None or record.id in probed or not has_probes(container):
                continue
            started = container.startup_probe is None
            entry = _Probed(pod, container, record, started, container.readiness_probe is None)
            probed[record.id] = entry
            if started:
                self._schedule_after_startup(entry)
            else:
                self._schedule(entry, ProbeKind.STARTUP)
        if probed:
            self._pods[pod.uid] = probed
        else:
            self._pods.pop(pod.uid, None)

    def state(self, pod_uid: str, container_id: str) -> ProbeState:
        entry = self._pods.get(pod_uid, {}).get(container_id)
        return entry.state() if entry is not None else UNPROBED

    def forget_pod(self, pod_uid: str) -> None:
        self.synced.pop(pod_uid, None)
        for entry in self._pods.pop(pod_uid, {}).values():
            self._cancel(entry)

    # -- schedules -----------------------------------------------------------------------------

    @staticmethod
    def _cancel(entry: _Probed) -> None:
        for schedule in entry.schedules.values():
            if schedule.timer is not None:
                schedule.timer.cancel()
                schedule.timer = None

    def _schedule_after_startup(self, entry: _Probed) -> None:
        for kind in (ProbeKind.READINESS, ProbeKind.LIVENESS):
            if entry.container.probe(kind) is not None:
                self._schedule(entry, kind)

    def _schedule(self, entry: _Probed, kind: ProbeKind) -> None:
        probe = entry.container.probe(kind)
        assert probe is not None
        started_at = entry.record.started_at
        ran_s = max(0.0, self._clock.time() - started_at.timestamp()) if started_at else 0.0
        delay_s = max(0.0, probe.initial_delay_s - ran_s) + self._rng.uniform(0.0, probe.period_s)
        schedule = _Schedule(probe, self._clock.monotonic() + delay_s)
        entry.schedules[kind] = schedule
        self._arm(entry, kind, schedule)

    def _arm(self, entry: _Probed, kind: ProbeKind, schedule: _Schedule) -> None:
        delay_s = max(0.0, schedule.due_s - self._clock.monotonic())
        schedule.timer = self._timers.call_later(delay_s, lambda: self._due(entry, kind, schedule))

    def _due(self, entry: _Probed, kind: ProbeKind, schedule: _Schedule) -> None:
        if schedule.timer is None or entry.schedules.get(kind) is not schedule:
            return  # cancelled: a fake clock's timer may fire once more
        schedule.timer = None
        name = entry.container.name
        result = self._answers.get(
            (name, kind), HandlerResult.failed(f"no answer scripted for {name}'s {kind.value}")
        )
        self.runs[(name, kind)] += 1
        self.probes_run += 1
        probe = schedule.probe
        if result is not None:
            if result.ok:
                schedule.successes, schedule.failures = schedule.successes + 1, 0
            else:
                schedule.successes, schedule.failures = 0, schedule.failures + 1
                if schedule.failures in (1, probe.failure_threshold):
                    self._unhealthy(entry, kind, result)
            if self._judge(entry, kind, schedule, result):
                return
        schedule.due_s += probe.period_s
        self._arm(entry, kind, schedule)

    def _judge(
        self, entry: _Probed, kind: ProbeKind, schedule: _Schedule, result: HandlerResult
    ) -> bool:
        """Apply one result; True when this schedule is done (startup passed, or failed)."""
        probe = schedule.probe
        if kind is ProbeKind.READINESS:
            if schedule.successes >= probe.success_threshold and not entry.ready:
                entry.ready = True
                self._on_change(entry.pod.uid)
            elif schedule.failures >= probe.failure_threshold and entry.ready:
                entry.ready = False
                self._on_change(entry.pod.uid)
            return False
        if kind is ProbeKind.STARTUP and schedule.successes >= probe.success_threshold:
            entry.started = True
            self._on_change(entry.pod.uid)
            self._schedule_after_startup(entry)
            return True
        if schedule.failures >= probe.failure_threshold:
            entry.failure = ProbeFailure(kind, result.message, probe.termination_grace_period_s)
            self._on_change(entry.pod.uid)
            return True
        return False

    def _unhealthy(self, entry: _Probed, kind: ProbeKind, result: HandlerResult) -> None:
        if self._events is None:
            return
        self._events.record(
            kind="Pod",
            name=entry.pod.metadata.name,
            namespace=entry.pod.metadata.namespace,
            uid=entry.pod.uid,
            reason="Unhealthy",
            message=f"{_KIND_WORD[kind]} probe failed: {result.message}",
            warning=True,
        )
